from __future__ import annotations

import itertools
from collections import Counter

import pytest

from devices.generator import device_ballots, device_batches, expected_totals
from protocol import GENESIS_HASH, Election, body_hash, parse_body


def test_same_inputs_give_identical_bytes(sample_election: Election) -> None:
    device = sample_election.devices[3]
    first = [b.to_bytes() for b in device_batches(sample_election, 42, device, 6)]
    second = [b.to_bytes() for b in device_batches(sample_election, 42, device, 6)]
    assert first == second


def test_other_seed_gives_other_ballots(sample_election: Election) -> None:
    device = sample_election.devices[0]
    assert device_batches(sample_election, 1, device, 3) != device_batches(sample_election, 2, device, 3)


def test_batches_form_a_hash_chain_ending_in_final(sample_election: Election) -> None:
    batches = device_batches(sample_election, 5, sample_election.devices[10], 7)
    assert [b.seq for b in batches] == list(range(1, 8))
    assert batches[0].prev == GENESIS_HASH
    for earlier, later in itertools.pairwise(batches):
        assert later.prev == body_hash(earlier.to_bytes())
    assert [b.final for b in batches] == [False] * 6 + [True]
    assert all(b.totals is None for b in batches[:-1])


def test_final_totals_are_the_sum_of_deltas(sample_election: Election) -> None:
    device = sample_election.devices[20]
    batches = device_batches(sample_election, 9, device, 5)
    final = batches[-1]
    assert final.totals is not None
    assert final.totals.ballots == sum(b.ballots for b in batches) == device_ballots(sample_election, 9, device)
    for contest in sample_election.contests:
        summed: Counter[str] = Counter()
        for batch in batches:
            summed.update(batch.counts[contest.id])
        assert dict(final.totals.counts[contest.id]) == dict(summed)
        # one vote per contest per ballot at most (undervotes allowed)
        assert sum(summed.values()) <= final.totals.ballots


def test_generated_bodies_are_canonical_and_parse_back(sample_election: Election) -> None:
    for body in device_batches(sample_election, 3, sample_election.devices[-1], 4):
        assert parse_body(body.to_bytes()) == body


def test_precinct_ballots_respect_registered_voters(sample_election: Election) -> None:
    expected = expected_totals(sample_election, 11, 2)
    for precinct in sample_election.precincts:
        assert 0 < expected.by_precinct[precinct.id] <= precinct.registered


def test_expected_totals_sum_every_device(sample_election: Election) -> None:
    expected = expected_totals(sample_election, 4, 3)
    assert expected.batches == 3 * len(sample_election.devices)
    total = sum(device_ballots(sample_election, 4, d) for d in sample_election.devices)
    assert expected.ballots == total == sum(expected.by_precinct.values())
    assert set(expected.contests) == set(sample_election.contest_ids)


def test_batch_split_does_not_change_device_totals(sample_election: Election) -> None:
    device = sample_election.devices[5]
    one = device_batches(sample_election, 8, device, 1)[-1]
    many = device_batches(sample_election, 8, device, 9)[-1]
    assert one.totals is not None and many.totals is not None
    assert one.totals.ballots == many.totals.ballots


def test_zero_batches_is_refused(sample_election: Election) -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        device_batches(sample_election, 1, sample_election.devices[0], 0)
