"""Initial cloud schema: elections, ledger, tallies, precinct_ballots, devices, rejections.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)
HASH = sa.String(64)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "elections",
        sa.Column("election", ID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("stored_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("election", name="pk_elections"),
    )
    op.create_table(
        "ledger",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("election", ID, nullable=False),
        sa.Column("device", ID, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("precinct", ID, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("sig", sa.String(128), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("body_hash", HASH, nullable=False),
        sa.Column("prev", HASH, nullable=False),
        sa.Column("ballots", sa.Integer(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("duplicates", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_duplicate_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ledger"),
        sa.UniqueConstraint("election", "device", "seq", name="uq_ledger_election_device_seq"),
    )
    op.create_table(
        "tallies",
        sa.Column("election", ID, nullable=False),
        sa.Column("contest", ID, nullable=False),
        sa.Column("choice", ID, nullable=False),
        sa.Column("precinct", ID, nullable=False),
        sa.Column("votes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("election", "contest", "choice", "precinct", name="pk_tallies"),
    )
    op.create_table(
        "precinct_ballots",
        sa.Column("election", ID, nullable=False),
        sa.Column("precinct", ID, nullable=False),
        sa.Column("ballots", sa.BigInteger(), nullable=False),
        sa.Column("batches", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("election", "precinct", name="pk_precinct_ballots"),
    )
    op.create_table(
        "devices",
        sa.Column("election", ID, nullable=False),
        sa.Column("device", ID, nullable=False),
        sa.Column("precinct", ID, nullable=False),
        sa.Column("contiguous_seq", sa.Integer(), server_default="0", nullable=False),
        sa.Column("contiguous_hash", HASH, nullable=False),
        sa.Column("final_seq", sa.Integer(), nullable=True),
        sa.Column("max_seq", sa.Integer(), server_default="0", nullable=False),
        sa.Column("batches", sa.Integer(), server_default="0", nullable=False),
        sa.Column("duplicates", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("election", "device", name="pk_devices"),
    )
    op.create_table(
        "rejections",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("election", ID, nullable=True),
        sa.Column("device", ID, nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_hash", HASH, nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejections"),
    )
    op.create_index("ix_rejections_reason", "rejections", ["reason"])
    op.create_index(
        "ix_rejections_election_device_seq", "rejections", ["election", "device", "seq"]
    )


def downgrade() -> None:
    op.drop_index("ix_rejections_election_device_seq", table_name="rejections")
    op.drop_index("ix_rejections_reason", table_name="rejections")
    for table in ("rejections", "devices", "precinct_ballots", "tallies", "ledger", "elections"):
        op.drop_table(table)
