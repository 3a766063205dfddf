"""The election model: contests, choices and the reporting-unit tree down to devices.

An election is plain data (``from_mapping`` / ``to_mapping``); reading YAML files is
the business of the tiers, not of the wire format. The mapping form is::

    {"id": "sample-2026", "name": "...", "polls_close": "2026-11-03T20:00:00Z",
     "contests": [{"id": "governor", "name": "...", "kind": "candidate",
                   "choices": [{"id": "alvarez", "name": "..."}, ...]}, ...],
     "units": {"id": "state", "name": "...", "kind": "state", "children": [
                 {"id": "county-1", "kind": "county", "children": [
                     {"id": "p-001", "kind": "precinct", "registered": 1200,
                      "devices": ["p-001-a"]}]}]}}

The leaves of the tree are precincts: a unit with ``devices`` (and ``registered``
voters) and no children. Every other unit aggregates its children.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from protocol._errors import ElectionModelError, shown

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline, which would let "p-001\n" pass.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# ASCII digits only: ``\d`` would also accept digits of other scripts (U+FF12 and the like).
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
CONTEST_KINDS = ("candidate", "measure")


def check_id(value: object, where: str) -> str:
    """Return ``value`` if it is a valid identifier, else raise naming ``where``."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ElectionModelError(
            f"{where}: {shown(value)} is not a valid id (1-64 characters of A-Z a-z 0-9 _ . -,"
            " starting with a letter or digit)"
        )
    return value


def parse_timestamp(value: object, where: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp of the form ``2026-11-03T20:00:00Z``."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise ElectionModelError(
            f"{where}: {shown(value)} is not a timestamp like 2026-11-03T20:00:00Z"
        )
    try:
        # Fixed positions (the pattern matched): ~15x cheaper than strptime on the hot path.
        return datetime(
            int(value[0:4]),
            int(value[5:7]),
            int(value[8:10]),
            int(value[11:13]),
            int(value[14:16]),
            int(value[17:19]),
            tzinfo=UTC,
        )
    except ValueError as exc:
        raise ElectionModelError(f"{where}: {value!r} is not a valid date and time") from exc


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Choice:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Contest:
    id: str
    name: str
    kind: str
    choices: tuple[Choice, ...]
    choice_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)
    known_choices: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once: every verified batch checks its choices against them
        object.__setattr__(self, "choice_ids", tuple(c.id for c in self.choices))
        object.__setattr__(self, "known_choices", frozenset(self.choice_ids))


@dataclass(frozen=True, slots=True)
class Unit:
    """A reporting unit. Precincts have ``devices`` and ``registered``; others have children."""

    id: str
    name: str
    kind: str
    parent: str | None
    children: tuple[str, ...] = ()
    registered: int = 0
    devices: tuple[str, ...] = ()

    @property
    def is_precinct(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class Election:
    id: str
    name: str
    polls_close: str
    contests: tuple[Contest, ...]
    root: str
    units: Mapping[str, Unit]
    _device_precinct: Mapping[str, str] = field(repr=False, compare=False, default_factory=dict)

    # -- lookups -------------------------------------------------------------------
    def contest(self, contest_id: str) -> Contest | None:
        return self.contests_by_id.get(contest_id)

    @functools.cached_property
    def contests_by_id(self) -> Mapping[str, Contest]:
        """Contests by id (the first of a repeated id, as :meth:`contest` always found);
        computed once: every verified batch looks its contests up."""
        found: dict[str, Contest] = {}
        for contest in self.contests:
            found.setdefault(contest.id, contest)
        return found

    @property
    def contest_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.contests)

    @property
    def precincts(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.walk() if u.is_precinct)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d for p in self.precincts for d in p.devices)

    def precinct_of(self, device: str) -> str | None:
        return self._device_precinct.get(device)

    def ancestors(self, unit_id: str) -> tuple[str, ...]:
        """``unit_id`` and every unit above it, nearest first."""
        out: list[str] = []
        current: str | None = unit_id
        while current is not None:
            out.append(current)
            current = self.units[current].parent
        return tuple(out)

    def walk(self, start: str | None = None) -> Iterator[Unit]:
        """Units depth-first from ``start`` (default the root), parents before children."""
        stack = [start or self.root]
        while stack:
            unit = self.units[stack.pop()]
            yield unit
            stack.extend(reversed(unit.children))

    def registered(self, unit_id: str) -> int:
        return sum(u.registered for u in self.walk(unit_id) if u.is_precinct)

    # -- (de)serialisation -----------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Election:
        if not isinstance(data, Mapping):
            raise ElectionModelError("an election must be a mapping with id, contests and units")
        _require_keys(data, {"id", "name", "polls_close", "contests", "units"}, "election")
        election_id = check_id(data["id"], "election id")
        name = _string(data["name"], f"election {election_id!r} name")
        parse_timestamp(data["polls_close"], f"election {election_id!r} polls_close")
        contests = _parse_contests(data["contests"])
        units: dict[str, Unit] = {}
        device_precinct: dict[str, str] = {}
        root = _parse_unit(data["units"], None, units, device_precinct, "units")
        return cls(
            id=election_id,
            name=name,
            polls_close=data["polls_close"],
            contests=contests,
            root=root,
            units=units,
            _device_precinct=device_precinct,
        )

    def to_mapping(self) -> dict[str, Any]:
        def unit_map(unit_id: str) -> dict[str, Any]:
            unit = self.units[unit_id]
            out: dict[str, Any] = {"id": unit.id, "name": unit.name, "kind": unit.kind}
            if unit.is_precinct:
                out["registered"] = unit.registered
                out["devices"] = list(unit.devices)
            else:
                out["children"] = [unit_map(c) for c in unit.children]
            return out

        return {
            "id": self.id,
            "name": self.name,
            "polls_close": self.polls_close,
            "contests": [
                {
                    "id": c.id,
                    "name": c.name,
                    "kind": c.kind,
                    "choices": [{"id": ch.id, "name": ch.name} for ch in c.choices],
                }
                for c in self.contests
            ],
            "units": unit_map(self.root),
        }


def _require_keys(data: Mapping[str, Any], required: set[str], where: str) -> None:
    missing = sorted(required - set(data))
    if missing:
        raise ElectionModelError(f"{where}: missing {', '.join(missing)}")


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ElectionModelError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _parse_contests(raw: object) -> tuple[Contest, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise ElectionModelError("contests: expected a non-empty list")
    contests: list[Contest] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"contests[{index}]"
        if not isinstance(item, Mapping):
            raise ElectionModelError(f"{where}: expected a mapping")
        _require_keys(item, {"id", "name", "choices"}, where)
        contest_id = check_id(item["id"], f"{where} id")
        where = f"contest {contest_id!r}"
        if contest_id in seen:
            raise ElectionModelError(f"{where}: duplicate contest id")
        seen.add(contest_id)
        kind = item.get("kind", "candidate")
        if kind not in CONTEST_KINDS:
            raise ElectionModelError(f"{where}: kind must be one of {CONTEST_KINDS}, got {kind!r}")
        raw_choices = item["choices"]
        if not isinstance(raw_choices, Sequence) or isinstance(raw_choices, str):
            raise ElectionModelError(f"{where}: choices must be a list")
        if len(raw_choices) < 2:
            raise ElectionModelError(f"{where}: needs at least two choices")
        choices: list[Choice] = []
        choice_ids: set[str] = set()
        for choice in raw_choices:
            if isinstance(choice, str):
                choice = {"id": choice, "name": choice}
            if not isinstance(choice, Mapping) or "id" not in choice:
                raise ElectionModelError(f"{where}: each choice needs an id")
            choice_id = check_id(choice["id"], f"{where} choice")
            if choice_id in choice_ids:
                raise ElectionModelError(f"{where}: duplicate choice {choice_id!r}")
            choice_ids.add(choice_id)
            choices.append(Choice(choice_id, str(choice.get("name", choice_id))))
        contests.append(Contest(contest_id, _string(item["name"], f"{where} name"), kind, tuple(choices)))
    return tuple(contests)


def _parse_unit(
    raw: object,
    parent: str | None,
    units: dict[str, Unit],
    device_precinct: dict[str, str],
    where: str,
) -> str:
    if not isinstance(raw, Mapping):
        raise ElectionModelError(f"{where}: expected a mapping for a reporting unit")
    _require_keys(raw, {"id", "kind"}, where)
    unit_id = check_id(raw["id"], f"{where} id")
    where = f"unit {unit_id!r}"
    if unit_id in units:
        raise ElectionModelError(f"{where}: duplicate unit id")
    kind = check_id(raw["kind"], f"{where} kind")
    name = str(raw.get("name", unit_id))
    children_raw = raw.get("children")
    if children_raw:
        if "devices" in raw:
            raise ElectionModelError(f"{where}: a unit has either children or devices, not both")
        if not isinstance(children_raw, Sequence) or isinstance(children_raw, str):
            raise ElectionModelError(f"{where}: children must be a list")
        units[unit_id] = Unit(unit_id, name, kind, parent)  # placeholder keeps ids unique
        children = tuple(
            _parse_unit(child, unit_id, units, device_precinct, f"{where} child {i}")
            for i, child in enumerate(children_raw)
        )
        units[unit_id] = Unit(unit_id, name, kind, parent, children=children)
        return unit_id
    devices_raw = raw.get("devices")
    if not isinstance(devices_raw, Sequence) or isinstance(devices_raw, str) or not devices_raw:
        raise ElectionModelError(f"{where}: a precinct needs a non-empty list of devices")
    registered = raw.get("registered")
    if type(registered) is not int or registered < 0:
        raise ElectionModelError(
            f"{where}: registered must be a non-negative integer, got {registered!r}"
        )
    devices: list[str] = []
    for device in devices_raw:
        device_id = check_id(device, f"{where} device")
        if device_id in device_precinct:
            raise ElectionModelError(
                f"{where}: device {device_id!r} already belongs to precinct"
                f" {device_precinct[device_id]!r}"
            )
        device_precinct[device_id] = unit_id
        devices.append(device_id)
    units[unit_id] = Unit(
        unit_id, name, kind, parent, registered=registered, devices=tuple(devices)
    )
    return unit_id
