"""The SERVED check (edgetally/scenarios/served.py): what the results service shows at the end
against what the database counted. The real run is the shipped `uplink-outage` scenario
(`serve: true`) in test_shipped.py; here, that the check fails when the two differ."""

from __future__ import annotations

from edgetally.scenarios.served import check_served

COUNTED = {
    "ballots": 1200, "batches": 40, "contests": {"governor": {"a": 700, "b": 500}},
    "precincts_reporting": 3, "precincts_total": 4, "devices_final": 9, "turnout": 0.5,
}  # fmt: skip


def test_the_same_totals_pass() -> None:
    assert check_served(dict(COUNTED), COUNTED).ok


def test_a_service_behind_the_database_or_showing_other_votes_fails_naming_the_figure() -> None:
    behind = check_served({**COUNTED, "batches": 39}, COUNTED)
    assert not behind.ok and "batches: shows 39, counted 40" in behind.detail
    other = check_served({**COUNTED, "contests": {"governor": {"a": 701, "b": 499}}}, COUNTED)
    assert not other.ok and "contests" in other.detail


def test_a_service_that_never_answered_fails() -> None:
    check = check_served(None, COUNTED)
    assert not check.ok and "never answered" in check.detail
