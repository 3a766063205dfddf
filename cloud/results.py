"""Results from the cloud database alone: totals per contest, ballots, batches, duplicates,
rejections; as a mapping for ``--json`` and as rich tables for people.

The JSON shape matches ``edgetally devices expected --json`` where the two overlap::

    {"election": id, "ballots": n, "batches": n, "contests": {contest: {choice: n}},
     "ballots_by_precinct": {precinct: n}, "duplicates": n, "rejections": n, "devices_final": n}

``contests`` lists every contest and choice of the election, zeros included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud._exceptions import DatabaseError, ResultsError
from cloud.db import check_schema, translate_errors
from protocol import Election, ElectionModelError, canonical


@dataclass(frozen=True)
class Results:
    election: Election
    ballots: int
    batches: int
    contests: dict[str, dict[str, int]]
    ballots_by_precinct: dict[str, int]
    duplicates: int
    rejections: int
    rejections_by_reason: dict[str, int]
    devices_final: int
    devices_total: int

    def to_mapping(self) -> dict[str, Any]:
        return {
            "election": self.election.id,
            "ballots": self.ballots,
            "batches": self.batches,
            "contests": self.contests,
            "ballots_by_precinct": self.ballots_by_precinct,
            "duplicates": self.duplicates,
            "rejections": self.rejections,
            "devices_final": self.devices_final,
        }


def load_results(engine: Engine, election_id: str | None = None) -> Results:
    """Read the results of ``election_id`` (default: the only election in the database)."""
    check_schema(engine)
    with translate_errors("reading results"), engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # one snapshot for every query below
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            election = _election(conn, election_id)
            return _read(conn, election)


def _election(conn: Connection, election_id: str | None) -> Election:
    e = models.elections.c
    rows = conn.execute(select(e.election, e.definition).order_by(e.election)).all()
    if not rows:
        raise ResultsError(
            "the database holds no election yet (has `edgetally cloud run` started?)"
        )
    if election_id is None:
        if len(rows) > 1:
            ids = ", ".join(r.election for r in rows)
            raise ResultsError(
                f"the database holds several elections ({ids}); pick one with --election"
            )
        row = rows[0]
    else:
        matching = [r for r in rows if r.election == election_id]
        if not matching:
            raise ResultsError(f"the database holds no election {election_id!r}")
        row = matching[0]
    try:
        return Election.from_mapping(canonical.loads(row.definition, what="stored election"))
    except ElectionModelError as err:
        raise DatabaseError(
            f"stored definition of election {row.election!r} is unreadable: {err}"
        ) from err


def _read(conn: Connection, election: Election) -> Results:
    contests = {c.id: dict.fromkeys(c.choice_ids, 0) for c in election.contests}
    t = models.tallies.c
    for contest, choice, votes in conn.execute(
        select(t.contest, t.choice, func.sum(t.votes))
        .where(t.election == election.id)
        .group_by(t.contest, t.choice)
    ):
        contests.setdefault(contest, {})[choice] = int(votes)
    p = models.precinct_ballots.c
    by_precinct = {
        precinct: int(ballots)
        for precinct, ballots in conn.execute(
            select(p.precinct, p.ballots).where(p.election == election.id).order_by(p.precinct)
        )
    }
    lc = models.ledger.c
    batches, duplicates = conn.execute(
        select(func.count(), func.coalesce(func.sum(lc.duplicates), 0)).where(
            lc.election == election.id
        )
    ).one()
    r = models.rejections.c
    by_reason = {
        reason: int(n)
        for reason, n in conn.execute(
            select(r.reason, func.count())
            .where((r.election == election.id) | r.election.is_(None))
            .group_by(r.reason)
            .order_by(r.reason)
        )
    }
    d = models.devices.c
    devices_total, devices_final = conn.execute(
        select(func.count(), func.count(d.final_seq)).where(d.election == election.id)
    ).one()
    return Results(
        election=election,
        ballots=sum(by_precinct.values()),
        batches=int(batches),
        contests=contests,
        ballots_by_precinct=by_precinct,
        duplicates=int(duplicates),
        rejections=sum(by_reason.values()),
        rejections_by_reason=by_reason,
        devices_final=int(devices_final),
        devices_total=int(devices_total),
    )


def render(results: Results, console: Console) -> None:
    """Print the results as rich tables: a summary, then one table per contest."""
    election = results.election
    summary = Table(title=f"{election.name} ({election.id})", show_header=False)
    summary.add_column("what")
    summary.add_column("n", justify="right")
    summary.add_row("ballots", f"{results.ballots:,}")
    summary.add_row("batches in the ledger", f"{results.batches:,}")
    summary.add_row("duplicates (not counted)", f"{results.duplicates:,}")
    summary.add_row("rejections", f"{results.rejections:,}")
    summary.add_row(
        "devices with their final batch", f"{results.devices_final} of {results.devices_total}"
    )
    for reason, n in results.rejections_by_reason.items():
        summary.add_row(f"  rejected: {reason}", f"{n:,}")
    console.print(summary)
    for contest in election.contests:
        votes = results.contests.get(contest.id, {})
        total = sum(votes.values())
        table = Table(title=f"{contest.name} [{contest.id}]")
        table.add_column("choice")
        table.add_column("votes", justify="right")
        table.add_column("share", justify="right")
        for choice in contest.choices:
            n = votes.get(choice.id, 0)
            share = f"{100 * n / total:.2f}%" if total else "-"
            table.add_row(f"{choice.name} ({choice.id})", f"{n:,}", share)
        table.add_section()
        table.add_row("total", f"{total:,}", "100.00%" if total else "-")
        console.print(table)
