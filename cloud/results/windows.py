"""Ballots over time: tumbling windows of the signed ``issued_at``, kept by the ledger.

Each accepted batch adds its votes to ``window_tallies`` (election, window start, precinct,
contest, choice) and its ballots to ``window_ballots`` (election, window start, precinct), in
the ledger's transaction (:func:`write_windows`, called by cloud/ledger/store.py), so a
duplicate, which is never accepted, never counts twice. A choice with no vote in a window has
no row (readers take a missing row as zero).

Which time: ``issued_at``, the time the device closed the batch, as it signed it. It is part
of the body, so the same batch always falls in the same window, whichever worker records it,
however late it arrives (a backlog drained after an outage lands where it was counted, not as a
spike at the time of the drain), and the audit can recompute every window from the ledger. The
time the cloud received a batch is none of these. The cost: windows show the devices' clocks.

A window of width ``w`` seconds starts at ``floor(epoch(issued_at) / w) * w`` (UTC). The width is
the setting ``window_seconds`` (table ``settings``; 60 unless changed), read inside each
transaction that writes windows, so rows of two widths never mix: changing it
(:func:`set_window_width`, `edgetally cloud settings --window-seconds N`) rebuilds every window
from the ledger in the same transaction that stores the new width.

Cost, measured on SQLite (one worker, groups of 500, a replay spanning ~5 windows per group):
about 10% of ingest time, most of it the two upserts; a live stream, whose groups fall in one
or two windows, writes fewer rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud._exceptions import ConfigError, DatabaseError
from cloud.db import check_schema, insert_missing, translate_errors, upsert_add
from protocol import ProtocolError, VerifiedBatch, parse_body
from protocol.election import parse_timestamp

log = logging.getLogger(__name__)

WINDOW_SETTING = "window_seconds"
DEFAULT_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 86_400
_FLUSH_ROWS = 5_000  # rebuild: rows per INSERT

VoteKey = tuple[str, str, str]  # (precinct, contest, choice)


def window_start(moment: datetime, width: int) -> datetime:
    """The start (aware UTC) of the window of ``width`` seconds holding ``moment``."""
    epoch = int(moment.timestamp())  # issued_at has second precision
    return datetime.fromtimestamp(epoch - epoch % width, UTC)


def check_width(seconds: int) -> int:
    if not 1 <= seconds <= MAX_WINDOW_SECONDS:
        raise ConfigError(
            f"--window-seconds must be between 1 and {MAX_WINDOW_SECONDS}, got {seconds}"
        )
    return seconds


# -- the width setting -----------------------------------------------------------------


def read_width(conn: Connection, *, lock: bool = False) -> int:
    """The stored window width; stores the default first if the row is missing.

    ``lock`` takes a share lock on the row (PostgreSQL) so that a width change waits for the
    transactions writing windows, and they for it: windows are written with one width only.
    """
    s = models.settings.c
    query = select(s.value).where(s.name == WINDOW_SETTING)
    if lock:
        query = query.with_for_update(read=True)
    value = conn.execute(query).scalar_one_or_none()
    if value is None:
        insert_missing(
            conn,
            models.settings,
            [
                {
                    "name": WINDOW_SETTING,
                    "value": str(DEFAULT_WINDOW_SECONDS),
                    "updated_at": datetime.now(UTC),
                }
            ],
            key=("name",),
        )
        value = conn.execute(query).scalar_one()
    return parse_width(value)


def stored_width(conn: Connection) -> int:
    """The stored window width, read only (the default while the database holds none)."""
    s = models.settings.c
    value = conn.execute(select(s.value).where(s.name == WINDOW_SETTING)).scalar_one_or_none()
    return DEFAULT_WINDOW_SECONDS if value is None else parse_width(value)


def parse_width(value: str) -> int:
    try:
        return check_width(int(value))
    except (ValueError, ConfigError) as err:
        raise DatabaseError(f"setting {WINDOW_SETTING} is {value!r}, not a width") from err


def load_width(engine: Engine) -> int:
    """The stored window width (`edgetally cloud settings`)."""
    check_schema(engine)
    with translate_errors("reading settings"), engine.connect() as conn:
        return stored_width(conn)


def set_window_width(engine: Engine, seconds: int) -> int:
    """Store a new width and rebuild every window from the ledger, in one transaction.

    Returns the number of ledger rows placed in windows. Workers writing meanwhile wait
    (PostgreSQL: the settings row lock; SQLite: the write lock, then their retry backoff).
    """
    check_width(seconds)
    check_schema(engine)
    with translate_errors("changing the window width"), engine.begin() as conn:
        return rebuild_windows(conn, seconds)


def rebuild_windows(conn: Connection, seconds: int) -> int:
    """Inside a transaction: store ``seconds`` as the width, recompute every window."""
    now = datetime.now(UTC)
    read_width(conn, lock=False)  # make sure the row exists
    s = models.settings.c
    conn.execute(
        models.settings.update()
        .where(s.name == WINDOW_SETTING)
        .values(value=str(seconds), updated_at=now)
    )  # from here on, the row is locked until commit (PostgreSQL)
    conn.execute(delete(models.window_tallies))
    conn.execute(delete(models.window_ballots))
    placed = 0
    tallies: list[dict[str, Any]] = []
    ballots: list[dict[str, Any]] = []
    for sums in ledger_windows(conn, None, seconds):
        placed += sums.batches
        tallies.extend(sums.tally_rows())
        ballots.extend(sums.ballot_rows())
        if len(tallies) + len(ballots) >= _FLUSH_ROWS:
            _insert(conn, tallies, ballots)
    _insert(conn, tallies, ballots)
    log.info("window width is now %d s; %d ledger rows placed in windows", seconds, placed)
    return placed


def _insert(conn: Connection, tallies: list[dict[str, Any]], ballots: list[dict[str, Any]]) -> None:
    if tallies:
        conn.execute(models.window_tallies.insert(), tallies)
    if ballots:
        conn.execute(models.window_ballots.insert(), ballots)
    tallies.clear()
    ballots.clear()


# -- kept by the ledger ----------------------------------------------------------------


def write_windows(conn: Connection, batches: Sequence[VerifiedBatch]) -> None:
    """Add the accepted ``batches`` to their windows (inside the ledger's transaction)."""
    if not batches:
        return
    width = read_width(conn, lock=True)
    starts: dict[str, datetime] = {}  # batches of a group share few issued_at values
    votes: dict[tuple[str, datetime, str, str, str], int] = {}
    counts: dict[tuple[str, datetime, str], list[int]] = {}
    for batch in batches:
        body = batch.body
        start = starts.get(body.issued_at)
        if start is None:
            start = window_start(parse_timestamp(body.issued_at, "issued_at"), width)
            starts[body.issued_at] = start
        entry = counts.setdefault((body.election, start, body.precinct), [0, 0])
        entry[0] += body.ballots
        entry[1] += 1
        for contest, choices in body.counts.items():
            for choice, n in choices.items():
                if n:  # a missing row is a zero: fewer rows to write
                    key = (body.election, start, body.precinct, contest, choice)
                    votes[key] = votes.get(key, 0) + n
    upsert_add(
        conn,
        models.window_tallies,
        [
            {
                "election": e,
                "window_start": w,
                "precinct": p,
                "contest": c,
                "choice": ch,
                "votes": v,
            }
            for (e, w, p, c, ch), v in sorted(votes.items())
        ],
        key=("election", "window_start", "precinct", "contest", "choice"),
        add=("votes",),
        distinct=True,
    )
    upsert_add(
        conn,
        models.window_ballots,
        [
            {"election": e, "window_start": w, "precinct": p, "ballots": b, "batches": n}
            for (e, w, p), (b, n) in sorted(counts.items())
        ],
        key=("election", "window_start", "precinct"),
        add=("ballots", "batches"),
        distinct=True,
    )


# -- recomputed from the ledger (rebuild, audit) -----------------------------------------


@dataclass
class WindowSums:
    """One window's figures for one election, per precinct."""

    election: str
    start: datetime
    votes: dict[VoteKey, int] = field(default_factory=dict)
    ballots: dict[str, list[int]] = field(default_factory=dict)  # precinct -> [ballots, batches]

    @property
    def batches(self) -> int:
        return sum(n for _, n in self.ballots.values())

    def tally_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "election": self.election,
                "window_start": self.start,
                "precinct": p,
                "contest": c,
                "choice": ch,
                "votes": v,
            }
            for (p, c, ch), v in sorted(self.votes.items())
        ]

    def ballot_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "election": self.election,
                "window_start": self.start,
                "precinct": p,
                "ballots": b,
                "batches": n,
            }
            for p, (b, n) in sorted(self.ballots.items())
        ]


def ledger_windows(
    conn: Connection, election: str | None, width: int, *, skip_unreadable: bool = False
) -> Iterator[WindowSums]:
    """Stream the ledger in ``issued_at`` order and yield each window's sums, one at a time.

    A row is placed by its ``issued_at`` column (the audit checks that the columns are the
    body's) and counted from its body: precinct, ballots, counts. Memory: one window (per
    election). A body that does not parse raises :class:`DatabaseError`, or with
    ``skip_unreadable`` is counted from its columns without votes (the audit, which reports
    that body under its signature check).
    """
    lc = models.ledger.c
    query = select(lc.election, lc.device, lc.seq, lc.precinct, lc.ballots, lc.body, lc.issued_at)
    if election is not None:
        query = query.where(lc.election == election)
    query = query.order_by(lc.issued_at)
    current: dict[str, WindowSums] = {}
    start: datetime | None = None
    counts: Mapping[str, Mapping[str, int]]
    for row in conn.execute(query.execution_options(yield_per=1000)):
        row_start = window_start(row.issued_at, width)
        if row_start != start:
            yield from _emit(current)
            start = row_start
        sums = current.get(row.election)
        if sums is None:
            sums = current[row.election] = WindowSums(row.election, row_start)
        try:
            body = parse_body(row.body.encode("utf-8"))
        except ProtocolError as err:
            if not skip_unreadable:
                raise DatabaseError(
                    f"device={row.device} seq={row.seq}: the ledger body does not parse: {err}"
                ) from err
            precinct, ballots, counts = row.precinct, int(row.ballots), {}
        else:
            precinct, ballots, counts = body.precinct, body.ballots, body.counts
        entry = sums.ballots.setdefault(precinct, [0, 0])
        entry[0] += ballots
        entry[1] += 1
        for contest, choices in counts.items():
            for choice, n in choices.items():
                if n:  # as write_windows: no row for a zero
                    key = (precinct, contest, choice)
                    sums.votes[key] = sums.votes.get(key, 0) + n
    yield from _emit(current)


def _emit(current: dict[str, WindowSums]) -> Iterator[WindowSums]:
    for election in sorted(current):
        yield current[election]
    current.clear()
