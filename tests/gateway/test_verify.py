"""Verification at the gateway: a good batch becomes a pending row, anything else a quarantined
row with its reason (gateway/verify.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.generator import device_batches
from devices.synth import synth_election
from gateway.buffer.schema import State
from gateway.verify import classify
from protocol import (
    Election,
    Envelope,
    Registry,
    RejectReason,
    batch_topic,
    load_signing_key,
    provision,
    seal,
)
from tests.gateway.support import Sent


@pytest.fixture
def good(sample_election: Election, keys_dir: Path) -> Sent:
    device = sample_election.devices[0]
    body = device_batches(sample_election, 7, device, 2)[1]
    payload = seal(body, load_signing_key(keys_dir, device)).to_bytes()
    return Sent(batch_topic(sample_election.id, device), payload, device, body.seq)


def test_verified_batch_becomes_a_pending_row_naming_device_and_seq(
    good: Sent, registry: Registry
) -> None:
    row = classify(good.topic, good.payload, 1.5, registry, 65536)
    assert row.state is State.PENDING
    assert (row.device, row.seq, row.payload, row.received_at) == (
        good.device,
        2,
        good.payload,
        1.5,
    )
    assert row.body_hash is not None and len(row.body_hash) == 64


def test_bad_signature_is_quarantined_with_reason_detail_and_seq(
    sample_election: Election, keys_dir: Path, registry: Registry
) -> None:
    device = sample_election.devices[0]
    first, second = device_batches(sample_election, 7, device, 2)
    key = load_signing_key(keys_dir, device)
    forged = Envelope(
        body=second.to_bytes(), sig=key.sign(first.to_bytes()), kid=key.kid
    ).to_bytes()
    row = classify(batch_topic(sample_election.id, device), forged, 0.0, registry, 65536)
    assert row.state is State.QUARANTINED
    assert row.reason == "bad_signature"
    assert "does not verify" in (row.detail or "")
    assert (row.device, row.seq) == (device, 2)


def test_malformed_payload_is_quarantined(good: Sent, registry: Registry) -> None:
    row = classify(good.topic, b"\xff\xfe not json", 0.0, registry, 65536)
    assert (row.state, row.reason, row.seq) == (State.QUARANTINED, "malformed_json", None)


def test_oversize_payload_is_quarantined_under_the_configured_limit(
    good: Sent, registry: Registry
) -> None:
    row = classify(good.topic, good.payload, 0.0, registry, len(good.payload) - 1)
    assert (row.state, row.reason) == (State.QUARANTINED, "oversize")


def test_batch_on_another_devices_topic_is_quarantined(
    good: Sent, sample_election: Election, registry: Registry
) -> None:
    other = batch_topic(sample_election.id, sample_election.devices[1])
    row = classify(other, good.payload, 0.0, registry, 65536)
    assert (row.state, row.reason) == (State.QUARANTINED, "topic_mismatch")


def test_batch_on_another_elections_topic_is_quarantined(good: Sent, registry: Registry) -> None:
    row = classify(batch_topic("other-election", good.device), good.payload, 0.0, registry, 65536)
    assert (row.state, row.reason) == (State.QUARANTINED, "topic_mismatch")
    assert "other-election" in (row.detail or "")


def test_message_on_a_topic_that_is_not_a_device_batch_topic_is_quarantined(
    good: Sent, registry: Registry
) -> None:
    row = classify("edgetally/v1/_gateway/gw1/batch", good.payload, 0.0, registry, 65536)
    assert (row.state, row.reason) == (State.QUARANTINED, RejectReason.BAD_TOPIC.value)


# -- against a real broker -----------------------------------------------------------


def test_a_gateway_carrying_several_elections_verifies_each_with_its_own_registry(
    good: Sent, registry: Registry, tmp_path: Path
) -> None:
    other = provision(synth_election(4, 2, 9), tmp_path / "other")
    carried = {registry.election.id: registry, other.election.id: other}
    assert classify(good.topic, good.payload, 1.0, carried, 65536).state is State.PENDING
    device = other.election.devices[0]
    body = device_batches(other.election, 3, device, 1)[0]
    theirs = seal(body, load_signing_key(tmp_path / "other", device)).to_bytes()
    assert classify(batch_topic(other.election.id, device), theirs, 1.0, carried, 65536).state is State.PENDING
    row = classify(batch_topic(other.election.id, device), theirs, 1.0, {registry.election.id: registry}, 65536)
    assert (row.state, row.reason, row.device, row.seq) == (State.QUARANTINED, RejectReason.UNKNOWN_ELECTION.value, device, 1)
    assert repr(other.election.id) in row.detail and repr(registry.election.id) in row.detail
