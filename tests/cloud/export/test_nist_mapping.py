"""How election models other than the sample map onto NIST v2: unit kinds NIST does not list,
the election type read from the name, write-ins by name, nothing counted yet. The report is
built from the rollups of no figures (no database needed for what is pure mapping)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cloud.export.export import ExportData
from cloud.export.nist import election_type, nist_report
from cloud.results.rollups import roll_up
from protocol import Election
from tests.cloud.export.support import count_status, schema_errors

GENERATED = datetime(2027, 5, 4, 21, 30, tzinfo=UTC)


def city_election(name: str) -> Election:
    return Election.from_mapping({
        "id": "city-2027",
        "name": name,
        "polls_close": "2027-05-04T20:00:00Z",
        "contests": [
            {"id": "mayor", "name": "Mayor", "kind": "candidate", "choices": [
                {"id": "ada", "name": "Ada"}, {"id": "wi", "name": "Write In"}]},
            {"id": "q1", "name": "Question 1", "kind": "measure", "choices": ["yes", "no"]},
        ],
        "units": {"id": "city", "name": "The City", "kind": "city", "children": [
            {"id": "d1", "name": "District 1", "kind": "district", "children": [
                {"id": "p1", "kind": "precinct", "registered": 10, "devices": ["p1-a"]}]}]},
    })  # fmt: skip


def report_of(election: Election) -> dict[str, Any]:
    return nist_report(ExportData(election, roll_up(election, {})), GENERATED)


def test_a_unit_kind_nist_does_not_list_is_other_with_its_kind_as_other_type() -> None:
    report = report_of(city_election("City Primary Election 2027"))

    assert schema_errors(report) == []
    types = {g["@id"]: (g["Type"], g.get("OtherType")) for g in report["GpUnit"]}
    assert types == {
        "gpu:city": ("city", None),
        "gpu:d1": ("other", "district"),
        "gpu:p1": ("precinct", None),
    }


def test_nothing_counted_is_unofficial_partial_with_every_unit_not_processed() -> None:
    report = report_of(city_election("City Primary Election 2027"))

    assert report["Status"] == "unofficial-partial"
    assert count_status(report) == dict.fromkeys(["city", "d1", "p1"], "not-processed")
    assert report["GeneratedDate"] == "2027-05-04T21:30:00Z"
    [body] = report["Election"]
    assert all(c["Count"] == 0 for c in body["Contest"][0]["ContestSelection"][0]["VoteCounts"])


def test_a_choice_named_write_in_is_a_write_in_selection() -> None:
    [body] = report_of(city_election("City Primary Election 2027"))["Election"]

    mayor = body["Contest"][0]
    assert [s["IsWriteIn"] for s in mayor["ContestSelection"]] == [False, True]


def test_the_election_type_is_read_from_its_name_else_other() -> None:
    assert election_type("Sample State General Election 2026") == "general"
    assert election_type("City Primary Election 2027") == "primary"
    assert election_type("Special Election for District 4") == "special"
    assert election_type("Mayoral Runoff") == "runoff"
    assert election_type("Town Meeting Vote") == "other"

    [body] = report_of(city_election("Town Meeting Vote"))["Election"]

    assert (body["Type"], body["OtherType"]) == ("other", "not stated in the election model")
    assert schema_errors(report_of(city_election("Town Meeting Vote"))) == []
