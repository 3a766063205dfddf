from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgetally.brokers import (
    BrokerError,
    BrokerProcess,
    BrokerSettings,
    ephemeral_port_range,
    free_port,
    mosquitto_config,
)
from protocol import Registry, batch_topic
from protocol.tls import ClientTls, Role, client_context
from tests.helpers import alive, children_of, edgetally_cmd, run_cli, wait_until
from tests.support import wire


def test_config_never_drops_queued_messages(tmp_path: Path) -> None:
    text = mosquitto_config(1883, tmp_path, BrokerSettings())
    assert "max_queued_messages 0" in text.splitlines()
    assert "persistence true" in text.splitlines()
    assert "listener 1883 127.0.0.1" in text.splitlines()


def _session_client(
    port: int, client_id: str, received: list[bytes], topic: str, flags: list[bool],
    subscribed: threading.Event | None = None, tls: ClientTls | None = None,
) -> mqtt.Client:  # fmt: skip
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
    if tls is not None:  # a locked broker names the session for the certificate
        client.tls_set_context(client_context(tls))
    if subscribed is not None:  # set before the network loop starts: a SUBACK can come at once
        client.on_subscribe = lambda *_: subscribed.set()

    def on_connect(c: mqtt.Client, _u: object, f: mqtt.ConnectFlags, _rc: object, _p: object) -> None:
        flags.append(f.session_present)
        c.subscribe(topic, 1)

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, m: received.append(m.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


@pytest.mark.integration
def test_persistent_session_and_its_queue_survive_a_clean_broker_restart(
    broker_factory: Callable[..., BrokerProcess], registry: Registry
) -> None:
    broker = broker_factory("edge")
    # The gateway's queue of a device's batches: a gateway stand-in's persistent session, a
    # device publishing (each with its own certificate on the locked broker).
    device = registry.election.devices[0]
    topic = batch_topic(registry.election.id, device)
    gateway = wire.current().gateway()
    received: list[bytes] = []
    flags: list[bool] = []
    subscribed = threading.Event()
    sub = _session_client(broker.port, "persistent-sub", received, topic, flags, subscribed, gateway)
    assert subscribed.wait(10)
    sub.disconnect()
    sub.loop_stop()

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    wire.secure(pub, broker.url, Role.DEVICE, device)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    infos = [pub.publish(topic, f"m{i}".encode(), qos=1) for i in range(1500)]
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()

    broker.stop()  # SIGTERM: Mosquitto writes its persistence file
    broker.start()
    sub = _session_client(broker.port, "persistent-sub", received, topic, flags, tls=gateway)
    try:
        # More than Mosquitto's default max_queued_messages (1000): none may be dropped.
        wait_until(lambda: len(received) >= 1500, 20, "1500 queued messages after restart")
        assert flags[-1] is True
        assert len(set(received)) == 1500
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_edgetally_broker_refuses_to_run_open_unless_told_plain(tmp_path: Path) -> None:
    proc = run_cli("broker", "--dir", str(tmp_path / "b"), check=False, timeout=30)
    assert proc.returncode == 1
    assert "needs --pki DIR and --keys DIR (or --plain" in proc.stderr


def test_edgetally_broker_runs_locked_down_and_stops_its_broker_on_sigterm(
    tmp_path: Path, keys_dir: Path, registry: Registry, processes: list[subprocess.Popen[bytes]]
) -> None:
    pki = tmp_path / "pki"
    run_cli("pki", "init", "--out", str(pki))
    port = free_port()
    out = tmp_path / "broker.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            edgetally_cmd("broker", "--kind", "edge", "--port", str(port), "--pki", str(pki), "--keys", str(keys_dir), "--dir", str(tmp_path / "b")),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    processes.append(proc)
    wait_until(lambda: b"listening" in out.read_bytes(), 20, "the broker to say it listens")
    assert f"mqtts://127.0.0.1:{port}: TLS, client certificates, ACL" in out.read_text()
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "require_certificate true" in conf
    acl = (tmp_path / "b" / "edge.acl").read_text()
    assert f"user device-{registry.election.devices[0]}" in acl and "user gateway-gw1" in acl
    # A plain MQTT client gets no session: the listener speaks TLS only.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04anon")
        raw.settimeout(2)  # a plain listener answers a CONNECT in milliseconds; TLS just waits for a handshake
        try:
            answer = raw.recv(4)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert answer != b"\x20\x02\x00\x00"
    mosquitto = children_of(proc.pid)
    assert len(mosquitto) == 1
    proc.send_signal(signal.SIGTERM)  # the command stops its broker on the way out, as on Ctrl-C
    assert proc.wait(20) == 0
    assert not any(alive(pid) for pid in mosquitto)  # not left orphaned, holding the port
    # A clean stop: Mosquitto took the SIGTERM itself (it used to inherit it blocked, was killed
    # 10 s later, and the store on disk was only its last autosave).
    assert "terminating" in (tmp_path / "b" / "mosquitto.log").read_text()
    assert (tmp_path / "b" / "mosquitto.db").is_file()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_free_ports_are_distinct_and_outside_the_range_outgoing_connections_take() -> None:
    low, high = ephemeral_port_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(not (low <= port <= high) for port in ports)
    for port in ports[:5]:  # each is bindable now
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_broker_on_a_port_something_else_holds_is_refused_naming_the_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)  # answers TCP: a readiness probe alone would take it for the broker
        port = holder.getsockname()[1]
        broker = BrokerProcess(tmp_path / "b", name="edge", port=port, embedded=False)
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
            broker.start()
        assert not broker.running
