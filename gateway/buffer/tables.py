"""The buffer's tables as SQLAlchemy sees them: what the gateway's code queries.

The tables are created and upgraded only by the Alembic migrations in
``gateway/buffer/migrations``; these definitions must stay equal to what the migrations build
(tests/gateway/buffer/test_store.py compares them). States, revisions and recognising a file
are in :mod:`gateway.buffer.schema`, which imports no SQLAlchemy.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("election", String(64), nullable=True),
    Column("device", String(64), nullable=True),
    Column("seq", Integer, nullable=True),
    Column("body_hash", String(64), nullable=True),
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("size", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", String(32), nullable=True),
    Column("detail", Text, nullable=True),
    Column("received_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # 0002: history on the row itself.
    Column("first_sent_at", Float, nullable=True),
    Column("last_sent_at", Float, nullable=True),
    Column("delivered_at", Float, nullable=True),
    Column("quarantined_at", Float, nullable=True),
    Column("retried_at", Float, nullable=True),
    CheckConstraint(
        "state IN ('pending', 'inflight', 'delivered', 'quarantined')", name="ck_messages_state"
    ),
    Index("ix_messages_state_id", "state", "id"),
    # One live copy of a batch: a redelivered identical envelope is not buffered twice.
    Index(
        "ux_messages_live",
        "election",
        "device",
        "seq",
        "body_hash",
        unique=True,
        sqlite_where=text("state IN ('pending', 'inflight')"),
    ),
    # Retention: the purge finds expired delivered rows without scanning the others.
    Index("ix_messages_delivered_at", "delivered_at", sqlite_where=text("state = 'delivered'")),
    sqlite_autoincrement=True,
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("first_id", Integer, nullable=True),  # the row, or the first of a purged range
    Column("last_id", Integer, nullable=True),
    Column("rows", Integer, nullable=False, server_default=text("1")),
    Column("reason", String(32), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_events_first_id", "first_id"),
    Index("ix_events_at", "at"),
)

# One row (id 1), kept exact by triggers inside the transactions that change messages.
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("live_batches", Integer, nullable=False, server_default=text("0")),
    Column("live_bytes", Integer, nullable=False, server_default=text("0")),
    Column("delivered_batches", Integer, nullable=False, server_default=text("0")),
    Column("delivered_bytes", Integer, nullable=False, server_default=text("0")),
    # 0003: the quarantined part of live_*; backpressure admits on live - quarantined.
    Column("quarantined_batches", Integer, nullable=False, server_default=text("0")),
    Column("quarantined_bytes", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("id = 1", name="ck_usage_one_row"),
)

# 0003: quarantined rows and bytes per device ('' = a topic that names no device), kept exact
# by triggers; a device's row goes when its count reaches 0.
quarantine_usage = Table(
    "quarantine_usage",
    metadata,
    Column("device", String(64), primary_key=True),
    Column("rows", Integer, nullable=False, server_default=text("0")),
    Column("bytes", Integer, nullable=False, server_default=text("0")),
)

# 0003: rejects not stored because a quarantine cap was reached, per (device, reason).
quarantine_dropped = Table(
    "quarantine_dropped",
    metadata,
    Column("device", String(64), primary_key=True),
    Column("reason", String(32), primary_key=True),
    Column("count", Integer, nullable=False, server_default=text("0")),
    Column("bytes", Integer, nullable=False, server_default=text("0")),
    Column("first_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
)

# What the gateway that last opened the buffer was told (for `buffer stats`, `show`, `retry`).
settings = Table(
    "settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
