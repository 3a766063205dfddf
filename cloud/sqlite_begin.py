"""``BEGIN IMMEDIATE`` on SQLite, waiting for the write lock in short polls.

SQLite lets one writer at a time in. Its own busy handler (``busy_timeout``) waits for the lock
by sleeping 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms between tries: a worker that
finds the lock taken (another worker on the same file is committing) sleeps on while the lock
is free again, and the other worker, whose next group is ready, takes it again first. Measured
with two workers on one file (benchmarks/cloud.py, gateway bundles): the commit threads spent
about 40 % of their time in that sleep and two workers ingested a third of what one did.

:func:`begin_immediate` tries without SQLite's handler (``busy_timeout`` 0 for that one
statement) and polls every 0.5 to 4 ms itself, for as long as the busy timeout
(``SQLITE_BUSY_TIMEOUT_MS``) allows; then one last try goes through SQLAlchemy, so a lock still
held raises what it always raised (``database is locked``, then ``DatabaseUnavailable`` and the
worker's retry with backoff). Every other statement keeps SQLite's busy handler.
"""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy.engine import Connection

from cloud.config import SQLITE_BUSY_TIMEOUT_MS

_FIRST_POLL_S = 0.0005
_MAX_POLL_S = 0.004
TIMEOUT_S = SQLITE_BUSY_TIMEOUT_MS / 1000


def begin_immediate(conn: Connection) -> None:
    """Emit ``BEGIN IMMEDIATE`` on ``conn``, from the engine's ``begin`` event (cloud/db.py)."""
    raw = conn.connection.dbapi_connection
    if not isinstance(raw, sqlite3.Connection):  # not pysqlite: as before
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    deadline = time.monotonic() + TIMEOUT_S
    delay = _FIRST_POLL_S
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    break  # not the lock: the try below raises it, through SQLAlchemy
            if time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_S)
        # The lock still held at the timeout (or another error): one last try through
        # SQLAlchemy raises what it always raised.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        raw.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
