"""Rolling the per-precinct figures up the election's reporting-unit tree.

The tables hold figures per precinct (tallies, precinct_ballots, devices); every other unit
(county, state, or whatever the election's tree holds, at any depth) is the sum of its
children, computed at query time: the tree is small (thousands of precincts at most) and this
keeps one source of truth, which the audit checks against the ledger. No I/O here.

A precinct **reports** when every one of its devices has its final batch in the ledger; a unit
shows how many of the precincts below it report, out of how many. A device is **reporting**
once any batch of its is in the ledger (the others are **silent**), and **confirmed** when its
final batch and every seq before it are: what its receipts cover, so it has nothing left to send. Turnout is ballots cast over
registered voters (``None`` where none are registered). A precinct keyed by hand (a manual
source, `edgetally entry`) reports too; ``sources_by_precinct`` says whether a precinct's figures
come from its tabulators, manual entry or both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol import Election, Unit


@dataclass(frozen=True, slots=True)
class PrecinctFigures:
    """What the database holds for one precinct."""

    votes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # contest -> choice -> n
    ballots: int = 0
    batches: int = 0
    counted: bool = False  # it has a precinct_ballots row (some batch was accepted)
    devices_final: int = 0  # its devices whose final batch is in the ledger
    duplicates: int = 0
    devices_reporting: int = 0  # its devices with any batch in the ledger
    devices_confirmed: int = 0  # its devices with every seq up to the final one in the ledger
    rejections: int = 0
    sources: tuple[str, ...] = ()  # "manual", "tabulator": the sources of its devices that reported


def source_label(sources: tuple[str, ...]) -> str | None:
    """Where a precinct's figures come from: tabulator, manual, both, or None (nothing yet)."""
    if not sources:
        return None
    return sources[0] if len(sources) == 1 else "both"


@dataclass(frozen=True)
class Rollup:
    """One reporting unit's figures, its precincts' summed."""

    unit: Unit
    contests: dict[str, dict[str, int]]  # every contest and choice, zeros included
    ballots: int
    batches: int
    registered: int
    precincts_total: int
    precincts_reporting: int
    devices_total: int
    devices_final: int
    duplicates: int
    devices_reporting: int
    devices_confirmed: int
    rejections: int
    ballots_by_precinct: dict[str, int]  # precincts with accepted batches only
    # precinct -> tabulator | manual | both, for precincts with a reporting source only
    sources_by_precinct: dict[str, str] = field(default_factory=dict)

    @property
    def turnout(self) -> float | None:
        return self.ballots / self.registered if self.registered else None

    def summary(self) -> dict[str, Any]:
        """The figures as a mapping (a child's entry in ``results --json``)."""
        return {
            "id": self.unit.id,
            "name": self.unit.name,
            "kind": self.unit.kind,
            "ballots": self.ballots,
            "batches": self.batches,
            "registered": self.registered,
            "turnout": self.turnout,
            "precincts_reporting": self.precincts_reporting,
            "precincts_total": self.precincts_total,
            "devices_final": self.devices_final,
            "devices_total": self.devices_total,
            "devices_reporting": self.devices_reporting,
            "devices_confirmed": self.devices_confirmed,
            "devices_silent": self.devices_total - self.devices_reporting,
            "rejections": self.rejections,
            "source": self.sources_by_precinct.get(self.unit.id) if self.unit.is_precinct else None,
            "contests": self.contests,
        }


def roll_up(election: Election, figures: Mapping[str, PrecinctFigures]) -> dict[str, Rollup]:
    """A :class:`Rollup` for every unit of ``election``; precincts missing from ``figures``
    count zero. Figures of precincts not in the tree are ignored (the audit reports them)."""
    out: dict[str, Rollup] = {}
    empty = PrecinctFigures()
    for unit in reversed(list(election.walk())):  # children before their parents
        if unit.is_precinct:
            out[unit.id] = _precinct(election, unit, figures.get(unit.id, empty))
        else:
            out[unit.id] = _sum(election, unit, [out[c] for c in unit.children])
    return out


def _zeros(election: Election) -> dict[str, dict[str, int]]:
    return {c.id: dict.fromkeys(c.choice_ids, 0) for c in election.contests}


def _precinct(election: Election, unit: Unit, f: PrecinctFigures) -> Rollup:
    contests = _zeros(election)
    for contest, choices in f.votes.items():
        mine = contests.setdefault(contest, {})
        for choice, n in choices.items():
            mine[choice] = mine.get(choice, 0) + n
    devices = len(unit.devices)
    label = source_label(f.sources)
    return Rollup(
        unit=unit,
        contests=contests,
        ballots=f.ballots,
        batches=f.batches,
        registered=unit.registered,
        precincts_total=1,
        # all its tabulators' final batches, or figures keyed by hand
        precincts_reporting=1 if f.devices_final >= devices or "manual" in f.sources else 0,
        devices_total=devices,
        devices_final=f.devices_final,
        duplicates=f.duplicates,
        devices_reporting=f.devices_reporting,
        devices_confirmed=f.devices_confirmed,
        rejections=f.rejections,
        ballots_by_precinct={unit.id: f.ballots} if f.counted else {},
        sources_by_precinct={} if label is None else {unit.id: label},
    )


def _sum(election: Election, unit: Unit, children: list[Rollup]) -> Rollup:
    contests = _zeros(election)
    by_precinct: dict[str, int] = {}
    sources: dict[str, str] = {}
    for child in children:
        sources.update(child.sources_by_precinct)
        for contest, choices in child.contests.items():
            mine = contests.setdefault(contest, {})
            for choice, n in choices.items():
                mine[choice] = mine.get(choice, 0) + n
        by_precinct.update(child.ballots_by_precinct)
    return Rollup(
        unit=unit,
        contests=contests,
        ballots=sum(c.ballots for c in children),
        batches=sum(c.batches for c in children),
        registered=sum(c.registered for c in children),
        precincts_total=sum(c.precincts_total for c in children),
        precincts_reporting=sum(c.precincts_reporting for c in children),
        devices_total=sum(c.devices_total for c in children),
        devices_final=sum(c.devices_final for c in children),
        duplicates=sum(c.duplicates for c in children),
        devices_reporting=sum(c.devices_reporting for c in children),
        devices_confirmed=sum(c.devices_confirmed for c in children),
        rejections=sum(c.rejections for c in children),
        ballots_by_precinct=dict(sorted(by_precinct.items())),
        sources_by_precinct=dict(sorted(sources.items())),
    )
