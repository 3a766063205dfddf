"""Gap repairs: one row per seq gap the ledger saw in a device's chain.

``detected_at`` when a committed group left the range missing below the device's highest held
seq; ``requested_at``/``requests`` when the cloud published repair requests for it;
``repaired_at`` when a later group filled the whole range (NULL: the gap is still open).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "repairs",
        sa.Column("election", ID, nullable=False),
        sa.Column("device", ID, nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("detected_at", sa.DateTime(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=True),
        sa.Column("requests", sa.Integer(), server_default="0", nullable=False),
        sa.Column("repaired_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("election", "device", "first_seq", "last_seq", name="pk_repairs"),
    )


def downgrade() -> None:
    op.drop_table("repairs")
