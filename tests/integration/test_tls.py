"""Certificates from `edgetally pki init` on a real Mosquitto TLS listener that requires a client
certificate: ours connect under their identity; none, another CA's or an expired one is refused.
With the ACL from `edgetally pki acl`, a device touches only its own topics and nobody takes
over another client's session by its client id."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetally.brokers import free_port, mosquitto_binary, wait_for_port
from protocol import Registry, batch_topic, receipt_topic
from protocol.pki import create_authority, issue, load_authority
from protocol.tls import Role, cert_paths
from tests.helpers import run_cli

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
TIMEOUT_S = 10.0

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    run_cli("pki", "init", "--out", str(tmp_path / "pki"))
    return tmp_path / "pki"


@contextlib.contextmanager
def _tls_mosquitto(pki: Path, workdir: Path, *extra: str) -> Iterator[int]:
    """Mosquitto with one TLS listener on a free port: a certificate from ``pki`` required, its
    common name the username, plus ``extra`` lines; killed (SIGKILL) and reaped on the way out."""
    port = free_port()
    cert, key = cert_paths(pki, Role.BROKER, "edge")
    lines = [
        *(["user root"] if os.geteuid() == 0 else []),  # as edgetally.brokers does: keys are ours, 0600
        f"listener {port} 127.0.0.1", "allow_anonymous false", f"cafile {pki / 'ca.crt'}",
        f"certfile {cert}", f"keyfile {key}", "require_certificate true", "use_identity_as_username true",
        "persistence false", f"log_dest file {workdir / 'mosquitto.log'}", *extra,
    ]  # fmt: skip
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([str(mosquitto_binary()), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, TIMEOUT_S, proc)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT_S)


@pytest.fixture
def tls_broker(pki: Path, tmp_path: Path) -> Iterator[int]:
    with _tls_mosquitto(pki, tmp_path) as port:
        yield port


def _connect_packet(client_id: str) -> bytes:
    ident = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(ident).to_bytes(2, "big") + ident
    return bytes([0x10, len(body)]) + body


def _mqtt_connect(port: int, ca: Path, cert: Path | None, key: Path | None) -> bytes:
    """Open TLS to the broker, send CONNECT, return what the broker answers (b"" if it hangs up)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(_connect_packet("probe"))
                return conn.recv(4)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_a_client_with_our_certificate_is_accepted(pki: Path, tls_broker: int) -> None:
    cert, key = cert_paths(pki, Role.GATEWAY, "gw1")
    assert _mqtt_connect(tls_broker, pki / "ca.crt", cert, key) == CONNACK_ACCEPTED


def test_a_client_without_a_certificate_is_refused(pki: Path, tls_broker: int) -> None:
    assert _mqtt_connect(tls_broker, pki / "ca.crt", None, None) != CONNACK_ACCEPTED


def test_a_certificate_from_another_ca_is_refused(pki: Path, tls_broker: int, tmp_path: Path) -> None:
    rogue = issue(create_authority(tmp_path / "rogue"), Role.GATEWAY, "gw1")
    assert _mqtt_connect(tls_broker, pki / "ca.crt", rogue.cert, rogue.key) != CONNACK_ACCEPTED


def test_an_expired_certificate_is_refused(pki: Path, tls_broker: int, tmp_path: Path) -> None:
    ca = load_authority(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-gw1")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "expired.crt", tmp_path / "expired.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    assert _mqtt_connect(tls_broker, pki / "ca.crt", cert_path, key_path) != CONNACK_ACCEPTED


def test_the_broker_is_checked_against_our_ca_too(pki: Path, tls_broker: int, tmp_path: Path) -> None:
    """A client that trusts only another CA does not talk to our broker (no MQTT is sent)."""
    other = create_authority(tmp_path / "other")
    cert, key = cert_paths(pki, Role.GATEWAY, "gw1")
    assert _mqtt_connect(tls_broker, other.cert_path, cert, key) == b""


# -- the edge broker locked down: TLS, identities from certificates, the generated ACL ----------
class _Client:
    """A paho client over TLS with a certificate, driven synchronously with bounded waits."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, client_id: str, *, clean: bool = True) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put([int(r.value) for r in rcs])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(TIMEOUT_S):
            self.client.loop_stop()  # no network thread left behind by a failed test
            raise AssertionError(f"{client_id} did not connect")

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=TIMEOUT_S)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(TIMEOUT_S)

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def locked_edge(pki: Path, keys_dir: Path, tmp_path: Path) -> Iterator[tuple[int, Registry]]:
    registry = Registry.load(keys_dir)
    acl = tmp_path / "edge.acl"
    run_cli("pki", "acl", "--keys", str(keys_dir), "--broker", "edge", "--out", str(acl))
    ca = load_authority(pki)
    for device in sorted(registry.devices)[:2]:
        issue(ca, Role.DEVICE, device)
    with _tls_mosquitto(pki, tmp_path, "use_username_as_clientid true", f"acl_file {acl}") as port:
        yield port, registry


def _client(pki: Path, port: int, role: Role, ident: str, client_id: str | None = None, **kw: bool) -> _Client:
    cert, key = cert_paths(pki, role, ident)
    return _Client(port, pki / "ca.crt", cert, key, client_id or f"test-{ident}", **kw)


def test_a_device_cannot_publish_as_another_device(pki: Path, locked_edge: tuple[int, Registry]) -> None:
    port, registry = locked_edge
    election = registry.election.id
    mine, theirs = sorted(registry.devices)[:2]
    gateway = _client(pki, port, Role.GATEWAY, "gw1")
    device = _client(pki, port, Role.DEVICE, mine)
    try:
        assert gateway.subscribe(f"edgetally/v1/{election}/+/batch") == [1]
        device.publish(batch_topic(election, theirs), b"forged")  # the broker drops it
        device.publish(batch_topic(election, mine), b"own")  # delivered after anything sent before it
        got = gateway.next_message()
        assert (got.topic, got.payload) == (batch_topic(election, mine), b"own")
        assert gateway.messages.empty()
    finally:
        device.close()
        gateway.close()


def test_a_device_subscribed_to_everything_receives_only_its_own_receipts(
    pki: Path, locked_edge: tuple[int, Registry]
) -> None:
    """Mosquitto 2.0 grants a subscription to ``#`` but delivers only what the ACL lets it read."""
    port, registry = locked_edge
    election = registry.election.id
    mine, theirs = sorted(registry.devices)[:2]
    gateway = _client(pki, port, Role.GATEWAY, "gw1")
    spy = _client(pki, port, Role.DEVICE, mine)
    try:
        spy.subscribe("#")
        spy.subscribe(receipt_topic(election, theirs))
        gateway.publish(receipt_topic(election, theirs), b"theirs")
        gateway.publish(receipt_topic(election, mine), b"mine")  # delivered after anything before it
        got = spy.next_message()
        assert (got.topic, got.payload) == (receipt_topic(election, mine), b"mine")
        assert spy.messages.empty()
    finally:
        spy.close()
        gateway.close()


def test_nobody_takes_over_the_gateways_session_by_its_client_id(pki: Path, locked_edge: tuple[int, Registry]) -> None:
    port, registry = locked_edge
    election = registry.election.id
    gateway = _client(pki, port, Role.GATEWAY, "gw1", "edgetally-gw-gw1", clean=False)
    device = sorted(registry.devices)[0]
    rogue = _client(pki, port, Role.DEVICE, device, "edgetally-gw-gw1")  # the broker names it for its certificate
    try:
        assert gateway.subscribe(f"edgetally/v1/{election}/+/batch") == [1]  # the gateway's session still answers
        rogue.publish(batch_topic(election, device), b"from the rogue's own identity")
        assert gateway.next_message().payload == b"from the rogue's own identity"
        assert gateway.client.is_connected()
    finally:
        rogue.close()
        gateway.close()
