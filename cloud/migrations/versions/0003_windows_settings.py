"""Trend windows and settings: window_tallies, window_ballots, settings (window_seconds = 60).

The windows are filled by the ledger from now on; batches already in the ledger are put in
their windows here, so that an upgraded database is complete and passes the audit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-13
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)
WIDTH = 60  # the default window width, seconds (cloud/results/windows.py DEFAULT_WINDOW_SECONDS)


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_settings"),
    )
    op.create_table(
        "window_tallies",
        sa.Column("election", ID, nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("precinct", ID, nullable=False),
        sa.Column("contest", ID, nullable=False),
        sa.Column("choice", ID, nullable=False),
        sa.Column("votes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "election", "window_start", "precinct", "contest", "choice", name="pk_window_tallies"
        ),
    )
    op.create_table(
        "window_ballots",
        sa.Column("election", ID, nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("precinct", ID, nullable=False),
        sa.Column("ballots", sa.BigInteger(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("election", "window_start", "precinct", name="pk_window_ballots"),
    )
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    """Store the default width and put the batches already in the ledger in windows.

    Self-contained (a migration must not depend on code that changes after it): the same
    bucketing as cloud/results/windows.py, floor(issued_at / width) * width in UTC epoch seconds, over
    the signed bodies' counts. Streams the ledger in issued_at order, one window in memory.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    settings = sa.table("settings", sa.column("name"), sa.column("value"), sa.column("updated_at"))
    conn.execute(settings.insert().values(name="window_seconds", value=str(WIDTH), updated_at=now))
    ledger = sa.table(
        "ledger",
        sa.column("election"),
        sa.column("precinct"),
        sa.column("ballots"),
        sa.column("body"),
        sa.column("issued_at", sa.DateTime()),
    )
    tallies = sa.table(
        "window_tallies",
        *(sa.column(c) for c in ("election", "window_start", "precinct", "contest", "choice")),
        sa.column("votes"),
    )
    ballots = sa.table(
        "window_ballots",
        *(sa.column(c) for c in ("election", "window_start", "precinct", "ballots", "batches")),
    )
    votes: dict[tuple[str, datetime, str, str, str], int] = {}
    counts: dict[tuple[str, datetime, str], list[int]] = {}

    def flush() -> None:
        if votes:
            conn.execute(
                tallies.insert(),
                [
                    dict(
                        zip(
                            ("election", "window_start", "precinct", "contest", "choice"),
                            k,
                            strict=True,
                        )
                    )
                    | {"votes": v}
                    for k, v in votes.items()
                ],
            )
        if counts:
            conn.execute(
                ballots.insert(),
                [
                    {"election": e, "window_start": w, "precinct": p, "ballots": b, "batches": n}
                    for (e, w, p), (b, n) in counts.items()
                ],
            )
        votes.clear()
        counts.clear()

    current: datetime | None = None
    rows = conn.execute(
        sa.select(ledger).order_by(ledger.c.issued_at).execution_options(yield_per=1000)
    )
    for row in rows:
        epoch = int(row.issued_at.replace(tzinfo=UTC).timestamp())
        start = datetime.fromtimestamp(epoch - epoch % WIDTH, UTC).replace(tzinfo=None)
        if start != current:
            flush()
            current = start
        entry = counts.setdefault((row.election, start, row.precinct), [0, 0])
        entry[0] += row.ballots
        entry[1] += 1
        for contest, choices in json.loads(row.body)["counts"].items():
            for choice, n in choices.items():
                if n:  # as the ledger writes them: no row for a zero
                    key = (row.election, start, row.precinct, contest, choice)
                    votes[key] = votes.get(key, 0) + n
    flush()


def downgrade() -> None:
    for table in ("window_ballots", "window_tallies", "settings"):
        op.drop_table(table)
