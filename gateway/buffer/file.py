"""Opening a buffer file: the SQLite engine and its pragmas, the WAL mark, the lock, the migrations.

:class:`gateway.buffer.store.Buffer.open` uses these in order: recognise the file (read-only,
gateway/buffer/schema.py), :func:`acquire_lock` (an exclusive ``flock`` on ``<buffer>.lock``,
so two gateways never share one buffer), :func:`make_engine`, :func:`prepare_file` (application
id and WAL), then :func:`migrate` inside one transaction.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from gateway._exceptions import BufferLocked, StoreError
from gateway.buffer.schema import (
    APPLICATION_ID,
    BUSY_TIMEOUT_MS,
    MIGRATIONS,
    readonly_connect,
    translate,
)
from gateway.config import SyncMode


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def migrate(connection: Connection, path: Path) -> None:
    """Bring the schema to the newest revision, inside the caller's transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise StoreError(f"buffer {path}: migration failed: {exc}") from exc


def make_engine(path: Path, sync: SyncMode, max_page_count: int | None) -> Engine:
    """A SQLAlchemy engine on the file: busy timeout, sync mode, page cap; writes BEGIN IMMEDIATE."""
    engine = create_engine(
        URL.create("sqlite+pysqlite", database=str(path)),
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
    )
    pragmas = [f"busy_timeout = {BUSY_TIMEOUT_MS}", f"synchronous = {sync.value.upper()}"]
    if max_page_count is not None:
        pragmas.append(f"max_page_count = {int(max_page_count)}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine



def prepare_file(engine: Engine, path: Path, *, new: bool) -> None:
    """Mark a new file as a gateway buffer (before WAL, so the mark is in the main file)."""
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if new:
                cursor.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            cursor.close()
        finally:
            raw.close()
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise translate(exc, path, "open") from exc
    if str(mode).lower() != "wal":
        raise StoreError(f"buffer {path}: SQLite refused WAL mode (journal_mode is {mode})")


def acquire_lock(path: Path) -> IO[bytes]:
    """Hold an exclusive flock on ``<buffer>.lock`` (which records the holder's pid)."""
    file = lock_path(path)
    try:
        handle = open(file, "a+b")  # noqa: SIM115 - kept open while the buffer is open
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {file}: {exc.strerror}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
    except BlockingIOError as exc:
        handle.seek(0)
        holder = handle.read(32).decode("ascii", "replace").strip() or "unknown"
        handle.close()
        raise BufferLocked(f"buffer {path} is in use by another gateway (pid {holder})") from exc
    except OSError as exc:
        handle.close()
        raise StoreError(f"cannot lock buffer {path}: {exc.strerror}") from exc
    return handle


def readonly_engine(
    path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, quiescent: bool = False
) -> Engine:
    """An engine over :func:`gateway.buffer.schema.readonly_connect`: it can only read ``path``."""
    return create_engine(
        "sqlite+pysqlite://",
        creator=lambda: readonly_connect(path, busy_timeout_ms=busy_timeout_ms, quiescent=quiescent),
        poolclass=NullPool,
    )
