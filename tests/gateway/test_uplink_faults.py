"""Dead cloud links, end to end: the gateway as a real subprocess, a fault proxy between it and
the cloud broker, the real cloud worker on SQLite behind the broker.

For a blackholed link (TCP up, every byte dropped both ways), a half-open one (the existing
connection goes silent, new ones are refused) and a cut one (connections reset): the gateway
notices within about twice its keepalive (its status on the edge broker says uplink down),
hands the batches it had in flight back to pending, keeps buffering, and once the proxy passes
again every batch is in the cloud ledger exactly once.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from edgetally.brokers import BrokerProcess
from protocol import Election, gateway_status_topic
from tests.gateway.support import Collector, envelopes, publish_all, start_gateway
from tests.helpers import wait_until
from tests.support.cloud import CloudProcess
from tests.support.proxy import FaultProxy, Mode

pytestmark = pytest.mark.integration

KEEPALIVE_S = 1
# paho pings after one keepalive of silence and gives up one keepalive later; it looks once a
# second; the status goes out at once when the link drops.
NOTICE_WITHIN_S = 2 * KEEPALIVE_S + 2.5


@pytest.fixture
def proxy(cloud: BrokerProcess) -> Iterator[FaultProxy]:
    running = FaultProxy("127.0.0.1", cloud.port, tls=cloud.tls is not None).start()
    yield running
    running.stop()


def latest_status(collector: Collector) -> dict[str, Any] | None:
    messages = collector.messages()
    return orjson.loads(messages[-1].payload) if messages else None


def status_is(collector: Collector, **expected: Any) -> bool:
    status = latest_status(collector)
    if status is None:
        return False
    flat = {**status, **{f"buffer_{k}": v for k, v in (status["buffer"] or {}).items()}}
    return all(flat.get(key) == value for key, value in expected.items())


@pytest.mark.parametrize("mode", [Mode.BLACKHOLE, Mode.HALFOPEN, Mode.CUT])
def test_a_dead_cloud_link_is_noticed_and_nothing_is_lost_or_counted_twice(
    mode: Mode,
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    proxy: FaultProxy,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:4], 20)
    before, during = sent[:40], sent[40:]  # seqs 1-10 of each device, then 11-20
    ledger = CloudProcess(tmp_path, cloud.url, keys_dir, processes).start()
    gateway_id = "gw2"  # one the wire has a certificate for (tests/support/wire.py)
    status = Collector(edge.url, gateway_status_topic(gateway_id)).start()
    run = start_gateway(
        processes, tmp_path, edge=edge.url, cloud=proxy.url, buffer=tmp_path / "b.db",
        keys=keys_dir,
        extra=("--id", gateway_id, "--keepalive", str(KEEPALIVE_S), "--status-interval", "0.5"),
    )  # fmt: skip
    publish_all(edge.url, [(s.topic, s.payload) for s in before])
    wait_until(lambda: ledger.ledger_count() == 40, 30, "the first 40 batches in the ledger")
    wait_until(  # and their PUBACKs reached the gateway: nothing of them is in flight any more
        lambda: status_is(status, uplink="up", edge="up", buffer_delivered=40),
        10,
        "status: both links up, the 40 delivered",
    )

    proxy.set_mode(mode)
    faulted = time.monotonic()
    publish_all(edge.url, [(s.topic, s.payload) for s in during])  # some go into the dead link
    wait_until(lambda: status_is(status, uplink="down"), 3 * NOTICE_WITHIN_S, "status: uplink down")
    noticed = time.monotonic() - faulted
    assert noticed <= NOTICE_WITHIN_S, f"the dead link took {noticed:.1f}s to notice"
    try:
        wait_until(
            lambda: status_is(
                status, uplink="down", edge="up", buffer_pending=40, buffer_inflight=0
            ),
            15,
            "status: the 40 new batches buffered and pending, none in flight",
        )
    except AssertionError as exc:
        detail = f"{exc}\nlast status: {latest_status(status)}\n{run.log_text()}"
        raise AssertionError(detail) from None
    assert ledger.ledger_count() == 40
    assert run.proc.poll() is None

    proxy.set_mode(Mode.PASS)
    wait_until(lambda: ledger.ledger_count() == 80, 30, "all 80 batches in the ledger")
    assert sorted(ledger.ledger_keys()) == sorted((s.device, s.seq) for s in sent)
    assert ledger.rejections() == []
    wait_until(lambda: status_is(status, uplink="up", buffer_pending=0), 10, "status: drained")
    log = run.log_text()
    lost = [line for line in log.splitlines() if "cloud link lost" in line]
    assert lost, log
    if mode is not Mode.CUT:  # silence is only noticed by the keepalive
        assert "Keep alive timeout" in lost[0], lost
    status.stop()
