"""Uplink in this process against a real cloud broker: rows leave the buffer only on PUBACK,
the window bounds what is in flight, a lost link hands everything back, receipts are relayed.

A SIGSTOPped Mosquitto keeps its TCP connections but answers nothing: publishes stay
unacknowledged until SIGCONT, which is what these tests need to look inside the window.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devices.election_file import load_election
from edgetally.brokers import BrokerProcess
from gateway.buffer.rows import NewMessage
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.uplink import Uplink
from protocol import BATCH_FILTER, batch_topic, parse_broker_url, receipt_topic
from protocol.tls import Role
from tests.gateway.support import Collector, publish_all
from tests.helpers import SAMPLE_ELECTION, wait_until
from tests.support.wire import component_tls

pytestmark = pytest.mark.integration

# The election of the locked brokers' ACL (the session registry's): a gateway forwards only its batches.
ELECTION = load_election(SAMPLE_ELECTION).id
WINDOW = 8


def rows(start: int, count: int) -> list[NewMessage]:
    return [
        NewMessage(
            topic=batch_topic(ELECTION, f"dev-{n % 3}"),
            payload=f"envelope {n}".encode(),
            state=State.PENDING,
            received_at=time.time(),
            election=ELECTION,
            device=f"dev-{n % 3}",
            seq=n,
            body_hash=f"{n:064x}",
        )
        for n in range(start, start + count)
    ]


@dataclass
class Running:
    uplink: Uplink
    buffer: Buffer
    relayed: list[tuple[str, bytes]]

    def put(self, batch: list[NewMessage]) -> None:
        self.buffer.put_many(batch)
        self.uplink.notify()

    def count(self, state: State) -> int:
        return self.buffer.counts()[state]



@pytest.fixture
def running(tmp_path: Path, cloud: BrokerProcess, keys_dir: Path) -> Iterator[Running]:
    address = parse_broker_url(cloud.url)
    config = GatewayConfig(
        gateway_id="gw1",
        edge=address,  # unused here
        cloud=address,
        buffer_path=tmp_path / "b.db",
        keys_dir=keys_dir,
        tls=component_tls(Role.GATEWAY, "gw1", address.url),
        window=WINDOW,
        bundle_max=1,  # one envelope per message: these tests count messages (bundles: test_uplink_bundle.py)
        backoff_max_s=0.5,
        drain_grace_s=0.5,
    )
    relayed: list[tuple[str, bytes]] = []
    with Buffer(config.buffer_path) as buffer:
        uplink = Uplink(
            config, buffer, relay=lambda topic, payload: relayed.append((topic, payload))
        )
        stop = threading.Event()
        thread = threading.Thread(target=uplink.run, args=(stop,))
        thread.start()
        try:
            yield Running(uplink, buffer, relayed)
        finally:
            if cloud.pid is not None:
                os.kill(cloud.pid, signal.SIGCONT)
            stop.set()
            uplink.interrupt()
            thread.join(15)
            assert not thread.is_alive()


def test_rows_leave_the_buffer_only_when_the_cloud_acknowledges_them(
    running: Running, cloud: BrokerProcess
) -> None:
    collector = Collector(cloud.url, BATCH_FILTER).start()
    running.put(rows(0, 1))
    wait_until(
        lambda: running.count(State.PENDING) + running.count(State.INFLIGHT) == 0,
        10,
        "the link to deliver",
    )
    assert cloud.pid is not None
    os.kill(cloud.pid, signal.SIGSTOP)
    running.put(rows(1, 5))
    wait_until(lambda: running.count(State.INFLIGHT) == 5, 10, "five publishes in flight")
    assert running.uplink.published == 6 and running.uplink.delivered == 1
    os.kill(cloud.pid, signal.SIGCONT)
    wait_until(lambda: running.count(State.INFLIGHT) == 0, 10, "the PUBACKs")
    assert running.uplink.delivered == 6
    wait_until(lambda: len(collector.messages()) == 6, 10, "all six on the cloud")
    collector.stop()


def test_no_more_than_the_window_is_in_flight_and_the_rest_follows_in_order(
    running: Running, cloud: BrokerProcess
) -> None:
    collector = Collector(cloud.url, BATCH_FILTER).start()
    running.put(rows(0, 1))
    wait_until(lambda: running.uplink.delivered == 1, 10, "the link to deliver")
    assert cloud.pid is not None
    os.kill(cloud.pid, signal.SIGSTOP)
    running.put(rows(1, 3 * WINDOW))
    wait_until(lambda: running.count(State.INFLIGHT) == WINDOW, 10, "a full window")
    assert running.count(State.PENDING) == 2 * WINDOW
    os.kill(cloud.pid, signal.SIGCONT)
    wait_until(lambda: len(collector.messages()) == 1 + 3 * WINDOW, 10, "everything on the cloud")
    assert [g.payload for g in collector.messages()] == [
        f"envelope {n}".encode() for n in range(1 + 3 * WINDOW)
    ]
    collector.stop()


def test_a_lost_link_hands_everything_in_flight_back_and_it_is_sent_again(
    running: Running, cloud: BrokerProcess
) -> None:
    running.put(rows(0, 1))
    wait_until(lambda: running.uplink.delivered == 1, 10, "the link to deliver")
    assert cloud.pid is not None
    os.kill(cloud.pid, signal.SIGSTOP)
    running.put(rows(1, 5))
    wait_until(lambda: running.count(State.INFLIGHT) == 5, 10, "five publishes in flight")
    cloud.kill()  # SIGKILL works on a stopped process; the connection drops
    wait_until(lambda: running.count(State.PENDING) == 5, 10, "the in-flight rows back to pending")
    assert running.count(State.INFLIGHT) == 0
    assert running.uplink.released == 5
    cloud.start()
    running.put(rows(6, 1))
    wait_until(lambda: running.uplink.delivered == 7, 15, "the five again, and the new one")
    assert running.uplink.published == 1 + 5 + 5 + 1
    assert running.count(State.PENDING) + running.count(State.INFLIGHT) == 0


def test_receipts_on_the_cloud_are_handed_to_the_relay_unchanged(
    running: Running, cloud: BrokerProcess
) -> None:
    running.put(rows(0, 1))
    wait_until(lambda: running.uplink.delivered == 1, 10, "the link to be up")
    receipt = (receipt_topic(ELECTION, "dev-1"), b'{"any":"bytes at all"}')
    publish_all(cloud.url, [receipt], retain=True)
    wait_until(lambda: receipt in running.relayed, 10, "the relayed receipt")
    running.uplink.request_receipts()  # the edge came back: retained receipts are fetched again
    wait_until(lambda: running.relayed.count(receipt) == 2, 10, "the retained receipt once more")
