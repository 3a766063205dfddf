"""The buffer's messages table: pending, in-flight and quarantined envelopes.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("election", sa.String(64), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("body_hash", sa.String(64), nullable=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.CheckConstraint(
            "state IN ('pending', 'inflight', 'delivered', 'quarantined')", name="ck_messages_state"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_messages_state_id", "messages", ["state", "id"])
    op.create_index(
        "ux_messages_live",
        "messages",
        ["election", "device", "seq", "body_hash"],
        unique=True,
        sqlite_where=sa.text("state IN ('pending', 'inflight')"),
    )


def downgrade() -> None:
    op.drop_index("ux_messages_live", table_name="messages")
    op.drop_index("ix_messages_state_id", table_name="messages")
    op.drop_table("messages")
