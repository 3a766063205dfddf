"""The default rules through the whole stack: an honest fleet, whose batches are duplicated by a
cloud-broker SIGKILL and the devices' resends, reproduces the exact totals and raises no alert;
a dishonest device in the same fleet raises exactly its alert."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetally.stack import Stack, StackConfig
from edgetally.verdict import compare
from tests.cloud.engine_support import crafted
from tests.cloud.support import Envelopes, Publisher
from tests.helpers import SAMPLE_ELECTION, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    made = Stack(
        StackConfig(
            workdir=tmp_path / "stack",
            election_file=SAMPLE_ELECTION,
            seed=5,
            batches_per_device=5,
            devices=30,
            rate=80.0,
            resend_after=1.0,
            fleet_timeout=150.0,
            embedded_brokers=False,
            # Plain: the test publishes a crafted batch on the cloud broker as an outside client
            # would, to see the rules catch it; the locks on the wire are tests/integration/test_tls.py's.
            plain=True,
        )
    )
    yield made
    made.stop()
    for broker in (made.edge, made.cloud_broker):
        broker.kill()


def _batches(stack: Stack) -> int:
    return int(stack.results().get("batches", 0))


def test_an_honest_fleet_through_an_outage_gives_exact_totals_and_no_alert(stack: Stack) -> None:
    stack.start()
    expected = stack.expected()
    stack.start_fleet()
    wait_until(lambda: _batches(stack) >= expected.batches // 4, 60, "a quarter of the batches")
    stack.cloud_broker.kill()  # its queues are lost: devices resend, duplicates follow
    stack.cloud_broker.start()
    assert stack.fleet.wait(timeout=170) == 0, stack.fleet.tail()
    wait_until(lambda: _batches(stack) >= expected.batches, 30, "every batch in the ledger")

    verdict = compare(
        stack.registry.election,
        expected,
        stack.results(),
        stack.fleet_summary(),
        alerts=stack.alerts(),
    )
    assert verdict.ok, verdict.to_mapping()

    # The same rules on the same cloud do see a device that counts more than it may
    # (a crafted batch signed with that device's real key, published on the cloud broker).
    election = stack.registry.election
    device = election.devices[-1]  # not one of the fleet's 30
    precinct = election.precinct_of(device)
    assert precinct is not None
    envelopes = Envelopes(stack.keys)
    anomaly = crafted(envelopes, device, ballots=election.units[precinct].registered + 1)
    publisher = Publisher(stack.cloud_broker.port)
    publisher.publish_all([envelopes.inbound(anomaly)])
    publisher.close()
    found = wait_until(stack.alerts, 20, "the alert of the dishonest device")
    assert [(a["rule"], a["device"], a["seq"]) for a in found] == [
        ("ballots-above-registered", device, 1)
    ]
