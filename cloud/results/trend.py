"""Ballots over time for people: the windows of a reporting unit (``cloud results --windows``).

Reads ``window_ballots`` and ``window_tallies`` (kept by the ledger, cloud/results/windows.py), summed
over the unit's precincts per window, oldest first. Windows in which nothing was issued are
shown as zeros between the first and the last (unless the span is absurdly long, as a device
with a wild clock can make it). JSON::

    {"election": id, "unit": id, "window_seconds": w,
     "windows": [{"start": ts, "end": ts, "ballots": n, "batches": n,
                  "contests": {contest: {choice: n}}}, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud.results.results import find_unit, read_snapshot, sa_query, stored_election
from cloud.results.windows import stored_width
from protocol import Election, Unit
from protocol.election import format_timestamp

MAX_FILLED_WINDOWS = 10_000  # empty windows filled in between, at most
_PRECINCT_CHUNK = 500  # precincts per IN (...) list
SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 30


@dataclass(frozen=True, slots=True)
class WindowFigures:
    start: datetime
    ballots: int
    batches: int
    contests: dict[str, dict[str, int]]

    def to_mapping(self, width: int) -> dict[str, Any]:
        return {
            "start": format_timestamp(self.start),
            "end": format_timestamp(self.start + timedelta(seconds=width)),
            "ballots": self.ballots,
            "batches": self.batches,
            "contests": self.contests,
        }


@dataclass(frozen=True)
class Trend:
    election: Election
    unit: Unit
    width: int
    windows: tuple[WindowFigures, ...]

    def to_mapping(self) -> dict[str, Any]:
        return {
            "election": self.election.id,
            "unit": self.unit.id,
            "window_seconds": self.width,
            "windows": [w.to_mapping(self.width) for w in self.windows],
        }


def load_trend(engine: Engine, election_id: str | None = None, unit_id: str | None = None) -> Trend:
    with read_snapshot(engine, "reading windows") as conn:
        election = stored_election(sa_query(conn), election_id)
        unit = find_unit(election, unit_id)
        return _read(conn, election, unit)


def _read(conn: Connection, election: Election, unit: Unit) -> Trend:
    width = stored_width(conn)
    b, t = models.window_ballots.c, models.window_tallies.c
    chunks: list[list[str] | None]
    if unit.id == election.root:
        chunks = [None]  # every precinct: no filter
    else:
        precincts = sorted(u.id for u in election.walk(unit.id) if u.is_precinct)
        chunks = [
            precincts[i : i + _PRECINCT_CHUNK] for i in range(0, len(precincts), _PRECINCT_CHUNK)
        ]
    ballots: dict[datetime, list[int]] = {}
    votes: dict[datetime, dict[str, dict[str, int]]] = {}
    for chunk in chunks:
        q_ballots = (
            select(b.window_start, func.sum(b.ballots), func.sum(b.batches))
            .where(b.election == election.id)
            .group_by(b.window_start)
        )
        q_votes = (
            select(t.window_start, t.contest, t.choice, func.sum(t.votes))
            .where(t.election == election.id)
            .group_by(t.window_start, t.contest, t.choice)
        )
        if chunk is not None:
            q_ballots = q_ballots.where(b.precinct.in_(chunk))
            q_votes = q_votes.where(t.precinct.in_(chunk))
        for start, n_ballots, n_batches in conn.execute(q_ballots):
            entry = ballots.setdefault(start, [0, 0])
            entry[0] += int(n_ballots)
            entry[1] += int(n_batches)
        for start, contest, choice, n in conn.execute(q_votes):
            mine = votes.setdefault(start, {}).setdefault(contest, {})
            mine[choice] = mine.get(choice, 0) + int(n)
    starts = sorted({*ballots, *votes})
    if starts:
        span = int((starts[-1] - starts[0]).total_seconds()) // width + 1
        if span <= MAX_FILLED_WINDOWS:
            starts = [starts[0] + timedelta(seconds=i * width) for i in range(span)]
    windows = []
    for start in starts:
        contests = {c.id: dict.fromkeys(c.choice_ids, 0) for c in election.contests}
        for contest, choices in votes.get(start, {}).items():
            contests.setdefault(contest, {}).update(choices)
        n_ballots, n_batches = ballots.get(start, (0, 0))
        windows.append(WindowFigures(start, n_ballots, n_batches, contests))
    return Trend(election, unit, width, tuple(windows))


# -- for people --------------------------------------------------------------------------


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if not top:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[round(v * (len(SPARKS) - 1) / top)] for v in values)


def _bar(value: int, top: int) -> str:
    return "█" * round(BAR_WIDTH * value / top) if top else ""


def render_trend(trend: Trend, console: Console, *, last: int = 0) -> None:
    """A sparkline of ballots per window, a table of ballots with bars, one table per contest.

    ``last`` > 0 shows only the last windows in the tables (the sparkline shows them all).
    """
    unit, width = trend.unit, trend.width
    title = f"{trend.election.name}: {unit.name} [{unit.kind} {unit.id}], {width} s windows on issued_at"
    if not trend.windows:
        console.print(Text(f"{title}: no batches yet"))
        return
    series = [w.ballots for w in trend.windows]
    console.print(Text(title, style="bold"))
    console.print(
        f"ballots per window, {format_timestamp(trend.windows[0].start)} to"
        f" {format_timestamp(trend.windows[-1].start + timedelta(seconds=width))}:"
    )
    console.print(Text(sparkline(series), style="cyan"))
    shown = trend.windows[-last:] if last > 0 else trend.windows
    top = max(series)
    table = Table(title=f"Ballots per {width} s window")
    table.add_column("window start (UTC)")
    table.add_column("ballots", justify="right")
    table.add_column("batches", justify="right")
    table.add_column("", style="cyan", no_wrap=True)
    for w in shown:
        table.add_row(
            format_timestamp(w.start), f"{w.ballots:,}", f"{w.batches:,}", _bar(w.ballots, top)
        )
    console.print(table)
    for contest in trend.election.contests:
        title = f"{contest.name} [{contest.id}] per window"
        table = Table(title=Text(title), min_width=len(title) + 4)
        table.add_column("window start (UTC)")
        for choice in contest.choices:
            table.add_column(Text(choice.id), justify="right")
        table.add_column("total", justify="right")
        for w in shown:
            votes = w.contests.get(contest.id, {})
            table.add_row(
                format_timestamp(w.start),
                *(f"{votes.get(c, 0):,}" for c in contest.choice_ids),
                f"{sum(votes.values()):,}",
            )
        console.print(table)
