"""Gateway health status: what the reporter builds from a real buffer file, the options that
set it up, and end to end: the gateway as a real subprocess publishes a retained status on both
brokers every interval and leaves "offline" as its last will; the real cloud worker stores the
latest per gateway and `edgetally cloud gateways` shows it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from edgetally.brokers import BrokerProcess
from gateway._exceptions import ConfigError
from gateway.buffer.rows import NewMessage
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.links import OFFLINE, ONLINE, status_payload
from gateway.status import StatusReporter
from protocol import Election, gateway_status_topic
from protocol.gateway_status import GatewayStatus
from tests.cloud.support import retained
from tests.gateway.support import Collector, envelopes, publish_all, start_gateway
from tests.helpers import run_cli, wait_until
from tests.support.cloud import CloudProcess

INTERVAL_S = 0.3


def statuses(collector: Collector) -> list[GatewayStatus]:
    return [GatewayStatus.parse(g.payload) for g in collector.messages()]


def full(collector: Collector) -> list[GatewayStatus]:
    """The periodic statuses (a link's own hello or goodbye carries no buffer figures)."""
    return [s for s in statuses(collector) if s.buffer is not None]


@pytest.mark.integration
def test_status_on_both_brokers_every_interval_stored_by_the_cloud_and_offline_when_killed(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    gateway_id = "gw2"  # one the wire has a certificate for (tests/support/wire.py)
    topic = gateway_status_topic(gateway_id)
    store = CloudProcess(tmp_path, cloud.url, keys_dir, processes).start()
    on_edge = Collector(edge.url, topic).start()
    on_cloud = Collector(cloud.url, topic).start()
    run = start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=tmp_path / "b.db",
        keys=keys_dir, extra=("--id", gateway_id, "--status-interval", str(INTERVAL_S)),
    )  # fmt: skip
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:5], 6)
    publish_all(edge.url, [(s.topic, s.payload) for s in sent])

    def settled(collector: Collector) -> GatewayStatus | None:
        got = full(collector)
        last = got[-1] if got else None
        if last and last.buffer and last.buffer["delivered"] == len(sent) and last.rates:
            return last
        return None

    last = wait_until(lambda: settled(on_cloud), 20, "a status counting every batch delivered")
    wait_until(lambda: settled(on_edge), 10, "the same on the edge broker")
    assert (last.gateway, last.state, last.uplink, last.edge) == (gateway_id, "online", "up", "up")
    assert last.pid == run.proc.pid and last.version and last.started_at and last.at
    assert last.buffer == {"pending": 0, "inflight": 0, "delivered": 30, "quarantined": 0}
    assert last.oldest_pending_age_s is None
    ingress = [s.rates.ingress for s in full(on_cloud) if s.rates is not None]
    assert max(ingress) > 0, "the ingress rate saw the batches arrive"
    count = len(full(on_edge))
    wait_until(lambda: len(full(on_edge)) >= count + 3, 10 * INTERVAL_S, "three more statuses")
    for port in (edge.port, cloud.port):  # retained: what a newcomer gets at once
        assert GatewayStatus.parse(retained(port, topic, 1)[topic]).state == "online"

    def stored() -> dict[str, Any] | None:
        rows = {row["gateway"]: row for row in store.gateways()}
        return rows.get(gateway_id)

    row = wait_until(
        lambda: (r := stored()) and r["buffer"]["delivered"] == len(sent) and r, 20, "cloud row"
    )
    assert (row["state"], row["uplink"], row["edge"], row["pid"]) == (
        "online",
        "up",
        "up",
        run.proc.pid,
    )

    os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait(10)
    for port in (edge.port, cloud.port):  # the brokers publish the last wills
        wait_until(
            lambda port=port: (
                GatewayStatus.parse(retained(port, topic, 1)[topic]).state == "offline"
            ),
            10,
            f"the retained offline will on port {port}",
        )
    will = GatewayStatus.parse(retained(cloud.port, topic, 1)[topic])
    assert (will.pid, will.uplink, will.at, will.buffer) == (run.proc.pid, "down", None, None)
    row = wait_until(
        lambda: (r := stored()) and r["state"] == "offline" and r, 20, "the cloud row offline"
    )
    assert row["uplink"] == "down"
    assert row["buffer"]["delivered"] == len(sent), "the last known figures are kept"
    on_edge.stop()
    on_cloud.stop()


def test_the_reporter_reads_depth_age_and_rates_from_the_buffer(tmp_path: Path) -> None:
    counters = {"in": 0, "out": 0}
    sent: list[tuple[str, bytes]] = []
    with Buffer(tmp_path / "b.db") as buffer:
        reporter = StatusReporter(
            "gw-unit",
            buffer,
            interval_s=5,
            uplink_up=lambda: False,
            edge_up=lambda: True,
            ingress_count=lambda: counters["in"],
            egress_count=lambda: counters["out"],
            publish_edge=lambda payload: sent.append(("edge", payload)),
            publish_cloud=lambda payload: sent.append(("cloud", payload)),
        )
        first = reporter.publish_once()
        assert first.rates is None and first.oldest_pending_age_s is None
        assert first.buffer == {"pending": 0, "inflight": 0, "delivered": 0, "quarantined": 0}
        old = time.time() - 30
        buffer.put_many(
            [
                NewMessage(
                    "edgetally/v1/el/d/batch", b"x", State.PENDING, old, "el", "d", n, f"{n:064x}"
                )
                for n in (1, 2)
            ]
        )
        counters["in"] = 2
        second = reporter.publish_once()
    assert second.buffer is not None and second.buffer["pending"] == 2
    assert second.oldest_pending_age_s is not None and 29 < second.oldest_pending_age_s < 60
    assert second.rates is not None and second.rates.ingress > 0 and second.rates.egress == 0
    assert (second.uplink, second.edge, second.state) == ("down", "up", "online")
    assert second.pid == os.getpid() and second.started_at == first.started_at
    # the uplink is down: nothing is handed to it; the edge gets both, as parseable statuses
    assert [where for where, _ in sent] == ["edge", "edge"]
    assert GatewayStatus.parse(sent[-1][1]) == second


def test_a_link_will_says_offline_for_that_link_only() -> None:
    will = GatewayStatus.parse(status_payload("gw-unit", OFFLINE, "cloud"))
    assert (will.state, will.uplink, will.edge, will.at, will.buffer) == (
        "offline",
        "down",
        None,
        None,
        None,
    )
    hello = GatewayStatus.parse(status_payload("gw-unit", ONLINE, "edge"))
    assert (hello.state, hello.edge, hello.uplink) == ("online", "up", None) and hello.at


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("bundle_max", 0, "--bundle-max"),
        ("bundle_max", 5000, "--bundle-max"),
        ("status_interval_s", 0.01, "--status-interval"),
        ("keepalive_s", 0, "keepalive"),
    ],
)
def test_bad_uplink_and_status_options_are_refused(option: str, value: float, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        GatewayConfig.from_options(
            edge="mqtt://e", cloud="mqtt://c", buffer=Path("b"), keys=Path("k"), **{option: value}
        )


def test_run_refuses_a_bundle_size_out_of_range() -> None:
    proc = run_cli(
        "gateway", "run", "--edge", "e", "--cloud", "c", "--buffer", "b", "--keys", "k",
        "--bundle-max", "0", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--bundle-max" in proc.stderr
