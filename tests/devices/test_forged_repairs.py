"""Forged repair requests are ignored by a real fleet device against a real Mosquitto: it does not
resend on one (unsigned, or signed by another key), counts each by reason, and resends at once on
the cloud's signed request."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devices.fleet.config import FleetConfig
from devices.fleet.fleet import Fleet
from devices.fleet.stats import FleetSummary
from edgetally.brokers import BrokerProcess
from protocol import (
    BATCH_FILTER,
    Registry,
    RepairRequest,
    SigningKey,
    command_topic,
    parse_broker_url,
    parse_device_topic,
    receipt_topic,
    verify,
)
from protocol.signed import sign_repair
from tests.devices.receipt_support import signed_contiguous_receipt
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class ReceiptingCloud:
    def __init__(self, broker: BrokerProcess, registry: Registry, key: SigningKey) -> None:
        self.registry, self.key = registry, key
        self.copies: dict[int, int] = defaultdict(int)
        self.held: dict[int, str] = {}
        address = parse_broker_url(broker.url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-repairs", protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *_: c.subscribe(BATCH_FILTER, 1)
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        topic = parse_device_topic(message.topic)
        assert topic is not None
        batch = verify(message.payload, self.registry, topic_device=topic.device)
        self.copies[batch.body.seq] += 1
        self.held[batch.body.seq] = batch.body_hash
        payload = signed_contiguous_receipt(batch.body.election, batch.body.device, self.held, self.key)
        client.publish(receipt_topic(batch.body.election, batch.body.device), payload, qos=1, retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_does_not_resend_on_forged_repair_requests_and_does_on_the_clouds(
    broker: BrokerProcess, keys_dir: Path, registry: Registry, cloud_key: SigningKey
) -> None:
    device = registry.election.devices[0]
    election = registry.election.id
    cloud = ReceiptingCloud(broker, registry, cloud_key)
    config = FleetConfig(
        broker=parse_broker_url(broker.url), keys=keys_dir, seed=13, batches_per_device=3,
        resend_after=60.0, resend_cap=60.0, timeout=30.0, devices=(device,), withhold_first=frozenset({2}),
    )  # fmt: skip
    fleet = Fleet(config, registry)
    result: list[FleetSummary] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(fleet.run())))
    runner.start()
    try:
        wait_until(lambda: cloud.copies[3] >= 1, 20, "seq 3 at the cloud, 2 withheld")
        request = RepairRequest(election, device, ((2, 2),))
        other = SigningKey.from_seed(bytes(range(50, 82)))
        for payload in (request.to_bytes(), sign_repair(request, other)):
            cloud.client.publish(command_topic(election, device), payload, qos=1)
        wait_until(lambda: sum(fleet.stats.ignored.values()) >= 2, 20, "both forged requests ignored")
        assert cloud.copies[2] == 0 and fleet.stats.resends == 0  # nothing resent on a forgery
        assert {reason for word, reason in fleet.stats.ignored if word == "repair"} >= {"wrong_key"}
        cloud.client.publish(command_topic(election, device), sign_repair(request, cloud_key), qos=1)
        runner.join(30)
    finally:
        runner.join(30)
        cloud.close()
    summary = result[0]
    assert summary.ok and summary.confirmed_devices == 1
    assert summary.resends == 1 and cloud.copies[2] == 1
    assert sum(summary.ignored["repair"].values()) == 2
