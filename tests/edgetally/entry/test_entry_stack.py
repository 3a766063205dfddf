"""Manual entry through the real stack: the station publishes to a locked-down edge broker, the
gateway forwards, the cloud worker verifies the operators' signatures and counts; `cloud results`
ends with the sheets' exact figures, and a precinct reported by tabulator and by hand is flagged."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.election_file import load_election
from edgetally.stack import Stack, StackConfig
from protocol import provision
from tests.helpers import SAMPLE_ELECTION, wait_until

pytestmark = pytest.mark.integration

SHEET_A = {"ballots": 120, "counts": {"governor": {"alvarez": 50, "becker": 40, "chen": 20},
                                      "senate": {"okafor": 70, "novak": 45}, "measure-7": {"yes": 60, "no": 55}}}


def _with(sheet: dict[str, Any], contest: str, choice: str, n: int, ballots: int | None = None) -> dict[str, Any]:
    out = json.loads(json.dumps(sheet))
    out["counts"][contest][choice] = n
    if ballots is not None:
        out["ballots"] = ballots
    return out


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig(
        workdir=tmp_path / "stack", election_file=SAMPLE_ELECTION, seed=5, batches_per_device=3, devices=2,
        resend_after=1.0, fleet_timeout=90.0, embedded_brokers=False,
    )
    made = Stack(config)
    provision(load_election(SAMPLE_ELECTION), made.keys, operators=2, supervisors=1)
    try:
        made.start()
        yield made
    finally:
        made.stop()
        for broker in (made.edge, made.cloud_broker):
            broker.kill()


def entry(stack: Stack, tmp_path: Path, *args: str, sheet: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    extra: list[str] = []
    if sheet is not None:
        source = tmp_path / f"sheet-{abs(hash(json.dumps(sheet, sort_keys=True)))}.json"
        source.write_text(json.dumps(sheet))
        extra = ["--from", str(source)]
    return subprocess.run(
        [sys.executable, "-m", "edgetally", "--log-level", "WARNING", "entry", *args,
         "--keys", str(stack.keys), "--station", str(tmp_path / "station"), *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )


def precinct(stack: Stack, unit: str) -> dict[str, Any]:
    return stack._cli_json("cloud", "results", "--db", stack.db_url, "--unit", unit)


def _counted(stack: Stack, unit: str, ballots: int) -> dict[str, Any] | None:
    found = precinct(stack, unit)
    return found if found["ballots"] == ballots else None


def test_agree_disagree_resolve_and_correct_end_in_exact_results(stack: Stack, tmp_path: Path) -> None:
    broker = ["--broker", stack.edge.url]
    # agree: two operators, same figures -> one batch, counted
    first = entry(stack, tmp_path, "key", "--sheet", "S-001", "--precinct", "harbor-p01", "--operator", "operator-1", sheet=SHEET_A)
    assert first.returncode == 0, first.stderr
    assert "waiting for a second operator" in first.stdout
    second = entry(stack, tmp_path, "key", "--sheet", "S-001", "--precinct", "harbor-p01", "--operator", "operator-2", *broker, sheet=SHEET_A)
    assert second.returncode == 0, second.stderr
    assert "keyings agree; signed as manual-harbor-p01 seq 1" in second.stdout
    assert "sent: sheet S-001 as manual-harbor-p01 seq 1" in second.stdout
    got = wait_until(lambda: _counted(stack, "harbor-p01", 120), 30, "sheet S-001 in the results")
    assert got["contests"]["governor"] == {"alvarez": 50, "becker": 40, "chen": 20, "write-in": 0}
    assert got["contests"]["measure-7"] == {"yes": 60, "no": 55}
    assert got["sources_by_precinct"] == {"harbor-p01": "manual"}
    assert got["precincts_reporting"] == 1

    # disagree: nothing is sent; conflicts names the choice and both figures
    typo = _with(SHEET_A, "senate", "novak", 35)
    entry(stack, tmp_path, "key", "--sheet", "S-002", "--precinct", "harbor-p02", "--operator", "operator-1", sheet=SHEET_A)
    clash = entry(stack, tmp_path, "key", "--sheet", "S-002", "--precinct", "harbor-p02", "--operator", "operator-2", *broker, sheet=typo)
    assert clash.returncode == 1
    assert "the keyings differ; nothing sent" in clash.stdout
    shown = entry(stack, tmp_path, "conflicts", "--json")
    assert json.loads(shown.stdout) == [{
        "sheet": "S-002", "round": 0, "precinct": "harbor-p02", "operators": ["operator-1", "operator-2"],
        "differences": [{"contest": "senate", "choice": "novak", "figures": [45, 35]}],
    }]
    assert precinct(stack, "harbor-p02")["ballots"] == 0

    # resolve: the supervisor's figures and signature, then the batch
    resolved = entry(stack, tmp_path, "resolve", "--sheet", "S-002", "--supervisor", "supervisor-1", *broker, sheet=SHEET_A)
    assert resolved.returncode == 0, resolved.stderr
    assert "resolved by supervisor-1; signed as manual-harbor-p02 seq 1" in resolved.stdout
    got = wait_until(lambda: _counted(stack, "harbor-p02", 120), 30, "sheet S-002 in the results")
    assert got["contests"]["senate"] == {"okafor": 70, "novak": 45, "write-in": 0}

    # correction: a new signed batch of deltas with its reason; the sheet's figures are replaced
    fixed = _with(SHEET_A, "governor", "alvarez", 47, ballots=117)
    for operator in ("operator-1", "operator-2"):
        done = entry(stack, tmp_path, "correct", "--sheet", "S-001", "--reason", "alvarez misread", "--operator", operator, *broker, sheet=fixed)
        assert done.returncode == 0, done.stderr
    assert "signed as manual-harbor-p01 seq 2" in done.stdout
    got = wait_until(lambda: _counted(stack, "harbor-p01", 117), 30, "the correction in the results")
    assert got["contests"]["governor"]["alvarez"] == 47
    assert got["batches"] == 2
    state = stack._cli_json("cloud", "results", "--db", stack.db_url)
    assert state["ballots"] == 117 + 120 and state["rejections"] == 0
    audit = subprocess.run(
        [sys.executable, "-m", "edgetally", "cloud", "audit", "--db", stack.db_url, "--keys", str(stack.keys), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    report = json.loads(audit.stdout)
    # the operators' signatures verify with every envelope; only the silent tabulators lack a final
    failing = {c["name"]: c for c in report["checks"] if not c["ok"]}
    assert set(failing) == {"final batches"}, failing
    assert report["devices_without_final"] == [d for d in stack.registry.election.devices]
    assert next(c for c in report["checks"] if c["name"] == "signatures")["checked"] == 3
    # the audit checks the operators' signatures like the devices': against another key of
    # operator-2, every batch it co-signed fails, naming it
    other_keys = tmp_path / "other-keys"
    other_keys.mkdir()
    registry = json.loads((stack.keys / "registry.json").read_text())
    registry["operators"]["operator-2"] = {**registry["operators"]["supervisor-1"], "role": "operator"}
    (other_keys / "registry.json").write_text(json.dumps(registry))
    audit = subprocess.run(
        [sys.executable, "-m", "edgetally", "cloud", "audit", "--db", stack.db_url, "--keys", str(other_keys), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    report = json.loads(audit.stdout)
    assert next(c for c in report["checks"] if c["name"] == "signatures")["discrepancies"] == 2  # S-001 seq 1 and 2
    details = [d["detail"] for d in report["discrepancies"] if d["check"] == "signatures"]
    assert all("operator 'operator-2'" in d and "bad_operator_signature" in d for d in details), details


def test_precinct_reported_by_tabulator_and_by_hand_is_flagged(stack: Stack, tmp_path: Path) -> None:
    stack.start_fleet()  # harbor-p01-a and harbor-p02-a
    assert stack.fleet.wait(timeout=90) == 0, stack.fleet.tail()
    expected = stack.expected()
    wait_until(lambda: int(stack.results().get("batches", 0)) >= expected.batches, 30, "the fleet's batches")
    for operator in ("operator-1", "operator-2"):
        done = entry(stack, tmp_path, "key", "--sheet", "S-9", "--precinct", "harbor-p01", "--operator", operator,
                     "--broker", stack.edge.url, sheet=SHEET_A)
        assert done.returncode == 0, done.stderr
    got = wait_until(lambda: precinct(stack, "harbor-p01")["sources_by_precinct"] == {"harbor-p01": "both"}, 30, "both sources")
    assert got
    alerts = wait_until(lambda: [a for a in stack.alerts() if a["rule"] == "precinct-two-sources"], 30, "the alert")
    assert len(alerts) == 1
    assert "precinct harbor-p01 is reported by tabulators and by manual entry" in alerts[0]["message"]
    audit = subprocess.run(
        [sys.executable, "-m", "edgetally", "cloud", "audit", "--db", stack.db_url, "--keys", str(stack.keys), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert audit.returncode == 1
    report = json.loads(audit.stdout)
    assert next(c for c in report["checks"] if c["name"] == "sources")["discrepancies"] == 1
    detail = next(d for d in report["discrepancies"] if d["check"] == "sources")
    assert detail["precinct"] == "harbor-p01"
    assert "ballots tabulator" in detail["detail"] and "vs manual 120" in detail["detail"]


def test_forged_and_single_keyed_sheets_and_a_tabulator_entry_are_quarantined_with_their_reason(
    stack: Stack, tmp_path: Path
) -> None:
    from edgetally.entry.send import publish
    from edgetally.entry.state import PendingBatch
    from protocol import GENESIS_HASH, BatchBody, load_signing_key, parse_broker_url, seal
    from protocol.entry import Entry, Signature, sheet_message, sign_sheet
    from protocol.registry import load_operator_key

    counts = {"governor": {"alvarez": 5}}

    def body(device: str, precinct_id: str, *signers: str, forge: bool = False) -> BatchBody:
        message = sheet_message("sample-2026", precinct_id, "F-1", 5, counts)
        signatures = [sign_sheet(load_operator_key(stack.keys, s), s, message) for s in signers]
        if forge:  # operator-2 named, with its kid, over operator-1's signature
            signatures.append(Signature("operator-2", stack.registry.operators["operator-2"].kid, signatures[0].sig))
        return BatchBody(election="sample-2026", device=device, precinct=precinct_id, seq=1, prev=GENESIS_HASH,
                         issued_at="2026-11-03T21:00:00Z", ballots=5, counts=counts, entry=Entry("F-1", tuple(signatures)))

    cases = {
        "manual-harbor-p01": (body("manual-harbor-p01", "harbor-p01", "operator-1", "operator-1"), "not_double_keyed"),
        "manual-harbor-p02": (body("manual-harbor-p02", "harbor-p02", "operator-1", forge=True), "bad_operator_signature"),
        "harbor-p01-a": (body("harbor-p01-a", "harbor-p01", "operator-1", "operator-2"), "entry_not_allowed"),
    }
    batches = [
        PendingBatch(device, 1, "F-1", 0, seal(b, load_signing_key(stack.keys, device)).to_bytes())
        for device, (b, _) in cases.items()
    ]
    acked: list[PendingBatch] = []
    publish(parse_broker_url(stack.edge.url), stack.keys, "sample-2026", batches, acked.append)
    assert len(acked) == 3  # the broker takes them; the gateway refuses them

    def quarantined() -> dict[str, Any] | None:
        found = stack._cli_json("gateway", "buffer", "quarantine", "--buffer", str(stack.buffer_path))
        return found if found["total"] >= 3 else None

    found = wait_until(quarantined, 30, "three quarantined batches")
    assert {r["device"]: r["reason"] for r in found["rows"]} == {d: reason for d, (_, reason) in cases.items()}
    assert precinct(stack, "harbor-p01")["ballots"] == 0

