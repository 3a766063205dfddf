"""A tally sheet's figures as keyed: reading them (a JSON file or prompts), checking them against
the election, comparing two keyings, and the deltas of a correction."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetally.entry.errors import SheetRefused
from protocol import Election
from protocol.batch import MAX_COUNT

Prompt = Callable[[str], int]  # asks for one figure, returns what the operator typed


@dataclass(frozen=True, slots=True)
class Figures:
    """Ballots and every contest's votes by choice (every choice of the election, zeros included)."""

    ballots: int
    counts: Mapping[str, Mapping[str, int]]

    def to_mapping(self) -> dict[str, Any]:
        return {"ballots": self.ballots, "counts": {c: dict(ch) for c, ch in self.counts.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Figures:
        data = json.loads(text)
        return cls(int(data["ballots"]), {c: dict(ch) for c, ch in data["counts"].items()})

    def minus(self, other: Figures) -> Figures:
        """The deltas from ``other`` to these figures (negative where a figure went down)."""
        return Figures(
            self.ballots - other.ballots,
            {c: {ch: n - other.counts.get(c, {}).get(ch, 0) for ch, n in chs.items()} for c, chs in self.counts.items()},
        )

    def plus(self, other: Figures) -> Figures:
        return Figures(
            self.ballots + other.ballots,
            {c: {ch: n + other.counts.get(c, {}).get(ch, 0) for ch, n in chs.items()} for c, chs in self.counts.items()},
        )


def zero(election: Election) -> Figures:
    return Figures(0, {c.id: dict.fromkeys(c.choice_ids, 0) for c in election.contests})


def _count(value: object, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise SheetRefused(f"{where} must be a whole number from 0 to {MAX_COUNT:,}, got {value!r}")
    return value


def figures_from_mapping(election: Election, data: object, where: str = "sheet") -> Figures:
    """Figures from ``{"ballots": n, "counts": {contest: {choice: n}}}``; a missing choice is 0."""
    if not isinstance(data, dict) or not isinstance(data.get("counts"), dict):
        raise SheetRefused(f'{where} must be an object {{"ballots": n, "counts": {{contest: {{choice: n}}}}}}')
    extra = sorted(set(data) - {"ballots", "counts"})
    if extra:
        raise SheetRefused(f"{where} has unexpected field(s): {', '.join(extra)}")
    counts = {c.id: dict.fromkeys(c.choice_ids, 0) for c in election.contests}
    for contest_id, choices in data["counts"].items():
        contest = election.contest(contest_id)
        if contest is None:
            raise SheetRefused(f"{where}: election {election.id!r} has no contest {contest_id!r}")
        if not isinstance(choices, dict):
            raise SheetRefused(f"{where}: contest {contest_id!r} must be an object of choices")
        for choice, n in choices.items():
            if choice not in contest.known_choices:
                raise SheetRefused(f"{where}: contest {contest_id!r} has no choice {choice!r}")
            counts[contest_id][choice] = _count(n, f"{where}: {contest_id}.{choice}")
    figures = Figures(_count(data.get("ballots"), f"{where}: ballots"), counts)
    check_figures(election, figures)
    return figures


def load_figures(election: Election, path: Path) -> Figures:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SheetRefused(f"cannot read {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SheetRefused(f"{path} is not UTF-8 JSON: {exc}") from exc
    return figures_from_mapping(election, data, str(path))


def prompt_figures(election: Election, ask: Prompt) -> Figures:
    """Ask for the ballots, then every contest's choices by name; checked like a file."""
    ballots = _count(ask("Ballots cast"), "ballots")
    counts: dict[str, dict[str, int]] = {}
    for contest in election.contests:
        counts[contest.id] = {
            choice.id: _count(ask(f"{contest.name} — {choice.name}"), f"{contest.id}.{choice.id}")
            for choice in contest.choices
        }
    figures = Figures(ballots, counts)
    check_figures(election, figures)
    return figures


def check_figures(election: Election, figures: Figures) -> None:
    """The votes-per-ballot rule: a contest is vote-for-one (a ballot gives a contest at most one
    vote, as a tabulator counts), so no contest's votes may exceed the ballots."""
    for contest in election.contests:
        votes = sum(figures.counts.get(contest.id, {}).values())
        if votes > figures.ballots:
            raise SheetRefused(
                f"contest {contest.id!r} ({contest.name}) has {votes:,} votes for {figures.ballots:,}"
                " ballots: a ballot gives a contest at most one vote; nothing was recorded"
            )


def differences(a: Figures, b: Figures) -> list[tuple[str, str, int, int]]:
    """(contest, choice, a's figure, b's figure) wherever they differ; ballots as ("ballots", "")."""
    rows: list[tuple[str, str, int, int]] = []
    if a.ballots != b.ballots:
        rows.append(("ballots", "", a.ballots, b.ballots))
    for contest, choices in a.counts.items():
        for choice, n in choices.items():
            m = b.counts.get(contest, {}).get(choice, 0)
            if n != m:
                rows.append((contest, choice, n, m))
    return rows
