"""`edgetally pki init` / `pki issue`: what an operator runs to provision a deployment's TLS."""

from __future__ import annotations

import stat
from pathlib import Path

from protocol import Registry
from protocol.pki import load_authority, verify_issued
from protocol.tls import Role, cert_paths
from tests.helpers import run_cli


def test_init_writes_a_ca_and_a_certificate_per_broker_gateway_and_worker(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    shown = run_cli("pki", "init", "--out", str(out), "--broker", "edge", "--broker", "cloud",
                    "--gateway", "gw1", "--gateway", "gw2", "--cloud", "cloud1").stdout  # fmt: skip
    ca = load_authority(out)
    for role, ident in [(Role.BROKER, "edge"), (Role.BROKER, "cloud"), (Role.GATEWAY, "gw1"),
                        (Role.GATEWAY, "gw2"), (Role.CLOUD, "cloud1")]:  # fmt: skip
        verify_issued(ca, cert_paths(out, role, ident)[0])
        assert (ident if role is Role.BROKER else f"{role.value}-{ident}") in shown


def test_init_again_is_refused_in_one_line_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    run_cli("pki", "init", "--out", str(out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = run_cli("pki", "init", "--out", str(out), check=False)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [f"error: {out / 'ca.key'} already exists; pass --force to replace it"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_issue_adds_a_certificate_from_the_existing_ca(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    run_cli("pki", "init", "--out", str(out))
    run_cli("pki", "issue", "--dir", str(out), "--role", "gateway", "--id", "gw9")
    verify_issued(load_authority(out), cert_paths(out, Role.GATEWAY, "gw9")[0])
    missing = run_cli("pki", "issue", "--dir", str(tmp_path / "none"), "--role", "gateway", "--id", "gw9", check=False)
    assert missing.returncode == 1 and "no CA in" in missing.stderr


def test_devices_provision_with_a_ca_writes_each_devices_client_certificate_beside_its_key(tmp_path: Path) -> None:
    pki, keys = tmp_path / "pki", tmp_path / "keys"
    run_cli("pki", "init", "--out", str(pki))
    run_cli("devices", "provision", "--out", str(keys), "--pki", str(pki))
    ca = load_authority(pki)
    registry = Registry.load(keys)
    for device in registry.devices:
        cert, key = cert_paths(keys, Role.DEVICE, device)
        assert verify_issued(ca, cert).subject.rfc4514_string() == f"CN=device-{device}"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (keys / "ca.crt").read_bytes() == (pki / "ca.crt").read_bytes()
    first = sorted(registry.devices)[0]
    kept = cert_paths(keys, Role.DEVICE, first)[1].read_bytes()
    run_cli("devices", "provision", "--out", str(keys), "--pki", str(pki))  # again: keys and certificates kept
    assert cert_paths(keys, Role.DEVICE, first)[1].read_bytes() == kept


def test_devices_provision_with_a_missing_ca_makes_nothing(tmp_path: Path) -> None:
    done = run_cli("devices", "provision", "--out", str(tmp_path / "keys"), "--pki", str(tmp_path / "none"), check=False)
    assert done.returncode == 2 and "no CA in" in done.stderr  # devices commands exit 2 on bad input
    assert not (tmp_path / "keys").exists()
