"""Quarantine flood control: quarantined rows and bytes counted per device, dropped rejects counted.

* ``usage`` gains ``quarantined_batches`` / ``quarantined_bytes``: the quarantined part of
  ``live_*``, so that backpressure admits valid batches on pending + in flight alone
  (``live - quarantined``) and the total quarantine cap is one primary-key read.
* ``quarantine_usage``: one row per device (``''`` for a reject on a topic that names no
  device) holding its quarantined rows and bytes; a row goes when its count reaches 0.
* Both are kept exact by triggers on ``messages``, in the transaction that changes the rows,
  so ``buffer retry`` / ``buffer purge`` (another process) free the caps at once.
* ``quarantine_dropped``: rejects not stored because a cap was reached, counted per
  (device, reason) in the transaction that would have stored them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The 0002 triggers, replaced: they now also keep the quarantined part of the live counters.
_LIVE = "({row}.state <> 'delivered')"
_DELIVERED = "({row}.state = 'delivered')"
_QUARANTINED = "({row}.state = 'quarantined')"


def _adjust(sign: str, row: str, *, quarantine: bool = True) -> str:
    live, delivered, quarantined = (
        c.format(row=row) for c in (_LIVE, _DELIVERED, _QUARANTINED)
    )
    sets = (
        f"live_batches = live_batches {sign} {live},"
        f" live_bytes = live_bytes {sign} {live} * {row}.size,"
        f" delivered_batches = delivered_batches {sign} {delivered},"
        f" delivered_bytes = delivered_bytes {sign} {delivered} * {row}.size"
    )
    if quarantine:
        sets += (
            f", quarantined_batches = quarantined_batches {sign} {quarantined},"
            f" quarantined_bytes = quarantined_bytes {sign} {quarantined} * {row}.size"
        )
    return sets


def _usage_triggers(*, quarantine: bool) -> dict[str, str]:
    changed = "(OLD.state = 'delivered') <> (NEW.state = 'delivered') OR OLD.size <> NEW.size"
    if quarantine:
        changed += " OR (OLD.state = 'quarantined') <> (NEW.state = 'quarantined')"
    return {
        "trg_usage_insert": f"""
            CREATE TRIGGER trg_usage_insert AFTER INSERT ON messages
            BEGIN
                UPDATE usage SET {_adjust("+", "NEW", quarantine=quarantine)} WHERE id = 1;
            END""",
        "trg_usage_delete": f"""
            CREATE TRIGGER trg_usage_delete AFTER DELETE ON messages
            BEGIN
                UPDATE usage SET {_adjust("-", "OLD", quarantine=quarantine)} WHERE id = 1;
            END""",
        "trg_usage_update": f"""
            CREATE TRIGGER trg_usage_update AFTER UPDATE OF state, size ON messages
            WHEN {changed}
            BEGIN
                UPDATE usage SET {_adjust("-", "OLD", quarantine=quarantine)} WHERE id = 1;
                UPDATE usage SET {_adjust("+", "NEW", quarantine=quarantine)} WHERE id = 1;
            END""",
    }


# Per-device quarantine counters. The WHEN clauses keep the hot path (pending inserts,
# pending -> inflight -> delivered) from doing anything but evaluate them.
_ADD = """
    INSERT INTO quarantine_usage (device, rows, bytes) VALUES (coalesce({row}.device, ''), 1, {row}.size)
    ON CONFLICT (device) DO UPDATE SET rows = rows + 1, bytes = bytes + excluded.bytes;"""
_REMOVE = """
    UPDATE quarantine_usage SET rows = rows - 1, bytes = bytes - {row}.size
    WHERE device = coalesce({row}.device, '');
    DELETE FROM quarantine_usage WHERE device = coalesce({row}.device, '') AND rows <= 0;"""
QUARANTINE_TRIGGERS = {
    "trg_quarantine_insert": f"""
        CREATE TRIGGER trg_quarantine_insert AFTER INSERT ON messages
        WHEN NEW.state = 'quarantined'
        BEGIN {_ADD.format(row="NEW")}
        END""",
    "trg_quarantine_delete": f"""
        CREATE TRIGGER trg_quarantine_delete AFTER DELETE ON messages
        WHEN OLD.state = 'quarantined'
        BEGIN {_REMOVE.format(row="OLD")}
        END""",
    "trg_quarantine_update_old": f"""
        CREATE TRIGGER trg_quarantine_update_old AFTER UPDATE OF state, size, device ON messages
        WHEN OLD.state = 'quarantined'
        BEGIN {_REMOVE.format(row="OLD")}
        END""",
    "trg_quarantine_update_new": f"""
        CREATE TRIGGER trg_quarantine_update_new AFTER UPDATE OF state, size, device ON messages
        WHEN NEW.state = 'quarantined'
        BEGIN {_ADD.format(row="NEW")}
        END""",
}


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild: the 0002 triggers name the usage table).
    for name in ("quarantined_batches", "quarantined_bytes"):
        op.add_column(
            "usage", sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.execute(
        "UPDATE usage SET"
        " quarantined_batches = (SELECT count(*) FROM messages WHERE state = 'quarantined'),"
        " quarantined_bytes = (SELECT coalesce(sum(size), 0) FROM messages WHERE state = 'quarantined')"
        " WHERE id = 1"
    )
    op.create_table(
        "quarantine_usage",
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("rows", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("bytes", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.execute(
        "INSERT INTO quarantine_usage (device, rows, bytes)"
        " SELECT coalesce(device, ''), count(*), sum(size) FROM messages"
        " WHERE state = 'quarantined' GROUP BY coalesce(device, '')"
    )
    op.create_table(
        "quarantine_dropped",
        sa.Column("device", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(32), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("bytes", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
    )
    for name, ddl in _usage_triggers(quarantine=True).items():
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(ddl)
    for ddl in QUARANTINE_TRIGGERS.values():
        op.execute(ddl)


def downgrade() -> None:
    for name in QUARANTINE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for name, ddl in _usage_triggers(quarantine=False).items():
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(ddl)
    op.drop_table("quarantine_dropped")
    op.drop_table("quarantine_usage")
    op.drop_column("usage", "quarantined_bytes")
    op.drop_column("usage", "quarantined_batches")
