"""Rule outputs on a locked-down wire: a cloud worker may republish under ``edgetally-out/`` (the
cloud broker's ACL grants it, and monitors read it), and `cloud run --pki` refuses a rules file
that republishes anywhere else, before it starts: Mosquitto would refuse each such publish and
close the worker's connection."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgetally.brokers import BrokerProcess
from protocol.tls import ClientTls, client_context
from tests.helpers import run_cli
from tests.support.wire import TestWire

pytestmark = pytest.mark.integration
TIMEOUT_S = 20


def _client(port: int, tls_for: ClientTls, client_id: str) -> tuple[mqtt.Client, threading.Event]:
    ready = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.tls_set_context(client_context(tls_for))
    client.on_connect = lambda *_: ready.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(TIMEOUT_S), "no connection"
    return client, ready


def test_a_cloud_worker_may_republish_under_edgetally_out_and_monitors_read_it(
    broker_factory: Callable[..., BrokerProcess], test_wire: TestWire
) -> None:
    cloud_broker = broker_factory("cloud")
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    watcher, _ = _client(cloud_broker.port, test_wire.monitor(), "watcher")
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    watcher.subscribe("edgetally-out/#", qos=1)
    assert subscribed.wait(TIMEOUT_S)
    worker, _ = _client(cloud_broker.port, test_wire.cloud(), "worker")
    try:
        worker.publish("edgetally-out/alerts/d1", b'{"rule": "x"}', qos=1).wait_for_publish(TIMEOUT_S)
        assert got.get(timeout=TIMEOUT_S) == ("edgetally-out/alerts/d1", b'{"rule": "x"}')
    finally:
        for client in (worker, watcher):
            client.disconnect()
            client.loop_stop()


def test_cloud_run_on_mqtts_refuses_a_republish_outside_edgetally_out_naming_the_rule(
    tmp_path: Path, keys_dir: Path, test_wire: TestWire
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: tally\n    sql: SELECT * FROM 'edgetally/v1/+/+/batch'\n    actions: [{ledger: {}}]\n"
        "  - name: loud\n    sql: SELECT * FROM 'edgetally/v1/+/+/batch'\n"
        "    actions: [{republish: {topic: 'alerts/${device}', qos: 1}}]\n"
    )
    proc = run_cli(
        "cloud", "run", "--broker", "mqtts://127.0.0.1:1", "--pki", str(test_wire.pki),
        "--db", f"sqlite:///{tmp_path / 'c.db'}", "--keys", str(keys_dir), "--rules", str(rules), check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "rule 'loud': republish topic 'alerts/${device}' is outside edgetally-out/" in proc.stderr
