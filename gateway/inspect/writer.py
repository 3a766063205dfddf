"""The writing commands' access to a buffer file: short ``BEGIN IMMEDIATE`` transactions.

``retry`` and ``purge`` write through SQLAlchemy (they share ``record_purge`` with the
gateway's own store); each transaction waits at most ``--wait`` seconds for SQLite's lock, so
it queues behind the running gateway's group commits for a few milliseconds and never holds
them up for long.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from gateway.buffer.schema import translate
from gateway.inspect.snapshot import DEFAULT_WAIT_S, require_buffer


@contextmanager
def writer(path: Path, *, wait_s: float = DEFAULT_WAIT_S) -> Iterator[Engine]:
    """An engine whose transactions are ``BEGIN IMMEDIATE`` with a ``wait_s`` busy timeout.

    Use ``with engine.begin() as conn`` for each short transaction; errors inside are
    translated by :func:`write_transaction`.
    """
    require_buffer(path, wait_s)
    engine = create_engine(
        URL.create("sqlite+pysqlite", database=str(path)),
        connect_args={"check_same_thread": False, "timeout": wait_s},
        poolclass=NullPool,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def write_transaction(engine: Engine, path: Path, what: str, wait_s: float) -> Iterator[Connection]:
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise translate(exc, path, what, wait_s=wait_s) from exc
