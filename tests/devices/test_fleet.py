"""The fleet against a real Mosquitto; a small in-test stand-in plays the cloud's receipts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetally.brokers import BrokerProcess
from protocol import (
    Registry,
    SigningKey,
)
from tests.devices.receipt_support import ReceiptingCloud
from tests.helpers import run_cli, start_cli, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud_factory(registry: Registry) -> Iterator[list[ReceiptingCloud]]:
    made: list[ReceiptingCloud] = []
    yield made
    for cloud in made:
        cloud.close()


def _fleet_args(broker: BrokerProcess, keys: Path, *extra: str) -> list[str]:
    return ["devices", "run", "--broker", broker.url, "--keys", str(keys), "--seed", "5", "--json", *extra]


def test_every_batch_arrives_signed_in_order_with_final_last(
    broker: BrokerProcess, keys_dir: Path, registry: Registry, cloud_key: SigningKey, cloud_factory: list[ReceiptingCloud]
) -> None:
    cloud = ReceiptingCloud(broker, registry, cloud_key)
    cloud_factory.append(cloud)
    result = run_cli(*_fleet_args(broker, keys_dir, "--devices", "8", "--batches-per-device", "4", "--no-confirm"))
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["acked"] == 32
    wait_until(lambda: sum(len(v) for v in cloud.held.values()) == 32, 10, "32 batches at the subscriber")
    assert sorted(cloud.held) == sorted(registry.election.devices[:8])
    assert all(sorted(seqs) == [1, 2, 3, 4] for seqs in cloud.held.values())


def test_fleet_waits_for_receipts_and_reports_devices_confirmed(
    broker: BrokerProcess, keys_dir: Path, registry: Registry, cloud_key: SigningKey, cloud_factory: list[ReceiptingCloud]
) -> None:
    cloud = ReceiptingCloud(broker, registry, cloud_key)
    cloud_factory.append(cloud)
    result = run_cli(*_fleet_args(broker, keys_dir, "--devices", "6", "--batches-per-device", "3"))
    summary = json.loads(result.stdout)
    assert summary["ok"]
    assert summary["confirmed_devices"] == 6 and summary["unconfirmed_devices"] == []
    assert summary["receipted"] == 18
    wait_until(lambda: len(cloud.statuses) == 6 and all(s["state"] == "confirmed" for s in cloud.statuses.values()), 10, "retained 'confirmed' statuses")


def test_unreceipted_batch_is_resent_until_the_cloud_holds_it(
    broker: BrokerProcess, keys_dir: Path, registry: Registry, cloud_key: SigningKey, cloud_factory: list[ReceiptingCloud]
) -> None:
    device = registry.election.devices[0]
    cloud = ReceiptingCloud(broker, registry, cloud_key, withhold={(device, 2)})
    cloud_factory.append(cloud)
    result = run_cli(*_fleet_args(broker, keys_dir, "--devices", "1", "--batches-per-device", "3", "--resend-after", "0.5"))
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["confirmed_devices"] == 1
    assert summary["resends"] >= 1
    assert cloud.copies[(device, 2)] >= 2
    assert sorted(cloud.held[device]) == [1, 2, 3]


def test_fleet_without_receipts_times_out_unconfirmed_and_fails(broker: BrokerProcess, keys_dir: Path) -> None:
    result = run_cli(
        *_fleet_args(broker, keys_dir, "--devices", "2", "--batches-per-device", "2", "--timeout", "2", "--resend-after", "0.5"),
        check=False,
    )
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert not summary["ok"]
    assert summary["acked"] == 4
    assert len(summary["unconfirmed_devices"]) == 2


def test_killed_fleet_leaves_a_lost_status_by_last_will(
    broker: BrokerProcess, keys_dir: Path, registry: Registry, cloud_key: SigningKey, cloud_factory: list[ReceiptingCloud], tmp_path: Path, processes: list
) -> None:
    watcher = ReceiptingCloud(broker, registry, cloud_key, withhold={(d, 1) for d in registry.election.devices[:3]})
    cloud_factory.append(watcher)
    fleet = start_cli(*_fleet_args(broker, keys_dir, "--devices", "3", "--batches-per-device", "2", "--resend-after", "60"), log=tmp_path / "fleet.log")
    processes.append(fleet)
    wait_until(lambda: len(watcher.statuses) == 3 and all(s["state"] == "online" for s in watcher.statuses.values()), 20, "3 devices online")
    fleet.kill()
    fleet.wait(10)
    wait_until(lambda: all(s["state"] == "lost" for s in watcher.statuses.values()), 10, "last wills saying 'lost'")


def test_bad_broker_url_is_a_clear_error(keys_dir: Path) -> None:
    result = run_cli("devices", "run", "--broker", "http://x", "--keys", str(keys_dir), "--seed", "1", check=False)
    assert result.returncode == 2
    assert "mqtt://host:port" in result.stderr


def test_missing_keys_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("devices", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(tmp_path / "none"), "--seed", "1", check=False)
    assert result.returncode == 2
    assert "keys directory does not exist" in result.stderr
