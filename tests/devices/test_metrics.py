"""`devices run --metrics-port`: Prometheus text over real HTTP, from a real fleet on a real Mosquitto."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devices.metrics import CONTENT_TYPE, MetricsServer, exposition
from devices.snapshot import FleetSnapshot
from edgetally.brokers import BrokerProcess
from protocol import (
    BATCH_FILTER,
    Registry,
    SigningKey,
    parse_device_topic,
    receipt_topic,
    verify,
)
from tests.devices.prometheus_text import ExpositionError, Family, parse
from tests.devices.receipt_support import signed_contiguous_receipt, stand_in_cloud_client
from tests.helpers import run_cli, start_cli, wait_until

DEVICES, BATCHES = 20, 3


def snapshot(**overrides: object) -> FleetSnapshot:
    values: dict[str, object] = dict(
        elapsed_s=12.5, running=True, confirm=True, devices=20, connected=11, connecting=4, offline=3,
        finished=2, batches=60, sent=50, acked=45, receipted=30, pending=20, publishes=47, resends=2,
        reconnects=5, connect_failures=7, connections_lost=6, sent_per_s=10.0, acked_per_s=9.0,
        receipted_per_s=6.0, behaviours={"flap": 3, 'odd "name"\\x': 1},
    )  # fmt: skip
    values.update(overrides)
    return FleetSnapshot(**values)  # type: ignore[arg-type]


def test_exposition_is_strict_prometheus_text_with_every_fleet_figure() -> None:
    families = parse(exposition(snapshot()))
    devices = families["edgetally_fleet_devices"]
    assert devices.type == "gauge"
    assert [devices.value(state=s) for s in ("connected", "connecting", "offline", "finished")] == [11, 4, 3, 2]
    batches = families["edgetally_fleet_batches_total"]
    assert batches.type == "counter"
    assert [batches.value(stage=s) for s in ("sent", "acked", "receipted")] == [50, 45, 30]
    assert families["edgetally_fleet_pending"].value() == 20
    assert families["edgetally_fleet_reconnects_total"].value() == 5
    assert families["edgetally_fleet_connect_failures_total"].value() == 7
    behaviours = families["edgetally_fleet_behaviours_total"]
    assert behaviours.value(behaviour="flap") == 3
    assert behaviours.value(behaviour='odd "name"\\x') == 1  # escaped on the wire, intact after parsing
    assert families["edgetally_fleet_running"].value() == 1
    assert all(f.help for f in families.values())


def test_exposition_before_the_first_snapshot_says_so() -> None:
    families = parse(exposition(None))
    assert families["edgetally_fleet_snapshot_available"].value() == 0
    assert "edgetally_fleet_devices" not in families


@pytest.mark.parametrize(
    "text",
    [
        "# TYPE a_total counter\na_total 1",  # no final newline
        "a 1\n",  # sample before TYPE
        "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",  # duplicate series
        "# TYPE a gauge\na{x=\"\\q\"} 1\n",  # bad escape
        "# TYPE a counter\na 1\n",  # counter not *_total
        "# TYPE a_total counter\na_total -1\n",  # negative counter
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n",  # family not contiguous / TYPE after samples
        "# TYPE a gauge\na one\n",  # bad value
        "# TYPE 1a gauge\n",  # bad name
    ],
)
def test_the_test_parser_rejects_malformed_exposition(text: str) -> None:
    with pytest.raises(ExpositionError):
        parse(text)


def scrape(url: str) -> dict[str, Family]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"] == CONTENT_TYPE
        return parse(response.read().decode("utf-8"))


def test_metrics_server_serves_get_metrics_only() -> None:
    server = MetricsServer(0, lambda: snapshot(connected=17))
    with server:
        assert server.port != 0
        assert scrape(server.url)["edgetally_fleet_devices"].value(state="connected") == 17
        base = server.url.removesuffix("/metrics")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/other", timeout=5)
        missing.value.close()
        assert missing.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as posted:
            urllib.request.urlopen(urllib.request.Request(server.url, data=b"x", method="POST"), timeout=5)
        posted.value.close()
        assert posted.value.code == 405


@pytest.mark.integration
def test_metrics_port_already_taken_is_a_clear_error(keys_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "devices", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(keys_dir), "--seed", "1",
            "--devices", "1", "--metrics-port", str(port), check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr


class HeldCloud:
    """Verifies batches like the cloud, but publishes receipts only once released."""

    def __init__(self, broker: BrokerProcess, registry: Registry, key: SigningKey) -> None:
        self.registry = registry
        self.key = key  # the cloud's signing key
        self.lock = threading.Lock()
        self.held: dict[str, dict[int, str]] = {}
        self.released = False
        self.client = stand_in_cloud_client(broker, "test-held-cloud", self._on_message, BATCH_FILTER)

    @property
    def batches(self) -> int:
        with self.lock:
            return sum(len(seqs) for seqs in self.held.values())

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        topic = parse_device_topic(message.topic)
        if topic is None or topic.kind != "batch":
            return
        batch = verify(message.payload, self.registry, topic_device=topic.device)
        with self.lock:
            self.held.setdefault(batch.body.device, {})[batch.body.seq] = batch.body_hash
            released = self.released
        if released:
            self._receipt(batch.body.election, batch.body.device)

    def _receipt(self, election: str, device: str) -> None:
        with self.lock:
            payload = signed_contiguous_receipt(election, device, self.held[device], self.key)
        info = self.client.publish(receipt_topic(election, device), payload, qos=1, retain=True)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS

    def release(self) -> None:
        with self.lock:
            self.released = True
            devices = list(self.held)
        for device in devices:
            self._receipt(self.registry.election.id, device)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def held_cloud(broker: BrokerProcess, registry: Registry, cloud_key: SigningKey) -> Iterator[HeldCloud]:
    cloud = HeldCloud(broker, registry, cloud_key)
    yield cloud
    cloud.close()


@pytest.mark.integration
def test_metrics_scraped_while_a_real_fleet_runs_match_its_final_summary(
    broker: BrokerProcess, keys_dir: Path, held_cloud: HeldCloud, tmp_path: Path, processes: list
) -> None:
    log, summary_file = tmp_path / "fleet.log", tmp_path / "summary.json"
    fleet = start_cli(
        "devices", "run", "--broker", broker.url, "--keys", str(keys_dir), "--seed", "9",
        "--devices", str(DEVICES), "--batches-per-device", str(BATCHES), "--connect-rate", "0",
        "--resend-after", "60", "--timeout", "60", "--summary", str(summary_file), "--json",
        "--metrics-port", "0", "--metrics-linger", "60",
        log=log,
    )  # fmt: skip
    processes.append(fleet)
    found = wait_until(lambda: re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", log.read_text()), 20, "the metrics URL")
    url = found.group(1)

    def batches(families: dict[str, Family], stage: str) -> float:
        family = families.get("edgetally_fleet_batches_total")  # absent until the first snapshot
        return -1.0 if family is None else family.value(stage=stage)

    # mid-run: every batch acked by the broker, none receipted (the cloud holds them back)
    total = DEVICES * BATCHES
    mid = wait_until(
        lambda: (f := scrape(url)) and batches(f, "acked") == total and f["edgetally_fleet_devices"].value(state="connected") == DEVICES and f,
        30,
        "every batch acked and every device connected, seen by a scrape",
    )  # fmt: skip
    assert batches(mid, "sent") == total and batches(mid, "receipted") == 0
    assert mid["edgetally_fleet_pending"].value() == total
    assert mid["edgetally_fleet_running"].value() == 1
    assert mid["edgetally_fleet_batches_planned"].value() == total
    assert sum(mid["edgetally_fleet_devices"].samples.values()) == DEVICES
    wait_until(lambda: held_cloud.batches == total, 20, "every batch at the cloud")

    held_cloud.release()
    summary = wait_until(
        lambda: (s := json.loads(summary_file.read_text()) if summary_file.exists() else {}) and not s.get("running") and s,
        30,
        "the final summary",
    )  # fmt: skip
    final = scrape(url)  # --metrics-linger keeps the final figures up after the run
    assert summary["ok"] and summary["receipted"] == total
    assert final["edgetally_fleet_running"].value() == 0
    assert batches(final, "sent") == summary["sent"] == total
    assert batches(final, "acked") == summary["acked"]
    assert batches(final, "receipted") == summary["receipted"]
    assert final["edgetally_fleet_pending"].value() == summary["pending"] == 0
    assert final["edgetally_fleet_publishes_total"].value() == summary["publishes"]
    assert final["edgetally_fleet_resends_total"].value() == summary["resends"]
    assert final["edgetally_fleet_reconnects_total"].value() == summary["reconnects"]
    assert final["edgetally_fleet_connect_failures_total"].value() == summary["connect_failures"]
    assert final["edgetally_fleet_connections_lost_total"].value() == summary["connections_lost"]
    assert final["edgetally_fleet_devices"].value(state="finished") == summary["devices"] == DEVICES
    assert final["edgetally_fleet_devices"].value(state="connected") == summary["connected"] == 0
    assert final["edgetally_fleet_behaviours_total"].samples == {} and summary["behaviours"] == {}

    fleet.send_signal(signal.SIGTERM)  # ends the linger early
    assert fleet.wait(10) == 0, log.read_text()[-2000:]
