"""The audit passes on a clean ledger and fails, naming what it concerns, when the database is
altered by hand (each alteration separately), on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from cloud._exceptions import ConfigError
from cloud.audit.audit import AuditReport, run_audit
from cloud.ledger.ledger import Ledger
from protocol import Registry, Totals, provision
from tests.cloud.results_support import BATCHES, fill, scalar, sql
from tests.cloud.support import Envelopes
from tests.helpers import run_cli

DEVICE = "harbor-p02-b"  # in a precinct of two devices


def failing(report: AuditReport) -> set[str]:
    return {c.name for c in report.checks if not c.ok}


def concerns(report: AuditReport, check: str) -> list[tuple[str | None, int | None]]:
    return [(d.device, d.seq) for d in report.check(check).listed]


@pytest.fixture
def filled(ledger: Ledger, envelopes: Envelopes) -> Ledger:
    """Every device of the election, all its batches, plus some duplicates."""
    sent = fill(ledger, envelopes)
    ledger.record(sent[:5] + sent[200:203])
    return ledger


def test_audit_passes_on_a_clean_ledger(
    filled: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    report = run_audit(engine, registry)

    assert report.ok, report.discrepancies
    assert report.ledger_rows == len(envelopes.election.devices) * BATCHES
    assert report.check("signatures").checked == report.ledger_rows
    assert report.check("final totals").checked == len(envelopes.election.devices)
    assert report.check("windows").checked == BATCHES
    assert (report.missing_seqs, report.devices_without_final) == ({}, [])


def test_an_altered_body_fails_its_signature_naming_device_and_seq(
    filled: Ledger, engine: Engine, registry: Registry
) -> None:
    body = scalar(engine, "SELECT body FROM ledger WHERE device = :d AND seq = 2", d=DEVICE)
    ballots = scalar(engine, "SELECT ballots FROM ledger WHERE device = :d AND seq = 2", d=DEVICE)
    altered = body.replace(f'"ballots":{ballots},', f'"ballots":{ballots + 1},')
    assert altered != body
    sql(engine, "UPDATE ledger SET body = :b WHERE device = :d AND seq = 2", b=altered, d=DEVICE)

    report = run_audit(engine, registry)

    assert concerns(report, "signatures") == [(DEVICE, 2)]
    assert "bad_signature" in report.check("signatures").listed[0].detail
    # Its hash no longer matches its column nor the prev of seq 3; its ballots the column.
    assert concerns(report, "hash chain") == [(DEVICE, 2), (DEVICE, 3)]
    assert concerns(report, "columns") == [(DEVICE, 2)]
    assert not report.ok


def test_an_altered_signature_fails_naming_device_and_seq(
    filled: Ledger, engine: Engine, registry: Registry
) -> None:
    other = scalar(engine, "SELECT sig FROM ledger WHERE device = :d AND seq = 3", d=DEVICE)
    sql(engine, "UPDATE ledger SET sig = :s WHERE device = :d AND seq = 2", s=other, d=DEVICE)

    report = run_audit(engine, registry)

    assert failing(report) == {"signatures"}
    assert concerns(report, "signatures") == [(DEVICE, 2)]
    assert "bad_signature" in report.check("signatures").listed[0].detail


def test_an_altered_tally_fails_naming_precinct_contest_and_choice(
    filled: Ledger, engine: Engine, registry: Registry
) -> None:
    sql(
        engine,
        "UPDATE tallies SET votes = votes + 1"
        " WHERE precinct = 'harbor-p02' AND contest = 'governor' AND choice = 'chen'",
    )

    report = run_audit(engine, registry)

    assert failing(report) == {"tallies"}
    [d] = report.check("tallies").listed
    assert (d.precinct, d.contest, d.choice) == ("harbor-p02", "governor", "chen")
    assert "the ledger adds up to" in d.detail


def test_an_altered_precinct_ballot_count_fails_naming_the_precinct(
    filled: Ledger, engine: Engine, registry: Registry
) -> None:
    sql(engine, "UPDATE precinct_ballots SET ballots = ballots - 3 WHERE precinct = 'mesa-p04'")

    report = run_audit(engine, registry)

    assert failing(report) == {"precinct ballots"}
    assert [d.precinct for d in report.check("precinct ballots").listed] == ["mesa-p04"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE window_tallies SET votes = votes + 5 WHERE precinct = 'pine-p03'"
        " AND contest = 'senate' AND choice = 'novak' AND window_start = ("
        "SELECT MIN(window_start) FROM window_tallies)",
        "UPDATE window_ballots SET ballots = ballots + 5 WHERE precinct = 'pine-p03'"
        " AND window_start = (SELECT MIN(window_start) FROM window_ballots)",
    ],
    ids=["votes", "ballots"],
)
def test_an_altered_window_fails_naming_the_window_and_precinct(
    filled: Ledger, engine: Engine, registry: Registry, statement: str
) -> None:
    assert sql(engine, statement) == 1

    report = run_audit(engine, registry)

    assert failing(report) == {"windows"}
    [d] = report.check("windows").listed
    assert (d.window, d.precinct) == ("2026-11-03T20:01:00Z", "pine-p03")
    assert "stored" in d.detail


def test_a_deleted_seq_is_a_gap_named_by_device_and_range(
    filled: Ledger, engine: Engine, registry: Registry
) -> None:
    assert sql(engine, "DELETE FROM ledger WHERE device = :d AND seq IN (2, 3)", d=DEVICE) == 2

    report = run_audit(engine, registry)

    assert concerns(report, "seq gaps") == [(DEVICE, 2)]
    assert report.check("seq gaps").listed[0].detail == "missing seq 2-3"
    assert report.missing_seqs == {DEVICE: ["2-3"]}
    # What the deleted rows held is still in the stored figures, and the totals miss it.
    assert {"tallies", "precinct ballots", "windows", "device state", "final totals"} <= failing(
        report
    )
    assert {"signatures", "hash chain", "columns"}.isdisjoint(failing(report))


def test_final_totals_that_the_deltas_do_not_add_up_to_fail_naming_device_and_seq(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    fill(ledger, envelopes, skip=[(DEVICE, BATCHES)])
    final = envelopes.bodies(DEVICE, BATCHES)[-1]
    assert final.totals is not None
    counts = {c: dict(ch) for c, ch in final.totals.counts.items()}
    counts["measure-7"]["yes"] += 2
    wrong = dataclasses.replace(final, totals=Totals(final.totals.ballots + 1, counts))
    ledger.record([envelopes.inbound(wrong)])  # signed with the device's real key: accepted

    report = run_audit(engine, registry)

    assert failing(report) == {"final totals"}
    listed = report.check("final totals").listed
    assert [(d.device, d.seq, d.contest, d.choice) for d in listed] == [
        (DEVICE, BATCHES, None, None),
        (DEVICE, BATCHES, "measure-7", "yes"),
    ]
    assert "ballots" in listed[0].detail


def test_devices_without_a_final_batch_are_listed(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    silent = envelopes.election.devices[-1]
    devices = [d for d in envelopes.election.devices if d != silent]
    fill(ledger, envelopes, devices, skip=[(DEVICE, BATCHES)])

    report = run_audit(engine, registry)

    assert failing(report) == {"final batches"}
    assert report.devices_without_final == sorted([DEVICE, silent])
    details = {d.device: d.detail for d in report.check("final batches").listed}
    assert details[DEVICE] == f"no final batch (highest seq held: {BATCHES - 1})"
    assert details[silent] == "no final batch (it never sent a batch)"


def test_altered_columns_and_device_state_are_found(
    filled: Ledger, engine: Engine, registry: Registry
) -> None:
    sql(engine, "UPDATE ledger SET ballots = ballots + 1 WHERE device = :d AND seq = 1", d=DEVICE)
    sql(engine, "UPDATE devices SET final_seq = NULL WHERE device = :d", d=DEVICE)

    report = run_audit(engine, registry)

    assert failing(report) == {"columns", "device state"}
    assert concerns(report, "columns") == [(DEVICE, 1)]
    assert "ballots" in report.check("columns").listed[0].detail
    assert "final_seq None (ledger: 4)" in report.check("device state").listed[0].detail


def test_the_listing_is_limited_but_every_discrepancy_is_counted(
    filled: Ledger, engine: Engine, registry: Registry
) -> None:
    sql(engine, "UPDATE tallies SET votes = votes + 1 WHERE contest = 'governor'")

    report = run_audit(engine, registry, limit=3)

    tallies = report.check("tallies")
    assert len(tallies.listed) == 3
    assert tallies.failures == 48 * 4  # every precinct, every governor choice


def test_a_registry_of_another_election_definition_is_refused(
    filled: Ledger, engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    election = dataclasses.replace(registry.election, name="Another definition")
    other = provision(election, tmp_path / "keys")

    with pytest.raises(ConfigError, match="not the one the database holds"):
        run_audit(engine, other)


# -- the command --------------------------------------------------------------------------


def test_audit_command_exits_0_on_a_clean_ledger_and_1_naming_device_and_seq(
    filled: Ledger, engine: Engine, db_url: str, keys_dir: Path
) -> None:
    args = ("--log-level", "WARNING", "cloud", "audit", "--db", db_url, "--keys", str(keys_dir))
    clean = run_cli(*args)
    assert "AUDIT PASSED" in clean.stdout
    sql(engine, "DELETE FROM ledger WHERE device = :d AND seq = 3", d=DEVICE)

    table = run_cli(*args, check=False)
    data = run_cli(*args, "--json", check=False)

    assert table.returncode == data.returncode == 1
    assert f"device={DEVICE} seq=3" in table.stdout
    assert f"{DEVICE}: 3" in table.stdout
    assert "AUDIT FAILED" in table.stdout
    report = json.loads(data.stdout)
    assert report["ok"] is False
    assert report["missing_seqs"] == {DEVICE: ["3"]}
    gaps = [d for d in report["discrepancies"] if d["check"] == "seq gaps"]
    assert [(d["device"], d["seq"]) for d in gaps] == [(DEVICE, 3)]
    assert {c["name"]: c["ok"] for c in report["checks"]}["signatures"] is True


def test_audit_command_without_keys_fails_with_one_clear_line(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    proc = run_cli("cloud", "audit", "--db", db_url, "--keys", str(tmp_path / "none"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"edgetally cloud audit: error: --keys {tmp_path / 'none'}: no such directory"
    ]
