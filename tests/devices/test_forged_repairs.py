"""Forged repair requests are ignored by a real fleet device against a real Mosquitto: it does not
resend on one (unsigned, or signed by another key), counts each by reason, and resends at once on
the cloud's signed request."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from devices.fleet.config import FleetConfig
from devices.fleet.fleet import Fleet
from devices.fleet.stats import FleetSummary
from edgetally.brokers import BrokerProcess
from protocol import (
    Registry,
    RepairRequest,
    SigningKey,
    command_topic,
    parse_broker_url,
)
from protocol.signed import sign_repair
from tests.devices.receipt_support import ReceiptingCloud
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


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
        wait_until(lambda: cloud.copies[(device, 3)] >= 1, 20, "seq 3 at the cloud, 2 withheld")
        request = RepairRequest(election, device, ((2, 2),))
        other = SigningKey.from_seed(bytes(range(50, 82)))
        for payload in (request.to_bytes(), sign_repair(request, other)):
            cloud.client.publish(command_topic(election, device), payload, qos=1)
        wait_until(lambda: sum(fleet.stats.ignored.values()) >= 2, 20, "both forged requests ignored")
        assert cloud.copies[(device, 2)] == 0 and fleet.stats.resends == 0  # nothing resent on a forgery
        assert {reason for word, reason in fleet.stats.ignored if word == "repair"} >= {"wrong_key"}
        cloud.client.publish(command_topic(election, device), sign_repair(request, cloud_key), qos=1)
    finally:
        runner.join(30)
        cloud.close()
    summary = result[0]
    assert summary.ok and summary.confirmed_devices == 1
    assert summary.resends == 1 and cloud.copies[(device, 2)] == 1
    assert sum(summary.ignored["repair"].values()) == 2
