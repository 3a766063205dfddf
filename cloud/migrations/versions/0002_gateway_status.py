"""Gateway status: the latest status message of each gateway.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_status",
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("uplink", sa.String(8), nullable=True),
        sa.Column("edge", sa.String(8), nullable=True),
        sa.Column("pending", sa.BigInteger(), nullable=True),
        sa.Column("inflight", sa.BigInteger(), nullable=True),
        sa.Column("delivered", sa.BigInteger(), nullable=True),
        sa.Column("quarantined", sa.BigInteger(), nullable=True),
        sa.Column("oldest_pending_age_s", sa.Float(), nullable=True),
        sa.Column("ingress_rate", sa.Float(), nullable=True),
        sa.Column("egress_rate", sa.Float(), nullable=True),
        sa.Column("rate_interval_s", sa.Float(), nullable=True),
        sa.Column("status_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("gateway", name="pk_gateway_status"),
    )


def downgrade() -> None:
    op.drop_table("gateway_status")
