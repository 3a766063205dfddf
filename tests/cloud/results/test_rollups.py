"""Results roll up the reporting-unit tree: every unit exact against the generator's expected
totals, on SQLite and PostgreSQL; precincts reporting; turnout; a tree of any depth."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from cloud._exceptions import ResultsError
from cloud.ledger.ledger import Ledger
from cloud.results.results import load_results
from cloud.results.rollups import PrecinctFigures, roll_up
from protocol import Election
from tests.cloud.results_support import BATCHES, devices_of, expected_for, fill
from tests.cloud.support import Envelopes


def test_every_unit_holds_exactly_what_its_devices_sent(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    election = envelopes.election
    devices = list(election.devices)
    sent = fill(ledger, envelopes, devices)
    ledger.record(sent[:6])  # duplicates change nothing

    for unit in election.walk():
        got = load_results(engine, unit_id=unit.id).to_mapping()
        expected = expected_for(election, unit.id, devices)
        assert {k: got[k] for k in expected} == expected, unit.id
        registered = election.registered(unit.id)
        assert got["registered"] == registered
        assert got["turnout"] == pytest.approx(got["ballots"] / registered)
        precincts = [u for u in election.walk(unit.id) if u.is_precinct]
        assert got["precincts_reporting"] == got["precincts_total"] == len(precincts)
        assert got["devices_final"] == got["devices_total"] == len(devices_of(election, unit.id))
        assert got["unit"] == {
            "id": unit.id,
            "name": unit.name,
            "kind": unit.kind,
            "parent": unit.parent,
        }
        children = got["children"]
        assert [c["id"] for c in children] == list(unit.children)
        if children:  # a unit is exactly the sum of its children
            assert sum(c["ballots"] for c in children) == got["ballots"]
            assert sum(c["registered"] for c in children) == got["registered"]
            for contest, choices in got["contests"].items():
                for choice, n in choices.items():
                    assert sum(c["contests"][contest][choice] for c in children) == n
    root = load_results(engine).to_mapping()
    assert root["unit"]["id"] == election.root
    assert root["duplicates"] == 6


def test_a_precinct_reports_only_when_all_its_devices_sent_their_final_batch(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    election = envelopes.election
    two = next(p for p in election.precincts if len(p.devices) >= 2)
    other = next(p for p in election.precincts if p.parent != two.parent and len(p.devices) == 1)
    late = two.devices[0]  # everything but its final batch
    silent = other.devices[0]  # nothing at all
    devices = [d for d in election.devices if d != silent]
    fill(ledger, envelopes, devices, skip=[(late, BATCHES)])
    not_reporting = {two.id, other.id}

    for unit in election.walk():
        got = load_results(engine, unit_id=unit.id).to_mapping()
        below = [u.id for u in election.walk(unit.id) if u.is_precinct]
        assert got["precincts_total"] == len(below)
        assert got["precincts_reporting"] == len(set(below) - not_reporting), unit.id
        mine = devices_of(election, unit.id)
        assert got["devices_final"] == len(set(mine) - {late, silent}), unit.id
    precinct = load_results(engine, unit_id=two.id).to_mapping()
    assert (precinct["precincts_reporting"], precinct["precincts_total"]) == (0, 1)
    assert precinct["children"] == []
    county = load_results(engine, unit_id=str(two.parent)).to_mapping()
    entry = next(c for c in county["children"] if c["id"] == two.id)
    assert (entry["precincts_reporting"], entry["devices_final"]) == (0, len(two.devices) - 1)
    # The silent device's precinct has no accepted batch: no ballots, turnout 0.
    assert other.id not in load_results(engine).to_mapping()["ballots_by_precinct"]
    silent_precinct = load_results(engine, unit_id=other.id).to_mapping()
    assert (silent_precinct["ballots"], silent_precinct["turnout"]) == (0, 0.0)


def test_an_unknown_unit_is_a_clear_error(ledger: Ledger, engine: Engine) -> None:
    with pytest.raises(ResultsError, match="has no reporting unit 'atlantis'"):
        load_results(engine, unit_id="atlantis")


DEEP = {
    "id": "deep-2026",
    "name": "Deep",
    "polls_close": "2026-11-03T20:00:00Z",
    "contests": [{"id": "m", "name": "M", "choices": ["yes", "no"]}],
    "units": {
        "id": "nation",
        "kind": "nation",
        "children": [
            {
                "id": "north",
                "kind": "state",
                "children": [
                    {
                        "id": "n-county",
                        "kind": "county",
                        "children": [
                            {"id": "p1", "kind": "precinct", "registered": 100, "devices": ["a", "b"]},
                            {"id": "p2", "kind": "precinct", "registered": 0, "devices": ["c"]},
                        ],
                    }
                ],
            },
            {"id": "p3", "kind": "precinct", "registered": 50, "devices": ["d"]},
        ],
    },
}  # fmt: skip


def test_roll_up_sums_a_tree_of_any_depth_and_counts_reporting_precincts() -> None:
    election = Election.from_mapping(DEEP)
    figures = {
        "p1": PrecinctFigures({"m": {"yes": 30, "no": 10}}, 41, 3, True, devices_final=1),
        "p2": PrecinctFigures({"m": {"yes": 2}}, 2, 1, True, devices_final=1),
        "p3": PrecinctFigures({"m": {"no": 20}}, 20, 2, True, devices_final=1),
        "elsewhere": PrecinctFigures({"m": {"yes": 999}}, 999, 9, True, devices_final=5),
    }
    rollups = roll_up(election, figures)

    assert rollups["n-county"].contests == rollups["north"].contests == {"m": {"yes": 32, "no": 10}}
    nation = rollups["nation"]
    assert nation.contests == {"m": {"yes": 32, "no": 30}}
    assert (nation.ballots, nation.batches, nation.registered) == (63, 6, 150)
    assert (nation.precincts_reporting, nation.precincts_total) == (2, 3)  # p1 has 1 of 2
    assert (nation.devices_final, nation.devices_total) == (3, 4)
    assert nation.turnout == pytest.approx(63 / 150)
    assert rollups["p2"].turnout is None  # nobody registered
    assert nation.ballots_by_precinct == {"p1": 41, "p2": 2, "p3": 20}
    empty = roll_up(election, {})["nation"]
    assert (empty.ballots, empty.precincts_reporting, empty.ballots_by_precinct) == (0, 0, {})
    assert empty.contests == {"m": {"yes": 0, "no": 0}}
