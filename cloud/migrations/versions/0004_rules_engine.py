"""Rules engine: alerts, stored_rows, dead_letters; devices.ballots (accepted, cumulative).

``devices.ballots`` is what the rules' ``device_ballots()`` reads; the ledger keeps it from now
on, and it is filled here from the batches already in the ledger.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)
HASH = sa.String(64)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _origin() -> list[sa.Column[object]]:
    return [
        sa.Column("election", ID, nullable=True),
        sa.Column("device", ID, nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("row", sa.Text(), nullable=False),
    ]


def upgrade() -> None:
    op.add_column(
        "devices", sa.Column("ballots", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.execute(
        "UPDATE devices SET ballots = COALESCE((SELECT SUM(l.ballots) FROM ledger AS l"
        " WHERE l.election = devices.election AND l.device = devices.device), 0)"
    )
    op.create_table(
        "alerts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        *_origin(),
        sa.Column("raised_at", sa.DateTime(), nullable=False),
        sa.Column("dedup_key", HASH, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint("dedup_key", name="uq_alerts_dedup_key"),
    )
    op.create_index("ix_alerts_election_device_seq", "alerts", ["election", "device", "seq"])
    op.create_table(
        "stored_rows",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        *_origin(),
        sa.Column("stored_at", sa.DateTime(), nullable=False),
        sa.Column("dedup_key", HASH, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stored_rows"),
        sa.UniqueConstraint("dedup_key", name="uq_stored_rows_dedup_key"),
    )
    op.create_index("ix_stored_rows_table_name_id", "stored_rows", ["table_name", "id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        *_origin(),
        sa.Column("failed_at", sa.DateTime(), nullable=False),
        sa.Column("dedup_key", HASH, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.UniqueConstraint("dedup_key", name="uq_dead_letters_dedup_key"),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("ix_stored_rows_table_name_id", table_name="stored_rows")
    op.drop_table("stored_rows")
    op.drop_index("ix_alerts_election_device_seq", table_name="alerts")
    op.drop_table("alerts")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("ballots")
