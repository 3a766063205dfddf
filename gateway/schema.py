"""The buffer file's schema, its states, and how a gateway buffer file is recognised.

A buffer is one SQLite file (WAL mode) whose header carries ``PRAGMA application_id``
:data:`APPLICATION_ID`. The tables are created and upgraded only by the Alembic migrations
in ``gateway/migrations``; :data:`messages` below is what the code queries and must stay
equal to what the migrations build (a test compares them).

Row life: ``pending`` -> ``inflight`` -> deleted when the cloud broker PUBACKs it
(``delivered`` is reserved for a retention window, issue 3); ``quarantined`` rows are
kept for inspection and never forwarded.
"""

from __future__ import annotations

import sqlite3
import stat
from enum import Enum, StrEnum
from pathlib import Path

from sqlalchemy import (
    CheckConstraint,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    text,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from gateway._exceptions import BufferMissing, ForeignFile, StoreError

APPLICATION_ID = 0x45544757  # "ETGW"
BUSY_TIMEOUT_MS = 10_000


class State(StrEnum):
    PENDING = "pending"
    INFLIGHT = "inflight"
    DELIVERED = "delivered"
    QUARANTINED = "quarantined"


LIVE_STATES = (State.PENDING, State.INFLIGHT)

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
    sqlite_autoincrement=True,
)


class FileKind(Enum):
    EMPTY = "empty"  # a zero-byte file: SQLite treats it as a new database
    BUFFER = "buffer"


def readonly_engine(path: Path) -> Engine:
    """An engine that can only read ``path`` (SQLite ``mode=ro``); nothing it does writes the file."""
    uri = path.resolve().as_uri() + "?mode=ro"

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return connection

    return create_engine("sqlite+pysqlite://", creator=connect, poolclass=NullPool)


def identify(path: Path) -> FileKind:
    """Say whether ``path`` is a gateway buffer; raise if it is missing or foreign.

    Only reads: the application id is read through a read-only SQLite connection, so a
    foreign file is never modified.
    """
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise BufferMissing(f"no buffer file at {path}") from exc
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ForeignFile(f"{path} is not a regular file, so it is not a gateway buffer")
    if info.st_size == 0:
        return FileKind.EMPTY
    engine = readonly_engine(path)
    try:
        with engine.connect() as conn:
            app_id = int(conn.exec_driver_sql("PRAGMA application_id").scalar() or 0)
    except SQLAlchemyError as exc:
        raise ForeignFile(
            f"{path} is not an SQLite database, so it is not a gateway buffer; it was left unchanged"
        ) from exc
    finally:
        engine.dispose()
    if app_id != APPLICATION_ID:
        raise ForeignFile(
            f"{path} is an SQLite database of another application (application_id {app_id:#x},"
            f" a gateway buffer has {APPLICATION_ID:#x}); it was left unchanged"
        )
    return FileKind.BUFFER
