"""The pipeline on a 3-node NATS JetStream cloud cluster, real processes: a node SIGKILLed with
batches queued in it, and two of three nodes SIGKILLed (no quorum).

Devices run with receipts on and resend only after 60 s, so any resend means something the
cluster had acknowledged was lost; these tests assert there is none (Mosquitto loses its queue
on SIGKILL: tests/integration/test_kills.py and the cloud-broker-sigkill scenario).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.worker.jetstream import MSGS_STREAM
from edgetally.nats import NatsCluster
from edgetally.stack import Stack, StackConfig
from edgetally.verdict import compare
from tests.helpers import SAMPLE_ELECTION, wait_until
from tests.support.nats import require_nats

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _nats_server() -> None:
    require_nats()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    made = Stack(
        StackConfig(
            workdir=tmp_path / "stack", election_file=SAMPLE_ELECTION, seed=21, batches_per_device=4, devices=30,
            rate=40.0, resend_after=60.0, fleet_timeout=150.0, embedded_brokers=False, cloud_broker="nats", nodes=3,
        )
    )  # fmt: skip
    yield made
    made.stop()
    made.edge.kill()
    made.cloud_broker.kill()


def _cluster(stack: Stack) -> NatsCluster:
    assert stack.cluster is not None
    return stack.cluster


def _queued(cluster: NatsCluster) -> int:
    """Batches stored in the cluster for the workers and not yet acknowledged."""
    stream = cluster.streams().get(MSGS_STREAM, {})
    return sum(int(c["num_pending"]) + int(c["num_ack_pending"]) for c in stream.get("consumer_detail", []) or [])


def _delivered(stack: Stack) -> int:
    return int(stack.buffer_stats()["states"]["delivered"])


def _finish_exact(stack: Stack) -> None:
    code = stack.fleet.wait(timeout=120)
    assert code == 0, f"fleet exited {code}:\n{stack.fleet.tail()}\n--- gateway:\n{stack.gateway.tail()}\n--- cloud:\n{stack.cloud.tail()}"
    expected = stack.expected()
    wait_until(lambda: int(stack.results().get("batches", 0)) >= expected.batches, 30, "every batch in the ledger")
    verdict = compare(stack.registry.election, expected, stack.results(), stack.fleet_summary(), stack.buffer_stats())
    assert verdict.ok, verdict
    summary = stack.fleet_summary()
    assert summary is not None
    assert summary["resends"] == 0, "a device had to resend: the cluster lost something it acknowledged"


def test_a_sigkilled_stream_leader_loses_nothing_queued_and_no_device_resends(stack: Stack) -> None:
    stack.start()
    cluster = _cluster(stack)
    stack.cloud.stop()  # batches queue in the cluster's replicated stream
    stack.start_fleet()
    wait_until(lambda: _queued(cluster) >= 60, 60, "batches queued in the cluster")
    leader = cluster.stream_leader()  # from the nodes' monitoring endpoints
    assert leader is not None
    queued = _queued(cluster)
    delivered = _delivered(stack)  # the gateway holds these no more: the cluster PUBACKed them
    assert delivered >= queued > 0

    cluster.kill_node(leader)
    wait_until(lambda: cluster.stream_leader() not in (None, leader), 30, "a new leader of the stream")
    assert _queued(cluster) >= queued, "the survivors hold everything the leader had acknowledged"
    stack.cloud.start()
    _finish_exact(stack)
    cluster.start_node(leader)  # it rejoins and catches up


def test_without_a_quorum_the_gateway_keeps_the_batches_and_drains_when_it_returns(stack: Stack) -> None:
    stack.start()
    cluster = _cluster(stack)
    stack.start_fleet()
    wait_until(lambda: _delivered(stack) >= 20, 60, "the first batches through")
    leader = cluster.stream_leader()
    assert leader is not None
    follower = next(n.name for n in cluster.nodes if n.name != leader)
    cluster.kill_node(leader)
    cluster.kill_node(follower)
    before = _delivered(stack)
    # One node of three: no store succeeds, so no PUBACK, and the gateway holds what arrives.
    wait_until(
        lambda: (s := stack.buffer_stats()["states"])["pending"] + s["inflight"] >= 30, 60, "the gateway buffering"
    )
    assert _delivered(stack) - before <= 1, "the cluster acknowledged batches without a quorum"
    cluster.start_node(leader)
    cluster.start_node(follower)
    _finish_exact(stack)
    wait_until(lambda: (s := stack.buffer_stats()["states"])["pending"] + s["inflight"] == 0, 30, "the buffer drained")
