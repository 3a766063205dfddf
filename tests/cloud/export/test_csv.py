"""`edgetally cloud export --format csv` as a real subprocess: one row per unit x contest x
choice under the documented header, every figure what `cloud results --json` prints."""

from __future__ import annotations

import csv
import io

from cloud.export.table import HEADER
from cloud.ledger.ledger import Ledger
from tests.cloud.export.support import export, fill_mid_count, results_by_unit
from tests.cloud.support import Envelopes


def read_rows(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(reader.fieldnames or ()) == HEADER
    return list(reader)


def test_the_csv_has_the_documented_header_and_a_row_per_unit_and_choice(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    fill_mid_count(ledger, envelopes)

    text = export(db_url, "csv")
    rows = read_rows(text)

    assert text.splitlines()[0] == (
        "unit_id,unit_name,unit_type,parent_id,contest_id,contest_name,contest_kind,"
        "choice_id,choice_name,votes,ballots,precincts_reporting,precincts_total,status"
    )
    choices = sum(len(c.choices) for c in election.contests)
    assert len(rows) == len(election.units) * choices
    keys = [(r["unit_id"], r["contest_id"], r["choice_id"]) for r in rows]
    assert len(set(keys)) == len(keys)
    assert keys[:choices] == [
        (election.root, c.id, ch.id) for c in election.contests for ch in c.choices
    ]
    for row in rows:
        unit = election.units[row["unit_id"]]
        assert (row["unit_name"], row["unit_type"], row["parent_id"]) == (
            unit.name, unit.kind, unit.parent or "",
        )  # fmt: skip
        contest = election.contest(row["contest_id"])
        assert contest is not None
        assert (row["contest_name"], row["contest_kind"]) == (contest.name, contest.kind)
        names = {ch.id: ch.name for ch in contest.choices}
        assert row["choice_name"] == names[row["choice_id"]]
    assert "Measure 7: Library Bond" in {r["contest_name"] for r in rows}  # quoted by csv


def test_the_csv_votes_ballots_and_precincts_reporting_are_the_results(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    mid = fill_mid_count(ledger, envelopes)

    rows = read_rows(export(db_url, "csv"))
    results = results_by_unit(db_url, election)

    for row in rows:
        unit = results[row["unit_id"]]
        assert int(row["votes"]) == unit["contests"][row["contest_id"]][row["choice_id"]]
        assert int(row["ballots"]) == unit["ballots"]
        assert (int(row["precincts_reporting"]), int(row["precincts_total"])) == (
            unit["precincts_reporting"],
            unit["precincts_total"],
        )
    precincts = {p.id for p in election.precincts}
    for contest in election.contests:  # the precinct rows add up to the root's
        for choice in contest.choice_ids:
            mine = [r for r in rows if (r["contest_id"], r["choice_id"]) == (contest.id, choice)]
            assert sum(int(r["votes"]) for r in mine if r["unit_id"] in precincts) == int(
                next(r["votes"] for r in mine if r["unit_id"] == election.root)
            )
    status = {r["unit_id"]: r["status"] for r in rows}
    assert (status[mid.missing_finals], status[mid.silent]) == ("in-process", "not-processed")
