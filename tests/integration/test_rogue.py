"""The attack of issue 14 on a locked-down stack: a rogue client holding a stolen device
credential forges receipts and batches for the fleet's devices and floods its own topic with
garbage before the real fleet runs. The broker's ACL stops the forgeries before any device or
gateway sees them (Mosquitto 2.0 acknowledges a refused publish and closes the connection), the
garbage is quarantined with its reason, and every vote is counted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgetally.stack import Stack, StackConfig
from edgetally.verdict import compare
from protocol import Receipt, batch_topic, receipt_topic
from protocol.tls import Role, client_context, client_tls
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


class _Rogue:
    """A paho client on the edge broker with a device's certificate (stolen from its keys)."""

    def __init__(self, stack: Stack, device: str) -> None:
        self._stack = stack
        self._tls = client_context(client_tls(stack.keys, Role.DEVICE, device))
        self.disconnected = 0  # connections the broker closed on the rogue

    def attempt(self, messages: list[tuple[str, bytes, bool]]) -> None:
        """One connection publishing ``messages`` (topic, payload, retain) at QoS 1, until the
        broker acknowledges them all or closes the connection."""
        closed = threading.Event()
        connected = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue", protocol=mqtt.MQTTv311)
        client.tls_set_context(self._tls)
        client.on_connect = lambda *_: connected.set()
        client.on_disconnect = lambda *_: closed.set()
        client.connect("127.0.0.1", self._stack.edge.port)
        client.loop_start()
        try:
            wait_until(connected.is_set, TIMEOUT_S, "the rogue's connection")
            infos = [client.publish(t, p, qos=1, retain=r) for t, p, r in messages]
            wait_until(lambda: closed.is_set() or all(i.is_published() for i in infos), TIMEOUT_S, "the broker's answer")
            if closed.is_set():
                self.disconnected += 1
        finally:
            client.disconnect()
            client.loop_stop()


def test_a_rogue_with_a_stolen_device_credential_cannot_make_the_fleet_lose_a_vote(stack: Stack) -> None:
    stack.start()
    election = stack.registry.election
    fleet = stack.device_ids
    stolen = election.devices[-1]  # a device that is not running: its credential is the rogue's
    assert stolen not in fleet
    rogue = _Rogue(stack, stolen)
    # Forged receipts covering every batch of every fleet device, retained, as in the attack, and
    # batches published as those devices: Mosquitto drops each and closes the rogue's connection.
    for device in fleet:
        forged = Receipt(election.id, device, BATCHES, "0" * 64).to_bytes()  # the final seq
        rogue.attempt([(receipt_topic(election.id, device), forged, True)])
        rogue.attempt([(batch_topic(election.id, device), b'{"forged": true}', False)])
    assert rogue.disconnected == 2 * len(fleet)
    # A flood of rejects on the rogue's own, allowed, topic: one connection, every one acknowledged.
    rogue.attempt([(batch_topic(election.id, stolen), b"not an envelope %d" % n, False) for n in range(GARBAGE)])
    assert rogue.disconnected == 2 * len(fleet)
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
