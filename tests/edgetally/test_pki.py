"""`edgetally pki init` / `pki issue`: what an operator runs to provision a deployment's TLS."""

from __future__ import annotations

from pathlib import Path

from protocol.pki import Role, cert_paths, load_authority, verify_issued
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
