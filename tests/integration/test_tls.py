"""Certificates from `edgetally pki init` on a real Mosquitto TLS listener that requires a client
certificate: ours connect under their identity; none, another CA's or an expired one is refused."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgetally.brokers import free_port, mosquitto_binary, wait_for_port
from protocol.pki import Role, cert_paths, create_authority, issue, load_authority
from tests.helpers import run_cli

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
TIMEOUT_S = 10.0

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    run_cli("pki", "init", "--out", str(tmp_path / "pki"))
    return tmp_path / "pki"


@pytest.fixture
def tls_broker(pki: Path, tmp_path: Path) -> Iterator[int]:
    """Mosquitto with one TLS listener: certificate required, its common name the username."""
    port = free_port()
    cert, key = cert_paths(pki, Role.BROKER, "edge")
    conf = tmp_path / "tls.conf"
    conf.write_text(
        ("user root\n" if os.geteuid() == 0 else "")  # as edgetally.brokers does: keys are ours, 0600
        + f"listener {port} 127.0.0.1\nallow_anonymous false\ncafile {pki / 'ca.crt'}\n"
        f"certfile {cert}\nkeyfile {key}\nrequire_certificate true\nuse_identity_as_username true\n"
        f"persistence false\nlog_dest file {tmp_path / 'tls.log'}\n"
    )
    proc = subprocess.Popen([str(mosquitto_binary()), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, TIMEOUT_S, proc)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT_S)


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
