"""Results from the cloud database alone, at any reporting unit (default: the root); as a
mapping for ``--json`` and as rich tables for people.

Every figure is read per precinct (tallies, precinct_ballots, devices, rejections) and rolled
up the election's tree (cloud/results/rollups.py), so a unit's figures are exactly its children's sum.
The JSON shape keeps the keys of ``edgetally devices expected --json`` where the two overlap::

    {"election": id, "ballots": n, "batches": n, "contests": {contest: {choice: n}},
     "shares": {contest: {choice: share of the contest's votes, or null}},
     "ballots_by_precinct": {precinct: n}, "duplicates": n, "rejections": n, "devices_final": n,
     "unit": {"id", "name", "kind", "parent"}, "registered": n, "turnout": ratio | null,
     "precincts_reporting": n, "precincts_total": n, "devices_total": n,
     "devices_reporting": n, "devices_confirmed": n, "devices_silent": n,
     "rejections_by_reason": {reason: n}, "children": [child summary, ...]}

all of them for the unit shown. ``contests`` lists every contest and choice, zeros included;
``ballots_by_precinct`` the unit's precincts that have accepted batches. ``rejections`` at the
root counts every rejection of the election, including those that name no device (a payload
that did not parse); below the root, those naming a device of the unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cloud._exceptions import DatabaseError, ResultsError
from cloud.results.rollups import PrecinctFigures, Rollup, roll_up
from protocol import Election, ElectionModelError, Unit, canonical

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

# Runs one SQL statement (named ``:params``) in the caller's read transaction; returns its rows.
# SQLAlchemy's ``text()`` and the stdlib ``sqlite3`` both take this SQL as written, so the
# queries below are the same whichever reads (cloud/results/sqlite.py reads a SQLite file
# without importing SQLAlchemy: `edgetally cloud results` answers in a fraction of a second).
Query = Callable[[str, Mapping[str, Any]], Iterable[Sequence[Any]]]


@dataclass(frozen=True)
class Results:
    election: Election
    rollup: Rollup  # the unit shown
    children: tuple[Rollup, ...]
    rejections: int
    rejections_by_reason: dict[str, int]

    @property
    def unit(self) -> Unit:
        return self.rollup.unit

    @property
    def ballots(self) -> int:
        return self.rollup.ballots

    @property
    def batches(self) -> int:
        return self.rollup.batches

    @property
    def contests(self) -> dict[str, dict[str, int]]:
        return self.rollup.contests

    @property
    def ballots_by_precinct(self) -> dict[str, int]:
        return self.rollup.ballots_by_precinct

    @property
    def duplicates(self) -> int:
        return self.rollup.duplicates

    @property
    def devices_final(self) -> int:
        return self.rollup.devices_final

    @property
    def devices_total(self) -> int:
        return self.rollup.devices_total

    def to_mapping(self) -> dict[str, Any]:
        unit = self.rollup.unit
        return {
            "election": self.election.id,
            "ballots": self.ballots,
            "batches": self.batches,
            "contests": self.contests,
            "shares": shares(self.contests),
            "ballots_by_precinct": self.ballots_by_precinct,
            "sources_by_precinct": self.rollup.sources_by_precinct,
            "duplicates": self.duplicates,
            "rejections": self.rejections,
            "devices_final": self.devices_final,
            "unit": {"id": unit.id, "name": unit.name, "kind": unit.kind, "parent": unit.parent},
            "registered": self.rollup.registered,
            "turnout": self.rollup.turnout,
            "precincts_reporting": self.rollup.precincts_reporting,
            "precincts_total": self.rollup.precincts_total,
            "devices_total": self.devices_total,
            "devices_reporting": self.rollup.devices_reporting,
            "devices_confirmed": self.rollup.devices_confirmed,
            "devices_silent": self.devices_total - self.rollup.devices_reporting,
            "rejections_by_reason": self.rejections_by_reason,
            "children": [child.summary() for child in self.children],
        }


def shares(contests: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float | None]]:
    """Each choice's share of its contest's votes (6 decimals; None while the contest has none)."""
    out: dict[str, dict[str, float | None]] = {}
    for contest, choices in contests.items():
        total = sum(choices.values())
        out[contest] = {choice: round(n / total, 6) if total else None for choice, n in choices.items()}
    return out


@contextmanager
def read_snapshot(engine: Engine, what: str) -> Iterator[Connection]:
    """A read-only transaction in which every query sees the same committed state."""
    from cloud.db import check_schema, translate_errors  # SQLAlchemy: only when reading through it

    check_schema(engine)
    with translate_errors(what), engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # one snapshot for every query
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        # SQLite (WAL): a read transaction sees one snapshot from its first read on.
        with conn.begin():
            yield conn


def load_results(
    engine: Engine, election_id: str | None = None, unit_id: str | None = None
) -> Results:
    """Read the results of ``election_id`` (default: the only election in the database) at
    ``unit_id`` (default: the root). Raises :class:`ResultsError` for an unknown unit."""
    with read_snapshot(engine, "reading results") as conn:
        return read_results(sa_query(conn), election_id, unit_id)


def sa_query(conn: Connection) -> Query:
    """A :data:`Query` running in ``conn``'s transaction (SQLAlchemy)."""
    from sqlalchemy import text

    def query(sql: str, params: Mapping[str, Any]) -> Iterable[Sequence[Any]]:
        return conn.execute(text(sql), dict(params)).all()

    return query


def read_results(query: Query, election_id: str | None = None, unit_id: str | None = None) -> Results:
    """The results, read through ``query`` inside one read transaction."""
    election = stored_election(query, election_id)
    return _read(query, election, find_unit(election, unit_id))


def stored_election(query: Query, election_id: str | None) -> Election:
    """The election stored in the database (the only one, or ``election_id``)."""
    rows = [(str(e), str(d)) for e, d in query("SELECT election, definition FROM elections ORDER BY election", {})]
    if not rows:
        raise ResultsError(
            "the database holds no election yet (has `edgetally cloud run` started?)"
        )
    if election_id is None:
        if len(rows) > 1:
            ids = ", ".join(e for e, _ in rows)
            raise ResultsError(
                f"the database holds several elections ({ids}); pick one with --election"
            )
        stored, definition = rows[0]
    else:
        matching = [r for r in rows if r[0] == election_id]
        if not matching:
            held = ", ".join(e for e, _ in rows)
            raise ResultsError(f"the database holds no election {election_id!r} (it holds {held})")
        stored, definition = matching[0]
    try:
        return Election.from_mapping(canonical.loads(definition, what="stored election"))
    except ElectionModelError as err:
        raise DatabaseError(
            f"stored definition of election {stored!r} is unreadable: {err}"
        ) from err


def find_unit(election: Election, unit_id: str | None) -> Unit:
    if unit_id is None:
        return election.units[election.root]
    unit = election.units.get(unit_id)
    if unit is None:
        top = election.units[election.root]
        below = ", ".join(top.children[:8]) + (", ..." if len(top.children) > 8 else "")
        raise ResultsError(
            f"election {election.id!r} has no reporting unit {unit_id!r}"
            f" (the root is {top.id!r}; below it: {below or 'nothing'})"
        )
    return unit


def read_every_unit(query: Query, election: Election) -> dict[str, Results]:
    """The results of every reporting unit, from one read of the figures (a caller holding the
    read transaction sees them all at the same committed state)."""
    rollups, by_device = _figures(query, election)
    return {unit_id: _assemble(election, unit, rollups, by_device) for unit_id, unit in election.units.items()}


def read_rollups(query: Query, election: Election) -> dict[str, Rollup]:
    """Every unit's figures (the :class:`Rollup` of each unit id), exactly those ``results``
    shows for that unit, read through ``query`` inside one read transaction."""
    return _figures(query, election)[0]


def _read(query: Query, election: Election, unit: Unit) -> Results:
    rollups, by_device = _figures(query, election)
    return _assemble(election, unit, rollups, by_device)


def _figures(query: Query, election: Election) -> tuple[dict[str, Rollup], dict[str | None, dict[str, int]]]:
    """Every unit's rollup, and the rejections per device and reason."""
    eid = {"eid": election.id}
    votes: dict[str, dict[str, dict[str, int]]] = {}
    for precinct, contest, choice, n in query(
        "SELECT precinct, contest, choice, votes FROM tallies WHERE election = :eid", eid
    ):
        votes.setdefault(precinct, {}).setdefault(contest, {})[choice] = int(n)
    ballots = {
        precinct: (int(n), int(batches))
        for precinct, n, batches in query(
            "SELECT precinct, ballots, batches FROM precinct_ballots WHERE election = :eid", eid
        )
    }
    finals: dict[str, int] = {}
    duplicates: dict[str, int] = {}
    reporting: dict[str, int] = {}
    confirmed: dict[str, int] = {}
    sources: dict[str, set[str]] = {}  # precinct -> the sources of its devices that reported
    for device, final_seq, dups, max_seq, contiguous, stored_precinct, source in query(
        "SELECT device, final_seq, duplicates, max_seq, contiguous_seq, precinct, source FROM devices"
        " WHERE election = :eid",
        eid,
    ):
        if int(max_seq) > 0:
            sources.setdefault(stored_precinct, set()).add(source)
        precinct = election.precinct_of(device)
        if precinct is None:  # a manual source (in no device list) counts in sources only
            continue
        finals[precinct] = finals.get(precinct, 0) + (final_seq is not None)
        duplicates[precinct] = duplicates.get(precinct, 0) + int(dups)
        reporting[precinct] = reporting.get(precinct, 0) + (int(max_seq) > 0)
        confirmed[precinct] = confirmed.get(precinct, 0) + (final_seq is not None and int(contiguous) >= int(final_seq))
    by_device: dict[str | None, dict[str, int]] = {}
    for device, reason, n in query(
        "SELECT device, reason, count(*) FROM rejections"
        " WHERE election = :eid OR election IS NULL GROUP BY device, reason",
        eid,
    ):
        by_device.setdefault(device, {})[reason] = int(n)
    rejected: dict[str, int] = {}
    for device, reasons in by_device.items():
        precinct = election.precinct_of(device) if device else None
        if precinct is not None:
            rejected[precinct] = rejected.get(precinct, 0) + sum(reasons.values())
    figures = {
        precinct: PrecinctFigures(
            votes=votes.get(precinct, {}),
            ballots=ballots.get(precinct, (0, 0))[0],
            batches=ballots.get(precinct, (0, 0))[1],
            counted=precinct in ballots,
            devices_final=finals.get(precinct, 0),
            duplicates=duplicates.get(precinct, 0),
            devices_reporting=reporting.get(precinct, 0),
            devices_confirmed=confirmed.get(precinct, 0),
            rejections=rejected.get(precinct, 0),
            sources=tuple(sorted(sources.get(precinct, ()))),
        )
        for precinct in {*votes, *ballots, *finals, *duplicates, *rejected, *sources}
    }
    return roll_up(election, figures), by_device


def _assemble(
    election: Election, unit: Unit, rollups: Mapping[str, Rollup], by_device: Mapping[str | None, Mapping[str, int]]
) -> Results:
    # Rejections of this unit: at the root every one; below it, those naming its devices.
    devices = {dv for u in election.walk(unit.id) for dv in u.devices}
    by_reason: dict[str, int] = {}
    for device, reasons in by_device.items():
        if unit.id == election.root or device in devices:
            for reason, n in reasons.items():
                by_reason[reason] = by_reason.get(reason, 0) + n
    return Results(
        election=election,
        rollup=rollups[unit.id],
        children=tuple(rollups[c] for c in unit.children),
        rejections=sum(by_reason.values()),
        rejections_by_reason=dict(sorted(by_reason.items())),
    )


# -- for people --------------------------------------------------------------------------


def source_counts(sources: Mapping[str, str]) -> str:
    """``tabulator 47, manual 1, both 1``: precincts by where their figures come from."""
    counts = {kind: sum(1 for v in sources.values() if v == kind) for kind in ("tabulator", "manual", "both")}
    return ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def render(results: Results, console: Console) -> None:
    """A summary of the unit, one table per contest with shares, and its child units."""
    election, rollup = results.election, results.rollup
    unit = rollup.unit
    console.print(
        Text(f"{election.name} ({election.id})\n{unit.name} [{unit.kind} {unit.id}]", "bold")
    )
    summary = Table(show_header=False)
    summary.add_column("what")
    summary.add_column("n", justify="right")
    summary.add_row("ballots", f"{rollup.ballots:,}")
    summary.add_row("registered voters", f"{rollup.registered:,}")
    summary.add_row("turnout", percent(rollup.ballots, rollup.registered))
    summary.add_row(
        "precincts reporting",
        f"{rollup.precincts_reporting} of {rollup.precincts_total}"
        f" ({percent(rollup.precincts_reporting, rollup.precincts_total)})",
    )
    summary.add_row(
        "devices with their final batch", f"{rollup.devices_final} of {rollup.devices_total}"
    )
    summary.add_row("batches in the ledger", f"{rollup.batches:,}")
    if by_source := source_counts(rollup.sources_by_precinct):
        summary.add_row("precincts' figures from", by_source)
    summary.add_row("duplicates (not counted)", f"{rollup.duplicates:,}")
    summary.add_row("rejections", f"{results.rejections:,}")
    for reason, n in results.rejections_by_reason.items():
        summary.add_row(f"  rejected: {reason}", f"{n:,}")
    console.print(summary)
    for contest in election.contests:
        votes = rollup.contests.get(contest.id, {})
        total = sum(votes.values())
        title = f"{contest.name} [{contest.id}]"
        table = Table(title=Text(title), min_width=len(title) + 4)
        table.add_column("choice")
        table.add_column("votes", justify="right")
        table.add_column("share", justify="right")
        for choice in contest.choices:
            n = votes.get(choice.id, 0)
            table.add_row(Text(f"{choice.name} ({choice.id})"), f"{n:,}", percent(n, total))
        table.add_section()
        table.add_row("total", f"{total:,}", "100.00%" if total else "-")
        console.print(table)
    if results.children:
        _render_children(results, console)


def _render_children(results: Results, console: Console) -> None:
    election = results.election
    table = Table(title=Text(f"Units in {results.unit.name}"))
    table.add_column("unit", no_wrap=True)
    table.add_column("name", max_width=24, no_wrap=True, overflow="ellipsis")
    table.add_column("kind")
    table.add_column("ballots", justify="right")
    table.add_column("registered", justify="right")
    table.add_column("turnout", justify="right")
    table.add_column("precincts reporting", justify="right")
    table.add_column("devices final", justify="right")
    for contest in election.contests:
        table.add_column(Text(f"{contest.id} leader"), no_wrap=True)
    for child in results.children:
        leaders: list[Text | str] = []
        for contest in election.contests:
            votes = child.contests.get(contest.id, {})
            total = sum(votes.values())
            if not total:
                leaders.append("-")
                continue
            best = max(contest.choice_ids, key=lambda c: votes.get(c, 0))
            leaders.append(Text(f"{best} {percent(votes.get(best, 0), total)}"))
        table.add_row(
            Text(child.unit.id),
            Text(child.unit.name),
            Text(child.unit.kind),
            f"{child.ballots:,}",
            f"{child.registered:,}",
            percent(child.ballots, child.registered),
            f"{child.precincts_reporting}/{child.precincts_total}",
            f"{child.devices_final}/{child.devices_total}",
            *leaders,
        )
    console.print(table)
