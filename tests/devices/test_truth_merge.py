"""merge_truths: the truth files of a sharded fleet, merged, are the whole fleet's truth."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from devices.behaviours import assign, profile_from_specs
from devices.fleet.config import FleetConfig
from devices.fleet.fleet import Fleet
from devices.shards import pick
from devices.truth import build_truth, merge_truths
from protocol import BrokerAddress, Registry

SEED = 4
BATCHES = 4
SPECS = ["tampered=2", "wrong_key=1", "after_final=1", "silent=1", "duplicate=1", "replay=1", "lossy=2"]


def _truth(keys_dir: Path, devices: tuple[str, ...], everyone: tuple[str, ...]) -> dict[str, Any]:
    """build_truth of a fleet of ``devices``, behaviours drawn over ``everyone`` (as devices run does)."""
    registry = Registry.load(keys_dir)
    assigned = assign(everyone, profile_from_specs(SPECS), SEED)
    config = FleetConfig(
        broker=BrokerAddress("127.0.0.1", 1),
        keys=keys_dir,
        seed=SEED,
        batches_per_device=BATCHES,
        devices=devices,
        behaviours={d: b for d, b in assigned.items() if d in devices},
    )
    fleet = Fleet(config, registry)
    fleet.prepare()
    return build_truth(fleet)


def _without_publish_counters(truth: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(truth)
    for entry in out["devices"].values():
        entry.pop("published", None)
        entry.pop("resends", None)
    return out


@pytest.fixture(scope="module")
def fleet_truths(keys_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    everyone = tuple(Registry.load(keys_dir).election.devices[:20])
    whole = _truth(keys_dir, everyone, everyone)
    shards = [_truth(keys_dir, pick(everyone, (k, 3)), everyone) for k in range(3)]
    return whole, shards


def test_merged_shards_equal_the_whole_fleets_truth(
    fleet_truths: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    whole, shards = fleet_truths
    assert all(s["expected"]["ballots"] < whole["expected"]["ballots"] for s in shards)
    assert len({b for s in shards for b in s["behaviours"].values()}) >= 6  # misbehaviours in play
    merged = merge_truths(shards)
    assert _without_publish_counters(merged) == _without_publish_counters(whole)
    assert merged["expected"] == whole["expected"]  # added up, to the last precinct and reason
    assert list(merged["expected"]["ballots_by_precinct"]) == sorted(merged["expected"]["ballots_by_precinct"])
    assert merge_truths(list(reversed(shards))) == merged  # the order of the files does not matter


def test_one_truth_merges_to_itself_and_the_inputs_are_left_alone(
    fleet_truths: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    whole, shards = fleet_truths
    before = copy.deepcopy(shards)
    assert merge_truths([whole]) == whole
    merged = merge_truths(shards)
    merged["expected"]["ballots"] += 1
    merged["devices"][next(iter(merged["devices"]))]["accept"].clear()
    assert shards == before


def test_truths_of_different_runs_do_not_merge(
    fleet_truths: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, shards = fleet_truths
    for key, value in (("seed", SEED + 1), ("election", "other"), ("version", 1), ("batches_per_device", 9)):
        other = copy.deepcopy(shards[1])
        other[key] = value
        with pytest.raises(ValueError, match=rf"differ in '{key}'.*\(truth 2\)"):
            merge_truths([shards[0], other])
    missing = copy.deepcopy(shards[1])
    del missing["seed"]
    with pytest.raises(ValueError, match="'seed': 4 \\(truth 1\\) vs absent"):
        merge_truths([shards[0], missing])


def test_shards_must_hold_disjoint_devices(fleet_truths: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    whole, shards = fleet_truths
    device = next(iter(shards[2]["devices"]))
    with pytest.raises(ValueError, match=rf"device {device} is in truth 1 and truth 2"):
        merge_truths([whole, shards[2]])


def test_expected_totals_that_do_not_add_up_to_the_devices_are_refused(
    fleet_truths: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, shards = fleet_truths
    edited = copy.deepcopy(shards[0])
    edited["expected"]["ballots"] += 7
    with pytest.raises(ValueError, match="expected 'ballots' do not add up"):
        merge_truths([edited, shards[1]])
    contest = next(iter(edited["expected"]["contests"]))
    edited = copy.deepcopy(shards[0])
    edited["expected"]["contests"][contest]["write-in"] = 1
    with pytest.raises(ValueError, match="expected 'contests' do not add up"):
        merge_truths([edited, shards[1]])


def test_nothing_to_merge_is_an_error() -> None:
    with pytest.raises(ValueError, match="no truth"):
        merge_truths([])
