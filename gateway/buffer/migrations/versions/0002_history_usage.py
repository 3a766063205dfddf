"""Delivered rows kept for a retention window; history columns and events; exact usage counters.

* ``messages`` gains first_sent_at, last_sent_at, delivered_at, quarantined_at, retried_at
  and a partial index on delivered_at (the retention purge reads only expired rows).
* ``events``: the rare transitions (release, restart, retry, purge, recovery).
* ``usage``: one row of counters, kept exact by triggers on ``messages``, so that reading
  the quota after every group commit costs one primary-key lookup, and a CLI that changes
  the file under a running gateway keeps the counters right in its own transaction.
* ``settings``: what the gateway that opened the file was configured with.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HISTORY = ("first_sent_at", "last_sent_at", "delivered_at", "quarantined_at", "retried_at")

# live = pending + inflight + quarantined; delivered apart. Only the category matters, so
# the update trigger does nothing for pending -> inflight (the hot path's fetch_pack).
_LIVE = "({row}.state <> 'delivered')"
_DELIVERED = "({row}.state = 'delivered')"


def _adjust(sign: str, row: str) -> str:
    live, delivered = _LIVE.format(row=row), _DELIVERED.format(row=row)
    return (
        f"live_batches = live_batches {sign} {live},"
        f" live_bytes = live_bytes {sign} {live} * {row}.size,"
        f" delivered_batches = delivered_batches {sign} {delivered},"
        f" delivered_bytes = delivered_bytes {sign} {delivered} * {row}.size"
    )


TRIGGERS = {
    "trg_usage_insert": f"""
        CREATE TRIGGER trg_usage_insert AFTER INSERT ON messages
        BEGIN
            UPDATE usage SET {_adjust("+", "NEW")} WHERE id = 1;
        END""",
    "trg_usage_delete": f"""
        CREATE TRIGGER trg_usage_delete AFTER DELETE ON messages
        BEGIN
            UPDATE usage SET {_adjust("-", "OLD")} WHERE id = 1;
        END""",
    "trg_usage_update": f"""
        CREATE TRIGGER trg_usage_update AFTER UPDATE OF state, size ON messages
        WHEN (OLD.state = 'delivered') <> (NEW.state = 'delivered') OR OLD.size <> NEW.size
        BEGIN
            UPDATE usage SET {_adjust("-", "OLD")} WHERE id = 1;
            UPDATE usage SET {_adjust("+", "NEW")} WHERE id = 1;
        END""",
}


def upgrade() -> None:
    for name in HISTORY:
        op.add_column("messages", sa.Column(name, sa.Float(), nullable=True))
    op.execute(
        "UPDATE messages SET quarantined_at = updated_at WHERE state = 'quarantined'"
    )
    op.create_index(
        "ix_messages_delivered_at",
        "messages",
        ["delivered_at"],
        sqlite_where=sa.text("state = 'delivered'"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("first_id", sa.Integer(), nullable=True),
        sa.Column("last_id", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_events_first_id", "events", ["first_id"])
    op.create_index("ix_events_at", "events", ["at"])
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("live_batches", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("live_bytes", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("delivered_batches", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("delivered_bytes", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.CheckConstraint("id = 1", name="ck_usage_one_row"),
    )
    op.execute(
        "INSERT INTO usage (id, live_batches, live_bytes, delivered_batches, delivered_bytes)"
        " SELECT 1,"
        " coalesce(sum(state <> 'delivered'), 0), coalesce(sum((state <> 'delivered') * size), 0),"
        " coalesce(sum(state = 'delivered'), 0), coalesce(sum((state = 'delivered') * size), 0)"
        " FROM messages"
    )
    for ddl in TRIGGERS.values():
        op.execute(ddl)
    op.create_table(
        "settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settings")
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("usage")
    op.drop_index("ix_events_at", table_name="events")
    op.drop_index("ix_events_first_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_messages_delivered_at", table_name="messages")
    op.execute("DELETE FROM messages WHERE state = 'delivered'")  # 0001 deleted them on PUBACK
    for name in reversed(HISTORY):
        op.drop_column("messages", name)
