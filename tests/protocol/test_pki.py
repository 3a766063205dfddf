"""The deployment's PKI: a CA, broker server certificates, client certificates named for the
client's MQTT identity; private keys 0600; nothing replaced unless forced."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol import KeyFileError
from protocol.pki import create_authority, issue, load_authority, verify_issued
from protocol.tls import Role, identity


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_broker_certificate_is_a_server_certificate_for_the_local_names_and_those_given(tmp_path: Path) -> None:
    ca = create_authority(tmp_path / "pki")
    issued = issue(ca, Role.BROKER, "edge", hosts=("edge.county.example", "10.0.0.7"))
    cert = verify_issued(ca, issued.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "edge.county.example"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.7"),
    ]  # fmt: skip
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]


@pytest.mark.parametrize("role", [Role.GATEWAY, Role.CLOUD, Role.DEVICE])
def test_a_client_certificate_names_the_clients_mqtt_identity(tmp_path: Path, role: Role) -> None:
    ca = create_authority(tmp_path / "pki")
    issued = issue(ca, role, "harbor-p01-a")
    cert = verify_issued(ca, issued.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity(role, "harbor-p01-a")
    assert issued.name == f"{role.value}-harbor-p01-a"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


def test_private_keys_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    ca = create_authority(tmp_path / "pki")
    issued = issue(ca, Role.GATEWAY, "gw1")
    assert _mode(tmp_path / "pki" / "ca.key") == 0o600
    assert _mode(issued.key) == 0o600
    assert _mode(tmp_path / "pki") == 0o700
    assert _mode(issued.cert) == 0o644  # certificates are public


def test_nothing_is_replaced_unless_forced(tmp_path: Path) -> None:
    ca = create_authority(tmp_path / "pki")
    issued = issue(ca, Role.GATEWAY, "gw1")
    ca_key, gw_key = (tmp_path / "pki" / "ca.key").read_bytes(), issued.key.read_bytes()
    with pytest.raises(KeyFileError, match=r"ca\.key already exists; pass --force"):
        create_authority(tmp_path / "pki")
    with pytest.raises(KeyFileError, match=r"gateway-gw1\.key already exists; pass --force"):
        issue(ca, Role.GATEWAY, "gw1")
    assert (tmp_path / "pki" / "ca.key").read_bytes() == ca_key
    assert issued.key.read_bytes() == gw_key
    assert issue(ca, Role.GATEWAY, "gw1", force=True).key.read_bytes() != gw_key


def test_a_certificate_from_another_ca_is_told_apart(tmp_path: Path) -> None:
    ours, theirs = create_authority(tmp_path / "ours"), create_authority(tmp_path / "theirs")
    foreign = issue(theirs, Role.DEVICE, "harbor-p01-a")
    with pytest.raises(KeyFileError, match="was not issued by the CA"):
        verify_issued(ours, foreign.cert)


def test_the_ca_loads_back_and_signs_more(tmp_path: Path) -> None:
    create_authority(tmp_path / "pki")
    ca = load_authority(tmp_path / "pki")
    verify_issued(ca, issue(ca, Role.CLOUD, "cloud2").cert)
    with pytest.raises(KeyFileError, match=r"no CA in .*run `edgetally pki init`"):
        load_authority(tmp_path / "nothing")


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 65, "../ca"])
def test_a_bad_name_is_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    ca = create_authority(tmp_path / "pki")
    with pytest.raises(KeyFileError, match="not a valid name"):
        issue(ca, Role.DEVICE, bad)
    assert not (tmp_path / "pki" / "clients").exists()
