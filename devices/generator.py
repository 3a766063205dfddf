"""Deterministic ballots: (election, seed, device, batches) -> the exact batches a device sends.

Nothing here depends on time or on the order devices run in: each precinct and each device
draws from its own random stream, seeded by a string naming it. ``issued_at`` is derived
from the election's poll-closing time and the seq, so the same inputs give the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from protocol import GENESIS_HASH, BatchBody, Election, Totals, body_hash
from protocol.election import format_timestamp, parse_timestamp

UNDERVOTE_RATE = 0.02
TURNOUT_RANGE = (0.45, 0.85)
WRITE_IN_SHARE = 0.05


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random("/".join((str(seed), *parts)))


@dataclass(frozen=True, slots=True)
class PrecinctProfile:
    """How a precinct votes: its turnout and, per contest, the weight of each choice."""

    turnout: float
    weights: dict[str, tuple[float, ...]]


def precinct_profile(election: Election, seed: int, precinct: str) -> PrecinctProfile:
    rng = _rng(seed, election.id, precinct, "profile")
    turnout = rng.uniform(*TURNOUT_RANGE)
    weights: dict[str, tuple[float, ...]] = {}
    for contest in election.contests:
        raw = [
            rng.gammavariate(2.0, 1.0) * (WRITE_IN_SHARE if choice.id == "write-in" else 1.0)
            for choice in contest.choices
        ]
        total = sum(raw)
        # A write-in or minor choice still gets a few votes; nothing is exactly zero.
        weights[contest.id] = tuple((1 - UNDERVOTE_RATE) * (w / total) for w in raw)
    return PrecinctProfile(turnout, weights)


def device_ballots(election: Election, seed: int, device: str) -> int:
    """How many ballots ``device`` counts in total."""
    precinct_id = election.precinct_of(device)
    if precinct_id is None:
        raise KeyError(f"device {device!r} is not in election {election.id!r}")
    precinct = election.units[precinct_id]
    profile = precinct_profile(election, seed, precinct_id)
    cast = round(precinct.registered * profile.turnout)
    n = len(precinct.devices)
    index = precinct.devices.index(device)
    return cast // n + (1 if index < cast % n else 0)


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    cuts = sorted(rng.randint(0, total) for _ in range(parts - 1))
    edges = [0, *cuts, total]
    return [edges[i + 1] - edges[i] for i in range(parts)]


def _vote(rng: random.Random, election: Election, profile: PrecinctProfile, ballots: int) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for contest in election.contests:
        tally = dict.fromkeys(contest.choice_ids, 0)
        weights = [*profile.weights[contest.id], UNDERVOTE_RATE]
        options: list[str | None] = [*contest.choice_ids, None]
        for pick in rng.choices(options, weights=weights, k=ballots):
            if pick is not None:
                tally[pick] += 1
        counts[contest.id] = tally
    return counts


@dataclass
class _Running:
    ballots: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, ballots: int, counts: dict[str, dict[str, int]]) -> None:
        self.ballots += ballots
        for contest, choices in counts.items():
            mine = self.counts.setdefault(contest, dict.fromkeys(choices, 0))
            for choice, n in choices.items():
                mine[choice] += n


def iter_batches(election: Election, seed: int, device: str, batches: int) -> Iterator[BatchBody]:
    """Yield the device's batches in seq order; the last one is final and carries totals."""
    if batches < 1:
        raise ValueError("a device sends at least one batch")
    precinct_id = election.precinct_of(device)
    if precinct_id is None:
        raise KeyError(f"device {device!r} is not in election {election.id!r}")
    profile = precinct_profile(election, seed, precinct_id)
    rng = _rng(seed, election.id, device, "ballots")
    sizes = _split(rng, device_ballots(election, seed, device), batches)
    start = parse_timestamp(election.polls_close, "polls_close")
    running = _Running()
    prev = GENESIS_HASH
    for seq, ballots in enumerate(sizes, start=1):
        counts = _vote(rng, election, profile, ballots)
        running.add(ballots, counts)
        final = seq == batches
        body = BatchBody(
            election=election.id,
            device=device,
            precinct=precinct_id,
            seq=seq,
            prev=prev,
            issued_at=format_timestamp(start + timedelta(minutes=seq)),
            ballots=ballots,
            counts=counts,
            final=final,
            totals=Totals(running.ballots, running.counts) if final else None,
        )
        prev = body_hash(body.to_bytes())
        yield body


def device_batches(election: Election, seed: int, device: str, batches: int) -> list[BatchBody]:
    return list(iter_batches(election, seed, device, batches))


@dataclass
class ExpectedTotals:
    """What the cloud must hold once every device's batches are in, exactly once."""

    election: str
    ballots: int
    contests: dict[str, dict[str, int]]
    by_precinct: dict[str, int]
    batches: int

    def to_mapping(self) -> dict[str, object]:
        return {
            "election": self.election,
            "ballots": self.ballots,
            "batches": self.batches,
            "contests": self.contests,
            "ballots_by_precinct": self.by_precinct,
        }


def expected_totals(
    election: Election, seed: int, batches: int, devices: list[str] | None = None
) -> ExpectedTotals:
    running = _Running(counts={c.id: dict.fromkeys(c.choice_ids, 0) for c in election.contests})
    by_precinct: dict[str, int] = {}
    count = 0
    for device in devices if devices is not None else election.devices:
        final = device_batches(election, seed, device, batches)[-1]
        assert final.totals is not None
        running.add(final.totals.ballots, {c: dict(ch) for c, ch in final.totals.counts.items()})
        by_precinct[final.precinct] = by_precinct.get(final.precinct, 0) + final.totals.ballots
        count += batches
    return ExpectedTotals(election.id, running.ballots, running.counts, by_precinct, count)
