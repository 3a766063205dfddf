"""SIGKILL of the gateway at each named point of a batch's path loses nothing and counts
nothing twice: real brokers, the real cloud worker, the gateway as a subprocess frozen at a
test-only fault point (gateway/faults.py), killed there and restarted on the same buffer.

A second gateway, deliberately broken to acknowledge before it commits, shows the check
catches the loss these tests exist for.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgetally.brokers import BrokerProcess, BrokerSettings
from gateway.faults import FAULT_ENV, UNSAFE_ACK_ENV
from protocol import Election
from tests.gateway.crash_support import Rig, Workload
from tests.gateway.support import publish_all
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

DEVICES = 8
BATCHES = 15  # per device: 120 batches, the last one the sentinel


def _inflight_copy_reached_the_cloud(rig: Rig) -> bool:
    """A batch the (frozen) uplink still holds in flight is already in the cloud ledger, so
    the restarted gateway must send it again and the ledger must absorb that duplicate."""
    return bool(rig.buffer_keys("inflight") & set(rig.ledger()))


@dataclass(frozen=True)
class Point:
    hit: int  # the checkpoint trips the hit-th time it is reached
    min_duplicates: int  # duplicates the ledger must have absorbed at the end
    settle: Callable[[Rig], bool] | None = None  # true before the kill (bounded wait)
    what: str = ""


POINTS = {
    # paho's edge network thread frozen with a message queued: nothing committed is acked.
    "received": Point(40, 0),
    # writer frozen between commit and ack; the uplink forwards the group meanwhile, so the
    # broker's redelivery after the restart is a second copy for the ledger to absorb.
    # (the first group: all 120 batches can arrive in one group of up to 500, so a later one
    # may never come)
    "committed": Point(1, 1, lambda rig: rig.outbound() == 0, "the committed groups forwarded"),
    "acked": Point(1, 0),
    # uplink frozen after handing its 2nd message (an envelope or a bundle) to paho: its rows
    # stay in flight in the buffer.
    "published": Point(2, 1, _inflight_copy_reached_the_cloud, "an in-flight batch in the ledger"),
    # uplink frozen with PUBACKs seen but not yet recorded in the buffer: the first time, since
    # all 120 batches can go out in two bundles whose PUBACKs are applied together (one hit).
    "puback": Point(1, 1, _inflight_copy_reached_the_cloud, "an in-flight batch in the ledger"),
}


@pytest.fixture
def rig(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    processes: list[subprocess.Popen[bytes]],
) -> Rig:
    rig = Rig(tmp_path, edge, cloud, keys_dir, processes)
    rig.start_cloud()
    return rig


def kill_at(
    rig: Rig, work: Workload, point: str, *, unsafe: bool = False, spec: Point | None = None
) -> dict[str, object]:
    """Run the gateway until it freezes at ``point``, SIGKILL it, restart it, check the end."""
    spec = spec or POINTS[point]
    env = {FAULT_ENV: f"{point}:{spec.hit}"}
    if unsafe:
        env[UNSAFE_ACK_ENV] = "1"
    rig.start_gateway(env=env)
    publish_all(rig.edge.url, [(s.topic, s.payload) for s in work.body])
    marker = rig.wait_fault(point)
    assert marker["count"] == spec.hit
    settle = spec.settle
    if settle is not None:
        wait_until(lambda: settle(rig), 30, spec.what)
    rig.kill_gateway(f"{point}:{spec.hit}")
    rig.start_gateway()
    return rig.finish(work, min_duplicates=spec.min_duplicates)


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_at_each_fault_point_loses_nothing_and_counts_nothing_twice(
    rig: Rig, keys_dir: Path, sample_election: Election, point: str
) -> None:
    work = Workload.make(sample_election, keys_dir, sample_election.devices[:DEVICES], BATCHES)
    results = kill_at(rig, work, point)
    print(f"{point}: {results['batches']} batches, {results['duplicates']} duplicates absorbed")


def test_a_gateway_that_acks_before_commit_is_caught_losing_batches(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """The check above is not vacuous: acknowledging before the commit loses the group
    that was acknowledged when the gateway died, and the test says which batches."""
    edge = broker_factory("edge", settings=BrokerSettings(extra="log_type debug\n"))
    rig = Rig(tmp_path, edge, cloud, keys_dir, processes)
    rig.start_cloud()

    def acks_reached_the_broker(rig: Rig) -> bool:
        # Frozen after acknowledging its 2nd group, before committing it: the buffer holds the
        # 1st group only. Once the edge broker has processed more acknowledgements than that,
        # it has forgotten batches that exist nowhere but in the frozen process.
        # (A locked broker names the gateway's session for its certificate.)
        client = "gateway-gw1" if edge.tls is not None else "edgetally-gw-gw1"
        pubacks = edge.log_path.read_text().count(f"Received PUBACK from {client} ")
        return pubacks > sum(rig.buffer_states().values())

    work = Workload.make(sample_election, keys_dir, sample_election.devices[:DEVICES], BATCHES)
    spec = Point(2, 0, acks_reached_the_broker, "the edge broker to process the early acks")
    with pytest.raises(AssertionError, match=r"LOST \d+ of 120 batches .*device=\S+ seq=\d+") as caught:
        kill_at(rig, work, "acked", unsafe=True, spec=spec)
    print(f"caught as expected: {str(caught.value).splitlines()[0][:300]}")
