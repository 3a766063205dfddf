"""Scenarios of several elections (edgetally/scenarios/elections.py): distinct synthetic elections,
and one verdict that fails naming the election where a check failed."""

from __future__ import annotations

from edgetally.scenarios.elections import combine, synthetic
from edgetally.scenarios.verdict import ScenarioVerdict
from edgetally.verdict import Check


def test_each_synthetic_election_has_its_own_id_and_device_ids() -> None:
    one, two = synthetic(1, 4), synthetic(2, 4)
    assert one.id != two.id
    assert len(one.devices) == len(two.devices) == 4
    assert not set(one.devices) & set(two.devices)  # TLS identities are device ids: unique per broker
    assert all(d.startswith("e01-") for d in one.devices)


def test_the_combined_verdict_fails_a_check_naming_only_the_elections_where_it_failed() -> None:
    def verdict(ledger_ok: bool, detail: str) -> ScenarioVerdict:
        return ScenarioVerdict((Check("ledger", ledger_ok, detail), Check("audit", True, "all hold")), (), 1.0, 3)

    combined = combine({"e01": verdict(True, "16 of 16"), "e02": verdict(False, "2 missing"), "e03": verdict(True, "16 of 16")})
    assert not combined.ok
    assert combined.check("ledger").detail == "e02: 2 missing"
    assert combined.check("audit").ok and combined.check("audit").detail.startswith("all 3 elections")
    assert combined.peak_buffer_depth == 3
