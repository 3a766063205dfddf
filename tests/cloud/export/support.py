"""Helpers for the export tests: the sample election counted part way or to the end through
the real ledger, the vendored NIST v2 schema, `cloud export` and `cloud results` as real CLI
subprocesses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from cloud.ledger.ledger import Ledger
from protocol import Election
from tests.cloud.results_support import BATCHES, fill
from tests.cloud.support import Envelopes
from tests.helpers import run_cli

QUIET = ("--log-level", "WARNING")
SCHEMA_PATH = Path(__file__).parent / "data" / "NIST_V2_election_results_reporting.json"


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


def schema_errors(document: Any) -> list[str]:
    """Every way ``document`` breaks the NIST v2 schema, with the validator of the draft the
    schema's ``$schema`` names (draft-04), formats (date, date-time) checked."""
    validator_class = jsonschema.validators.validator_for(schema())
    assert validator_class is jsonschema.Draft4Validator  # the schema's own "$schema"
    validator = validator_class(schema(), format_checker=validator_class.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(document)
    ]


@dataclass(frozen=True)
class MidCount:
    """Which precincts a mid-count fill left in which state."""

    missing_finals: str  # its devices sent every batch but the final one
    silent: str  # its devices sent nothing


def fill_mid_count(ledger: Ledger, envelopes: Envelopes) -> MidCount:
    """The first county's first precinct without finals, its second precinct silent, every
    other device complete."""
    election = envelopes.election
    county = election.units[election.units[election.root].children[0]]
    late, silent = (election.units[p] for p in county.children[:2])
    devices = [d for d in election.devices if d not in silent.devices]
    fill(ledger, envelopes, devices, skip=[(d, BATCHES) for d in late.devices])
    return MidCount(missing_finals=late.id, silent=silent.id)


def fill_complete(ledger: Ledger, envelopes: Envelopes) -> None:
    fill(ledger, envelopes)


def export(db_url: str, fmt: str, *extra: str) -> str:
    return run_cli(*QUIET, "cloud", "export", "--db", db_url, "--format", fmt, *extra).stdout


def export_nist(db_url: str, *extra: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(export(db_url, "nist-1500-100", *extra))
    return loaded


def results_by_unit(db_url: str, election: Election) -> dict[str, dict[str, Any]]:
    """What `cloud results --json` prints for every unit: ``ballots``, ``contests`` and
    precincts reporting/total, read from the root's and every non-precinct unit's output
    (a unit's children are in its ``children``)."""
    out: dict[str, dict[str, Any]] = {}
    for unit in election.walk():
        if unit.is_precinct:
            continue
        got = json.loads(
            run_cli(*QUIET, "cloud", "results", "--db", db_url, "--unit", unit.id, "--json").stdout
        )
        out[unit.id] = {k: got[k] for k in ("ballots", "contests", "precincts_reporting", "precincts_total")}
        for child in got["children"]:
            out[child["id"]] = {
                k: child[k] for k in ("ballots", "contests", "precincts_reporting", "precincts_total")
            }
    assert set(out) == set(election.units)
    return out


def unit_of(gpunit_id: str) -> str:
    assert gpunit_id.startswith("gpu:")
    return gpunit_id.removeprefix("gpu:")


def vote_counts(report: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """unit -> contest -> choice -> Count, from every contest selection's VoteCounts."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    [election] = report["Election"]
    for contest in election["Contest"]:
        contest_id = contest["@id"].removeprefix("contest:")
        for selection in contest["ContestSelection"]:
            choice = selection["@id"].removeprefix(f"selection:{contest_id}:")
            for count in selection["VoteCounts"]:
                assert count["Type"] == "total"
                unit = out.setdefault(unit_of(count["GpUnitId"]), {})
                assert choice not in unit.get(contest_id, {})  # one count per unit and choice
                unit.setdefault(contest_id, {})[choice] = count["Count"]
    return out


def ballot_counts(report: dict[str, Any]) -> dict[str, int]:
    [election] = report["Election"]
    out: dict[str, int] = {}
    for counts in election["BallotCounts"]:
        assert counts["Type"] == "total"
        out[unit_of(counts["GpUnitId"])] = counts["BallotsCast"]
    return out


def count_status(report: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for gpunit in report["GpUnit"]:
        [status] = gpunit["CountStatus"]
        assert status["Type"] == "total"
        out[unit_of(gpunit["@id"])] = status["Status"]
    return out
