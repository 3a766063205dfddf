"""`edgetally cloud results [--unit ID] [--windows] [--json]` and `cloud settings` as real
subprocesses, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy.engine import Engine

from cloud.ledger.ledger import Ledger
from tests.cloud.results_support import BATCHES, expected_for, fill
from tests.cloud.support import Envelopes
from tests.helpers import run_cli

QUIET = ("--log-level", "WARNING")


def test_results_of_a_county_as_json_and_as_tables(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    county = election.units[election.units[election.root].children[0]]
    late = election.units[county.children[0]].devices[0]
    devices = list(election.devices)
    fill(ledger, envelopes, devices, skip=[(late, BATCHES)])

    got = json.loads(
        run_cli(*QUIET, "cloud", "results", "--db", db_url, "--unit", county.id, "--json").stdout
    )
    table = run_cli(*QUIET, "cloud", "results", "--db", db_url, "--unit", county.id).stdout

    expected = expected_for(election, county.id, devices)  # then take the missing batch off
    missing = envelopes.bodies(late, BATCHES)[-1]
    expected["ballots"] -= missing.ballots
    expected["ballots_by_precinct"][missing.precinct] -= missing.ballots
    for contest, choices in missing.counts.items():
        for choice, n in choices.items():
            expected["contests"][contest][choice] -= n
    expected["batches"] -= 1
    assert {k: got[k] for k in expected} == expected
    assert got["unit"]["id"] == county.id
    assert (got["precincts_reporting"], got["precincts_total"]) == (
        len(county.children) - 1,
        len(county.children),
    )
    assert got["registered"] == election.registered(county.id)
    assert got["turnout"] == got["ballots"] / got["registered"]
    assert [c["id"] for c in got["children"]] == list(county.children)
    assert got["children"][0]["precincts_reporting"] == 0
    for key in ("contests", "ballots", "batches", "duplicates", "rejections", "devices_final"):
        assert key in got
    assert county.name in table and f"[{county.kind} {county.id}]" in table
    assert f"{len(county.children) - 1} of {len(county.children)}" in table  # reporting
    assert "Units in " + county.name in table
    for child in county.children:
        assert child in table
    for contest in election.contests:
        assert f"{contest.name} [{contest.id}]" in table


def test_results_of_an_unknown_unit_fail_with_one_clear_line(
    ledger: Ledger, engine: Engine, db_url: str
) -> None:
    proc = run_cli(*QUIET, "cloud", "results", "--db", db_url, "--unit", "atlantis", check=False)

    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(
        "edgetally cloud results: error: election 'sample-2026' has no reporting unit 'atlantis'"
    )


def test_results_windows_show_a_sparkline_tables_and_json(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, db_url: str
) -> None:
    fill(ledger, envelopes, envelopes.devices(10))
    args = (*QUIET, "cloud", "results", "--db", db_url, "--windows")

    table = run_cli(*args).stdout
    got = json.loads(run_cli(*args, "--unit", "harbor", "--json").stdout)

    assert "60 s windows on issued_at" in table
    assert any(set(line.strip()) <= set("▁▂▃▄▅▆▇█") and len(line.strip()) == BATCHES
               for line in table.splitlines())  # fmt: skip
    assert "Ballots per 60 s window" in table and "2026-11-03T20:04:00Z" in table
    assert "Governor [governor] per window" in table
    assert (got["unit"], got["window_seconds"]) == ("harbor", 60)
    assert [w["start"] for w in got["windows"]] == [
        f"2026-11-03T20:0{k}:00Z" for k in range(1, BATCHES + 1)
    ]


def test_settings_show_and_change_the_window_width(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, db_url: str
) -> None:
    fill(ledger, envelopes, envelopes.devices(5))

    assert "window_seconds = 60" in run_cli(*QUIET, "cloud", "settings", "--db", db_url).stdout
    changed = run_cli(*QUIET, "cloud", "settings", "--db", db_url, "--window-seconds", "300")
    got = json.loads(
        run_cli(*QUIET, "cloud", "results", "--db", db_url, "--windows", "--json").stdout
    )
    refused = run_cli(
        *QUIET, "cloud", "settings", "--db", db_url, "--window-seconds", "0", check=False
    )

    assert "windows rebuilt from 20 ledger rows" in changed.stdout
    assert "window_seconds = 300" in changed.stdout
    assert got["window_seconds"] == 300
    assert [(w["start"], w["batches"]) for w in got["windows"]] == [("2026-11-03T20:00:00Z", 20)]
    assert refused.returncode == 1
    assert "--window-seconds must be between 1 and 86400" in refused.stderr
