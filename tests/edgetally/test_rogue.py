"""`edgetally rogue` on a broker that is NOT locked down: the attack of issue 14 gets through,
and the scenario check that judges a rogue (edgetally/scenarios/contained.py) says so. The locked
down side is the `rogue-client` scenario (tests/edgetally/scenarios/test_shipped.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.election_file import load_election
from edgetally.brokers import BrokerProcess
from edgetally.rogue import FORGERIES
from edgetally.scenarios.contained import check_contained, flood_hashes
from protocol import Registry, batch_topic, provision
from tests.helpers import SAMPLE_ELECTION, run_cli

pytestmark = pytest.mark.integration
TIMEOUT_S = 20


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return provision(load_election(SAMPLE_ELECTION), tmp_path / "keys")


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path / "broker", name="open-broker", embedded=False)  # plain: anonymous, no ACL
    broker.start()
    yield broker
    broker.kill()


def _client(broker: BrokerProcess, client_id: str, *, clean: bool) -> tuple[mqtt.Client, threading.Event]:
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert connected.wait(TIMEOUT_S), "no connection"
    return client, connected


def test_on_an_open_broker_the_rogue_takes_the_gateways_session_and_every_forgery_passes(
    tmp_path: Path, registry: Registry, open_broker: BrokerProcess
) -> None:
    election, devices = registry.election.id, registry.election.devices
    # The gateway's persistent session, subscribed to every batch, offline while a device publishes.
    gateway, _ = _client(open_broker, "edgetally-gw-gw1", clean=False)
    subscribed = threading.Event()
    gateway.on_subscribe = lambda *_: subscribed.set()
    gateway.subscribe(f"edgetally/v1/{election}/+/batch", qos=1)
    assert subscribed.wait(TIMEOUT_S)
    gateway.disconnect()
    gateway.loop_stop()
    device, _ = _client(open_broker, "a-device", clean=True)
    device.publish(batch_topic(election, devices[0]), b"a batch queued for the gateway", qos=1).wait_for_publish(TIMEOUT_S)
    device.disconnect()
    device.loop_stop()

    report_path = tmp_path / "rogue.json"
    result = run_cli(
        "rogue", "--broker", open_broker.url, "--keys", str(tmp_path / "keys"), "--device", devices[-1],
        "--flood", "6", "--watch", "1", "--report", str(report_path),
    )  # fmt: skip
    report = json.loads(report_path.read_text())

    assert report["hijack"]["session_present"] is True  # the gateway's session, handed over
    assert report["hijack"]["foreign"] >= 1  # and the batch queued in it
    victims = len(registry.devices) - 1
    for kind in FORGERIES:
        assert report[kind] == {"attempted": victims, "refused_by_broker": 0}, kind
    assert report["flood"]["acknowledged"] == 6 and len(flood_hashes(report)) == 6
    assert "forged receipts: 0/" in result.stdout
    verdict = check_contained(report, {}, 0, [])  # nothing quarantined, nothing dropped
    assert not verdict.ok
    assert "handed it the session of edgetally-gw-gw1" in verdict.detail
    assert f"{victims} forged receipts not refused by the broker" in verdict.detail
    assert "flood: 6 acknowledged but 0 quarantined + 0 counted" in verdict.detail


def test_the_rogue_refuses_a_device_the_registry_does_not_name(tmp_path: Path, registry: Registry) -> None:
    result = run_cli(
        "rogue", "--broker", "mqtt://127.0.0.1:1", "--keys", str(tmp_path / "keys"), "--device", "nobody", check=False
    )
    assert result.returncode == 2
    assert "device 'nobody' is not in" in result.stderr


def test_a_rogue_whose_flood_is_all_accounted_for_and_refused_everywhere_is_contained() -> None:
    hashes = ["a" * 64, "b" * 64, "c" * 64]
    report = {
        "device": "d9",
        "hijack": {"client_id": "edgetally-gw-gw1", "session_present": False, "foreign": 0, "foreign_topics": []},
        **{kind: {"attempted": 4, "refused_by_broker": 4} for kind in FORGERIES},
        "flood": {"published": 3, "acknowledged": 3, "payload_hashes": hashes},
    }
    refused = {hashes[0]: {("gateway", "malformed_json")}, hashes[1]: {("gateway", "wrong_key")}}
    assert check_contained(report, refused, 1, [{"ignored": {}}]).ok
    assert not check_contained(report, refused, 0, []).ok  # one reject neither held nor counted
    reached = check_contained(report, refused, 1, [{"ignored": {"receipt": {"bad_signature": 2}}}])
    assert not reached.ok and "devices ignored 2 receipts or repair requests" in reached.detail
