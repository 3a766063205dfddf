"""Uplink bundling in this process against a real cloud broker: rows leave in bundles in id
order, the window counts messages, one PUBACK confirms a whole bundle, a lone row goes out
unbundled, compression is the cloud's to undo; plus the purge of delivered rows.

As in test_uplink.py, a SIGSTOPped Mosquitto keeps its connections but answers nothing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devices.election_file import load_election
from edgetally.brokers import BrokerProcess
from gateway.buffer.rows import NewMessage, OutboundMessage
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.uplink import Uplink, pack
from protocol import (
    BATCH_FILTER,
    batch_topic,
    gateway_bundle_topic,
    parse_broker_url,
)
from protocol import bundle as bundles
from protocol.tls import Role
from tests.gateway.support import Collector, Got
from tests.helpers import SAMPLE_ELECTION, wait_until
from tests.support.wire import component_tls

pytestmark = pytest.mark.integration

# The election of the locked brokers' ACL (the session registry's): a gateway forwards only its batches.
ELECTION = load_election(SAMPLE_ELECTION).id
WINDOW = 3
BUNDLE = 4


def rows(start: int, count: int, size: int = 0) -> list[NewMessage]:
    return [
        NewMessage(
            topic=batch_topic(ELECTION, f"dev-{n % 3}"),
            payload=f"envelope {n} ".encode() + b"x" * size,
            state=State.PENDING,
            received_at=time.time(),
            election=ELECTION,
            device=f"dev-{n % 3}",
            seq=n,
            body_hash=f"{n:064x}",
        )
        for n in range(start, start + count)
    ]


def entries(got: list[Got]) -> list[tuple[str, bytes]]:
    """What the messages carried, in order: a bundle's entries, or the message itself."""
    out: list[tuple[str, bytes]] = []
    for message in got:
        if bundles.is_bundle(message.payload):
            out += [(e.topic, e.payload) for e in bundles.decode(message.payload)]
        else:
            out.append((message.topic, message.payload))
    return out


@dataclass
class Running:
    uplink: Uplink
    buffer: Buffer
    config: GatewayConfig

    def put(self, batch: list[NewMessage]) -> None:
        self.buffer.put_many(batch)
        self.uplink.notify()

    def count(self, state: State) -> int:
        return self.buffer.counts()[state]



@pytest.fixture
def start_uplink(
    tmp_path: Path, cloud: BrokerProcess, keys_dir: Path
) -> Iterator[Callable[..., Running]]:
    stops: list[tuple[threading.Event, Uplink, threading.Thread, Buffer]] = []

    def start(*, compress: bool = False, retention_s: float = 3600.0) -> Running:
        address = parse_broker_url(cloud.url)
        config = GatewayConfig(
            gateway_id="gw1",
            edge=address,  # unused here
            cloud=address,
            buffer_path=tmp_path / "b.db",
            keys_dir=keys_dir,
            tls=component_tls(Role.GATEWAY, "gw1", address.url),
            window=WINDOW,
            bundle_max=BUNDLE,
            compress=compress,
            backoff_max_s=0.5,
            drain_grace_s=0.5,
        )
        buffer = Buffer(config.buffer_path, delivered_retention_s=retention_s)
        buffer.open()
        uplink = Uplink(config, buffer, relay=lambda _topic, _payload: None)
        stop = threading.Event()
        thread = threading.Thread(target=uplink.run, args=(stop,))
        thread.start()
        stops.append((stop, uplink, thread, buffer))
        return Running(uplink, buffer, config)

    yield start
    if cloud.pid is not None:
        os.kill(cloud.pid, signal.SIGCONT)
    for stop, uplink, thread, buffer in stops:
        stop.set()
        uplink.interrupt()
        thread.join(15)
        assert not thread.is_alive()
        buffer.close()


def test_a_backlog_leaves_in_bundles_in_order_and_the_window_counts_messages(
    start_uplink: Callable[..., Running], cloud: BrokerProcess
) -> None:
    running = start_uplink()
    topic = gateway_bundle_topic(running.config.gateway_id)
    on_cloud = Collector(cloud.url, "edgetally/#", unwrap=False).start()
    running.put(rows(0, 1))
    wait_until(lambda: running.uplink.delivered == 1, 10, "the link to deliver")
    assert [g.topic for g in on_cloud.messages() if "/status" not in g.topic] == [
        batch_topic(ELECTION, "dev-0")
    ]  # a lone row goes out as itself
    assert cloud.pid is not None
    os.kill(cloud.pid, signal.SIGSTOP)
    backlog = rows(1, 4 * WINDOW * BUNDLE)
    running.put(backlog)
    wait_until(
        lambda: running.count(State.INFLIGHT) == WINDOW * BUNDLE, 10, "a full window of bundles"
    )
    assert running.uplink.messages == 1 + WINDOW  # the window counts messages, not rows
    assert running.count(State.PENDING) == 3 * WINDOW * BUNDLE
    os.kill(cloud.pid, signal.SIGCONT)
    wait_until(lambda: running.uplink.delivered == 1 + len(backlog), 15, "every row confirmed")
    assert running.count(State.DELIVERED) == 1 + len(backlog)
    got = [g for g in on_cloud.messages() if "/status" not in g.topic]
    assert all(g.topic == topic for g in got[1:]), "the backlog went out bundled"
    assert len(got) == 1 + 4 * WINDOW
    assert entries(got) == [(r.topic, r.payload) for r in rows(0, 1 + len(backlog))]
    on_cloud.stop()


def test_one_puback_confirms_every_row_of_its_bundle_and_a_lost_link_releases_them_all(
    start_uplink: Callable[..., Running], cloud: BrokerProcess
) -> None:
    running = start_uplink()
    running.put(rows(0, 1))
    wait_until(lambda: running.uplink.delivered == 1, 10, "the link to deliver")
    assert cloud.pid is not None
    os.kill(cloud.pid, signal.SIGSTOP)
    running.put(rows(1, BUNDLE))
    wait_until(lambda: running.count(State.INFLIGHT) == BUNDLE, 10, "one bundle in flight")
    assert running.uplink.bundles == 1
    cloud.kill()  # the connection drops with the bundle unacknowledged
    wait_until(lambda: running.count(State.PENDING) == BUNDLE, 10, "its rows back to pending")
    assert running.uplink.released == BUNDLE and running.uplink.delivered == 1
    cloud.start()
    on_cloud = Collector(cloud.url, "edgetally/#", unwrap=False).start()
    wait_until(lambda: running.uplink.delivered == 1 + BUNDLE, 15, "the bundle sent again")
    assert running.count(State.DELIVERED) == 1 + BUNDLE
    wait_until(lambda: entries([g for g in on_cloud.messages() if "/status" not in g.topic]) == [
        (r.topic, r.payload) for r in rows(1, BUNDLE)
    ], 10, "the resent bundle on the cloud")  # fmt: skip
    on_cloud.stop()


def test_compressed_bundles_carry_the_envelope_bytes_unchanged(
    start_uplink: Callable[..., Running], cloud: BrokerProcess
) -> None:
    running = start_uplink(compress=True)
    on_cloud = Collector(cloud.url, "edgetally/v1/_gateway/+/bundle", unwrap=False).start()
    batch = rows(0, 2 * BUNDLE, size=300)
    assert cloud.pid is not None
    os.kill(cloud.pid, signal.SIGSTOP)  # so that the rows are all pending when the pump looks
    running.put(batch)
    os.kill(cloud.pid, signal.SIGCONT)
    wait_until(lambda: running.uplink.delivered == len(batch), 15, "every row confirmed")
    wait_until(lambda: len(entries(on_cloud.messages())) == len(batch), 10, "the bundles")
    got = on_cloud.messages()
    assert all(g.payload[5] & bundles.FLAG_ZLIB for g in got)
    assert sum(len(g.payload) for g in got) < sum(len(r.payload) for r in batch) / 4
    assert entries(got) == [(r.topic, r.payload) for r in batch]
    on_cloud.stop()


def test_delivered_rows_are_purged_by_the_uplink_once_their_retention_is_over(
    start_uplink: Callable[..., Running], cloud: BrokerProcess
) -> None:
    running = start_uplink(retention_s=0.0)
    collector = Collector(cloud.url, BATCH_FILTER).start()
    running.put(rows(0, 1))
    wait_until(lambda: running.uplink.delivered == 1, 10, "the row delivered")
    wait_until(lambda: sum(running.buffer.counts().values()) == 0, 10, "the delivered row purged")
    assert running.uplink.purged == 1
    collector.stop()


def _out(n: int, size: int) -> OutboundMessage:
    return OutboundMessage(n, "edgetally/v1/el/d/batch", b"x" * size, "d", n)


def test_pack_keeps_order_and_respects_the_count_and_the_size_limit() -> None:
    small = [_out(n, 10) for n in range(10)]
    assert [[r.id for r in g] for g in pack(small, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(g) for g in pack(small, 1)] == [1] * 10
    one = bundles.entry_bytes(small[0].topic, small[0].payload)
    limit = bundles.HEADER_BYTES + 3 * one
    assert [len(g) for g in pack(small, 100, limit)] == [3, 3, 3, 1]
    huge = [_out(0, 10), _out(1, 5000), _out(2, 10)]
    assert [[r.id for r in g] for g in pack(huge, 100, 1000)] == [[0], [1], [2]]
