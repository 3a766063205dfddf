from __future__ import annotations

from typing import Any

from devices.generator import expected_totals
from edgetally.verdict import compare
from protocol import Election


def _results_from(expected: Any) -> dict[str, Any]:
    return {
        "ballots": expected.ballots,
        "batches": expected.batches,
        "contests": {c: dict(ch) for c, ch in expected.contests.items()},
        "ballots_by_precinct": dict(expected.by_precinct),
        "duplicates": 7,
        "rejections": 0,
    }


def test_identical_totals_match(sample_election: Election) -> None:
    expected = expected_totals(sample_election, 3, 2)
    verdict = compare(sample_election, expected, _results_from(expected))
    assert verdict.ok


def test_one_vote_off_is_a_mismatch_naming_the_choice(sample_election: Election) -> None:
    expected = expected_totals(sample_election, 3, 2)
    results = _results_from(expected)
    results["contests"]["governor"]["chen"] += 1
    verdict = compare(sample_election, expected, results)
    assert not verdict.ok
    assert verdict.to_mapping()["mismatches"] == [
        {"contest": "governor", "choice": "chen", "expected": expected.contests["governor"]["chen"], "actual": expected.contests["governor"]["chen"] + 1}
    ]


def test_missing_batch_fails_even_when_totals_happen_to_match(sample_election: Election) -> None:
    expected = expected_totals(sample_election, 3, 2)
    results = _results_from(expected)
    results["batches"] -= 1
    verdict = compare(sample_election, expected, results)
    assert not verdict.ok
    assert [c.name for c in verdict.checks if not c.ok] == ["every batch in the ledger exactly once"]


def test_unconfirmed_devices_and_undrained_buffer_fail(sample_election: Election) -> None:
    expected = expected_totals(sample_election, 3, 2)
    verdict = compare(
        sample_election,
        expected,
        _results_from(expected),
        fleet={"ok": False, "devices": 91, "confirmed_devices": 90},
        buffer={"states": {"pending": 2, "inflight": 0, "quarantined": 0}},
    )
    failed = {c.name for c in verdict.checks if not c.ok}
    assert failed == {"devices confirmed by receipt", "gateway buffer drained"}


def test_an_alert_of_the_rules_fails_the_verdict_naming_the_rule(sample_election: Election) -> None:
    expected = expected_totals(sample_election, 1, 3)
    results = _results_from(expected)
    assert compare(sample_election, expected, results, alerts=[]).ok
    verdict = compare(
        sample_election, expected, results, alerts=[{"rule": "rate-spike", "device": "x"}]
    )
    assert not verdict.ok
    [failed] = [c for c in verdict.checks if not c.ok]
    assert (failed.name, failed.detail) == ("no anomaly alert", "1 alerts (rate-spike)")
