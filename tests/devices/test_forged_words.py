"""Forged receipts are ignored by the real fleet against a real Mosquitto: the device keeps its
batches (it resends them), counts each forgery by reason, and ends confirmed by the cloud's
signed receipt."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgetally.brokers import BrokerProcess
from protocol import (
    BATCH_FILTER,
    Registry,
    SigningKey,
    parse_device_topic,
    receipt_topic,
    verify,
)
from protocol.signed import sign_receipt
from tests.devices.receipt_support import contiguous_receipt, stand_in_cloud_client
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


class ForgingCloud:
    """For every batch: five forged receipts covering it, live; the cloud's real (signed,
    retained) receipt only once the device has sent the batch twice (it kept it)."""

    def __init__(self, broker: BrokerProcess, registry: Registry, key: SigningKey) -> None:
        self.registry, self.key = registry, key
        self.other = SigningKey.from_seed(bytes(range(100, 132)))
        self.copies: dict[tuple[str, int], int] = defaultdict(int)
        self.held: dict[str, dict[int, str]] = defaultdict(dict)
        self.lock = threading.Lock()
        self.client = stand_in_cloud_client(broker, "test-forger", self._on_message, BATCH_FILTER)

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        topic = parse_device_topic(message.topic)
        assert topic is not None
        batch = verify(message.payload, self.registry, topic_device=topic.device)
        device, seq, election = batch.body.device, batch.body.seq, batch.body.election
        with self.lock:
            self.copies[(device, seq)] += 1
            copies = self.copies[(device, seq)]
            held = {**self.held[device], seq: batch.body_hash}
            if copies >= 2:
                self.held[device] = held
            real = contiguous_receipt(election, device, self.held[device])
        forged = contiguous_receipt(election, device, held)
        other_device = next(d for d in self.registry.election.devices if d != device)
        tampered = sign_receipt(forged, self.key).replace(f'\\"seq\\":{forged.seq}'.encode(), f'\\"seq\\":{forged.seq + 1}'.encode())
        for payload in (
            forged.to_bytes(),  # unsigned
            sign_receipt(forged, self.other),  # another key
            sign_receipt(replace(forged, device=other_device), self.key),  # the cloud's, for another device
            sign_receipt(replace(forged, election="other-2026"), self.key),  # for another election
            tampered,  # the cloud's, seq changed after signing
        ):
            client.publish(receipt_topic(election, device), payload, qos=1)
        if copies >= 2:
            client.publish(receipt_topic(election, device), sign_receipt(real, self.key), qos=1, retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_forged_receipts_are_ignored_counted_by_reason_and_the_device_ends_confirmed_by_the_real_one(
    broker: BrokerProcess, keys_dir: Path, registry: Registry, cloud_key: SigningKey, tmp_path: Path
) -> None:
    cloud = ForgingCloud(broker, registry, cloud_key)
    try:
        truth = tmp_path / "truth.json"
        result = run_cli(
            "devices", "run", "--broker", broker.url, "--keys", str(keys_dir), "--seed", "11", "--json",
            "--devices", "1", "--batches-per-device", "3", "--resend-after", "0.3", "--timeout", "60",
            "--truth", str(truth),
        )  # fmt: skip
    finally:
        cloud.close()
    summary = json.loads(result.stdout)
    device = registry.election.devices[0]
    assert summary["ok"] and summary["confirmed_devices"] == 1
    assert all(cloud.copies[(device, seq)] >= 2 for seq in (1, 2, 3))  # kept and resent every one
    ignored = summary["ignored"]["receipt"]
    assert {"wrong_key", "bad_signature", "topic_mismatch"} <= set(ignored)
    assert ignored["topic_mismatch"] >= 2  # another device's and another election's
    assert sum(ignored.values()) >= 5
    per_device = json.loads(truth.read_text())["devices"][device]["ignored"]
    assert per_device == summary["ignored"]
    assert "ignoring a receipt (wrong_key)" in result.stderr
