"""`edgetally cloud export --format nist-1500-100` as a real subprocess on a cloud database
filled through the real ledger (signed batches of the sample election), mid-count and
complete, on SQLite and PostgreSQL: valid against the vendored NIST v2 schema, and every
figure what `cloud results --json` prints."""

from __future__ import annotations

from typing import Any

from cloud.ledger.ledger import Ledger
from tests.cloud.export.support import (
    ballot_counts,
    count_status,
    export_nist,
    fill_complete,
    fill_mid_count,
    results_by_unit,
    schema_errors,
    vote_counts,
)
from tests.cloud.results_support import expected_for
from tests.cloud.support import Envelopes


def test_a_mid_count_export_is_valid_nist_v2_and_unofficial_partial(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    mid = fill_mid_count(ledger, envelopes)

    report = export_nist(db_url)

    assert schema_errors(report) == []
    assert report["@type"] == "ElectionResults.ElectionReport"
    assert report["Status"] == "unofficial-partial"
    status = count_status(report)
    assert status[mid.missing_finals] == "in-process"
    assert status[mid.silent] == "not-processed"
    for unit in election.ancestors(mid.missing_finals)[1:]:  # its county and the state
        assert status[unit] == "in-process"
    open_units = {mid.missing_finals, mid.silent, *election.ancestors(mid.missing_finals)}
    assert {u for u, s in status.items() if s != "completed"} == open_units
    root = next(g for g in report["GpUnit"] if g["@id"] == f"gpu:{election.root}")
    assert (root["SubUnitsReported"], root["TotalSubUnits"]) == (
        len(election.precincts) - 2,
        len(election.precincts),
    )


def test_a_complete_export_is_valid_nist_v2_with_every_unit_completed(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    fill_complete(ledger, envelopes)

    report = export_nist(db_url)

    assert schema_errors(report) == []
    # NIST's status for "everything counted, not yet certified" (it has no "pre-certified")
    assert report["Status"] == "unofficial-complete"
    assert count_status(report) == dict.fromkeys(election.units, "completed")
    for unit in (election.root, *election.units[election.root].children):  # as generated
        expected = expected_for(election, unit, list(election.devices))
        assert vote_counts(report)[unit] == expected["contests"]
        assert ballot_counts(report)[unit] == expected["ballots"]


def test_every_vote_count_and_ballot_count_is_what_cloud_results_json_prints(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    fill_mid_count(ledger, envelopes)

    report = export_nist(db_url)
    results = results_by_unit(db_url, election)

    assert vote_counts(report) == {unit: r["contests"] for unit, r in results.items()}
    assert ballot_counts(report) == {unit: r["ballots"] for unit, r in results.items()}
    for gpunit in report["GpUnit"]:
        unit = results[gpunit["@id"].removeprefix("gpu:")]
        if "TotalSubUnits" in gpunit:
            assert (gpunit["SubUnitsReported"], gpunit["TotalSubUnits"]) == (
                unit["precincts_reporting"],
                unit["precincts_total"],
            )
    assert sum(ballot_counts(report)[p.id] for p in election.precincts) > 0


def test_the_report_holds_the_unit_tree_and_every_id_it_refers_to(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    fill_mid_count(ledger, envelopes)

    report = export_nist(db_url)

    gpunits = {g["@id"]: g for g in report["GpUnit"]}
    assert list(gpunits) == [f"gpu:{u.id}" for u in election.walk()]  # parents first
    for unit in election.walk():
        gpunit = gpunits[f"gpu:{unit.id}"]
        assert gpunit["Type"] == unit.kind  # state, county, precinct: all NIST types
        assert gpunit["Name"]["Text"][0]["Content"] == unit.name
        assert gpunit.get("ComposingGpUnitIds", []) == [f"gpu:{c}" for c in unit.children]
        assert gpunit["VotersRegistered"] == election.registered(unit.id)
    [body] = report["Election"]
    assert body["ElectionScopeId"] == f"gpu:{election.root}"
    assert body["StartDate"] == body["EndDate"] == election.polls_close[:10]
    candidates = {c["@id"] for c in body["Candidate"]}
    referred: list[str] = []
    for contest in body["Contest"]:
        assert contest["ElectionDistrictId"] in gpunits
        for selection in contest["ContestSelection"]:
            referred += selection.get("CandidateIds", [])
            assert {v["GpUnitId"] for v in selection["VoteCounts"]} == set(gpunits)
    assert sorted(referred) == sorted(candidates)  # each candidate in exactly one selection
    ids = [x["@id"] for x in [*report["GpUnit"], *body["Candidate"], *body["Contest"]]]
    ids += [s["@id"] for c in body["Contest"] for s in c["ContestSelection"]]
    assert len(ids) == len(set(ids))


def test_candidate_contests_measures_and_write_ins_follow_the_election_model(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    fill_complete(ledger, envelopes)

    [body] = export_nist(db_url)["Election"]

    contests: dict[str, dict[str, Any]] = {c["@id"]: c for c in body["Contest"]}
    assert list(contests) == [f"contest:{c.id}" for c in election.contests]
    names = {c["@id"]: c["BallotName"]["Text"][0]["Content"] for c in body["Candidate"]}
    for contest in election.contests:
        got = contests[f"contest:{contest.id}"]
        assert got["Name"] == contest.name
        selections = got["ContestSelection"]
        assert [s["@id"] for s in selections] == [
            f"selection:{contest.id}:{ch.id}" for ch in contest.choices
        ]
        if contest.kind == "measure":
            assert got["@type"] == "ElectionResults.BallotMeasureContest"
            assert [s["Selection"]["Text"][0]["Content"] for s in selections] == [
                ch.name for ch in contest.choices
            ]
            continue
        assert got["@type"] == "ElectionResults.CandidateContest"
        assert got["VotesAllowed"] == 1
        for choice, selection in zip(contest.choices, selections, strict=True):
            assert selection["@type"] == "ElectionResults.CandidateSelection"
            assert selection["IsWriteIn"] is (choice.id == "write-in")
            [candidate] = selection["CandidateIds"]
            assert names[candidate] == choice.name
    kinds = {c.kind for c in election.contests}
    assert kinds == {"candidate", "measure"}  # the sample has both: both are exercised
    assert "Party" not in body  # the model names no parties


def test_two_exports_of_one_state_differ_only_in_their_generated_date(
    ledger: Ledger, envelopes: Envelopes, db_url: str
) -> None:
    fill_mid_count(ledger, envelopes)

    first, second = export_nist(db_url), export_nist(db_url)

    assert first["GeneratedDate"].endswith("Z")
    assert {**first, "GeneratedDate": None} == {**second, "GeneratedDate": None}
