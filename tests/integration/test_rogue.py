"""The attack of issue 14 on a locked-down stack: a rogue client holding a stolen device
credential (edgetally/rogue.py) forges receipts, repair requests and batches for every other
device and floods its own topic with rejects before the real fleet runs. The broker's ACL stops the forgeries before any device or
gateway sees them (Mosquitto 2.0 acknowledges a refused publish and closes the connection), the
garbage is quarantined with its reason, and every vote is counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetally.rogue import FORGERIES, Rogue, RogueConfig
from edgetally.stack import Stack, StackConfig
from edgetally.verdict import compare
from protocol.topics import parse_broker_url
from tests.helpers import SAMPLE_ELECTION, wait_until

pytestmark = pytest.mark.integration
DEVICES, BATCHES, GARBAGE = 12, 4, 40
TIMEOUT_S = 30


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    made = Stack(
        StackConfig(
            workdir=tmp_path / "stack", election_file=SAMPLE_ELECTION, seed=11, batches_per_device=BATCHES,
            devices=DEVICES, rate=10.0, resend_after=1.0, fleet_timeout=150.0, embedded_brokers=False,
        )
    )  # fmt: skip
    yield made
    made.stop()
    for broker in (made.edge, made.cloud_broker):
        broker.kill()


def test_a_rogue_with_a_stolen_device_credential_cannot_make_the_fleet_lose_a_vote(stack: Stack) -> None:
    stack.start()
    election = stack.registry.election
    fleet = stack.device_ids
    stolen = election.devices[-1]  # a device that is not running: its credential is the rogue's
    assert stolen not in fleet
    # As in the attack: the gateway's session asked for, `#` subscribed, forged (retained)
    # receipts, repair requests and batches for every other device, then a flood of rejects on
    # the rogue's own, allowed, topic. Mosquitto refuses each forgery and closes the connection.
    config = RogueConfig(parse_broker_url(stack.edge.url), stack.keys, stolen, flood=GARBAGE, seq=BATCHES, watch_s=0.5)
    report = Rogue(config, stack.registry).run()
    assert report["hijack"]["session_present"] is False and report["hijack"]["foreign"] == 0
    victims = len(stack.registry.devices) - 1
    for kind in FORGERIES:
        assert report[kind] == {"attempted": victims, "refused_by_broker": victims}, kind
    assert report["flood"]["acknowledged"] == GARBAGE
    stack.start_fleet()
    code = stack.fleet.wait(timeout=170)
    assert code == 0, stack.fleet.tail()
    expected = stack.expected()
    wait_until(lambda: int(stack.results().get("batches", 0)) >= expected.batches, TIMEOUT_S, "every batch in the ledger")
    wait_until(lambda: stack.buffer_stats()["states"]["quarantined"] >= GARBAGE, TIMEOUT_S, "the flood quarantined")
    stats = stack.buffer_stats()
    verdict = compare(election, expected, stack.results(), stack.fleet_summary(), stats)
    failed = [c.name for c in verdict.checks if not c.ok]
    assert failed == ["gateway quarantine empty"], verdict.to_mapping()  # the rogue's garbage, nothing else
    assert all(r.ok for r in verdict.rows), verdict.to_mapping()
    summary = stack.fleet_summary()
    assert summary is not None and summary["confirmed_devices"] == DEVICES
    assert stats["states"]["quarantined"] == GARBAGE  # only the rogue's own topic got through
    ignored = summary.get("ignored", {})
    assert not any(ignored.get("receipt", {}).values()), ignored  # no forged receipt reached a device
