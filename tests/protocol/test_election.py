"""The election model: lookups over the unit tree, and errors that name the id and the problem."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from protocol import Election, ElectionModelError, RejectReason
from protocol.election import check_id, format_timestamp, parse_timestamp
from tests.protocol.builders import ELECTION, ELECTION_MAPPING


def test_precincts_devices_and_lookups() -> None:
    assert [p.id for p in ELECTION.precincts] == ["north-p1", "north-p2", "south-p1"]
    assert ELECTION.devices == ("north-p1-a", "north-p1-b", "north-p2-a", "south-p1-a")
    assert ELECTION.precinct_of("north-p1-b") == "north-p1"
    assert ELECTION.precinct_of("ghost") is None
    assert ELECTION.contest_ids == ("mayor", "measure-1")
    assert ELECTION.contest("measure-1") is not None
    assert ELECTION.contest("dogcatcher") is None
    measure = ELECTION.contest("measure-1")
    assert measure is not None and measure.kind == "measure" and measure.choice_ids == ("yes", "no")


def test_walk_is_depth_first_parents_before_children() -> None:
    assert [u.id for u in ELECTION.walk()] == [
        "tiny-state", "north", "north-p1", "north-p2", "south", "south-p1",
    ]
    assert [u.id for u in ELECTION.walk("south")] == ["south", "south-p1"]


def test_ancestors_and_registered_voters_roll_up() -> None:
    assert ELECTION.ancestors("north-p2") == ("north-p2", "north", "tiny-state")
    assert ELECTION.registered("north-p1") == 120
    assert ELECTION.registered("north") == 200
    assert ELECTION.registered("tiny-state") == 400
    assert ELECTION.units["north"].parent == "tiny-state"
    assert not ELECTION.units["north"].is_precinct


def test_to_mapping_then_from_mapping_is_the_same_election() -> None:
    again = Election.from_mapping(ELECTION.to_mapping())
    assert again == ELECTION
    assert again.devices == ELECTION.devices
    assert again.to_mapping() == ELECTION.to_mapping()


def test_sample_election_round_trips(sample_election: Election) -> None:
    assert Election.from_mapping(sample_election.to_mapping()) == sample_election


def test_choices_may_be_plain_strings_and_kind_defaults_to_candidate() -> None:
    data = copy.deepcopy(ELECTION_MAPPING)
    data["contests"][0] = {"id": "mayor", "name": "Mayor", "choices": ["ada", "bo"]}
    contest = Election.from_mapping(data).contest("mayor")
    assert contest is not None
    assert contest.kind == "candidate"
    assert [(c.id, c.name) for c in contest.choices] == [("ada", "ada"), ("bo", "bo")]


def _precinct(data: dict[str, Any], county: int, index: int) -> dict[str, Any]:
    return data["units"]["children"][county]["children"][index]  # type: ignore[no-any-return]


def _broken(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(ELECTION_MAPPING)
    edit(data)
    return data


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "duplicate contest id",
        lambda d: d["contests"].append(copy.deepcopy(d["contests"][0])),
        "contest 'mayor': duplicate contest id",
    ),
    (
        "duplicate choice id",
        lambda d: d["contests"][1]["choices"].append({"id": "yes", "name": "Yes again"}),
        "contest 'measure-1': duplicate choice 'yes'",
    ),
    (
        "duplicate unit id",
        lambda d: _precinct(d, 1, 0).update(id="north-p2"),
        "unit 'north-p2': duplicate unit id",
    ),
    (
        "precinct without devices",
        lambda d: _precinct(d, 0, 1).update(devices=[]),
        "unit 'north-p2': a precinct needs a non-empty list of devices",
    ),
    (
        "precinct with devices missing",
        lambda d: _precinct(d, 0, 1).pop("devices"),
        "unit 'north-p2': a precinct needs a non-empty list of devices",
    ),
    (
        "device in two precincts",
        lambda d: _precinct(d, 1, 0)["devices"].append("north-p1-b"),
        "unit 'south-p1': device 'north-p1-b' already belongs to precinct 'north-p1'",
    ),
    (
        "unknown contest kind",
        lambda d: d["contests"][1].update(kind="referendum"),
        "contest 'measure-1': kind must be one of ('candidate', 'measure'), got 'referendum'",
    ),
    (
        "bad polls_close timestamp",
        lambda d: d.update(polls_close="2026-11-03 20:00"),
        "election 'tiny-2026' polls_close: '2026-11-03 20:00' is not a timestamp",
    ),
    (
        "impossible polls_close date",
        lambda d: d.update(polls_close="2026-02-30T20:00:00Z"),
        "election 'tiny-2026' polls_close: '2026-02-30T20:00:00Z' is not a valid date and time",
    ),
    (
        "polls_close with non-ASCII digits",
        lambda d: d.update(polls_close="\uff12026-11-03T20:00:00Z"),
        "is not a timestamp",
    ),
    (
        "invalid election id",
        lambda d: d.update(id="bad id"),
        "election id: 'bad id' is not a valid id",
    ),
    (
        "id with a trailing newline",
        lambda d: _precinct(d, 0, 0)["devices"].append("north-p1-c\n"),
        "unit 'north-p1' device: 'north-p1-c\\n' is not a valid id",
    ),
    (
        "unit with both children and devices",
        lambda d: d["units"]["children"][0].update(devices=["x-1"]),
        "unit 'north': a unit has either children or devices, not both",
    ),
    (
        "negative registered voters",
        lambda d: _precinct(d, 0, 0).update(registered=-1),
        "unit 'north-p1': registered must be a non-negative integer, got -1",
    ),
    (
        "boolean registered voters",
        lambda d: _precinct(d, 0, 0).update(registered=True),
        "unit 'north-p1': registered must be a non-negative integer, got True",
    ),
    (
        "contest with one choice",
        lambda d: d["contests"][1].update(choices=["yes"]),
        "contest 'measure-1': needs at least two choices",
    ),
    ("no contests", lambda d: d.update(contests=[]), "contests: expected a non-empty list"),
    ("missing units", lambda d: d.pop("units"), "election: missing units"),
    (
        "empty election name",
        lambda d: d.update(name="  "),
        "election 'tiny-2026' name: expected a non-empty string",
    ),
]


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_election_is_refused_naming_the_id_and_the_problem(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(ElectionModelError) as caught:
        Election.from_mapping(_broken(edit))
    assert message in str(caught.value)
    assert caught.value.reason is RejectReason.ELECTION_MODEL


def test_an_election_must_be_a_mapping() -> None:
    with pytest.raises(ElectionModelError, match="an election must be a mapping"):
        Election.from_mapping(["not", "a", "mapping"])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["a", "A-1_b.c", "9" * 64])
def test_valid_ids(value: str) -> None:
    assert check_id(value, "x") == value


@pytest.mark.parametrize("value", ["", "-a", "_gateway", "a/b", "a+b", "a b", "é", "a\n", "9" * 65, 7, None])
def test_invalid_ids(value: object) -> None:
    with pytest.raises(ElectionModelError, match="is not a valid id"):
        check_id(value, "x")


def test_timestamps_round_trip_in_utc() -> None:
    moment = parse_timestamp("2026-11-03T20:01:00Z", "t")
    assert moment == datetime(2026, 11, 3, 20, 1, tzinfo=UTC)
    assert format_timestamp(moment) == "2026-11-03T20:01:00Z"
