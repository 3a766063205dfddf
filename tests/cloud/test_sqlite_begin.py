"""Two writers on one SQLite file: the second waits for the write lock by polling
(cloud/sqlite_begin.py), gets it as soon as the first commits, and a lock held past the busy
timeout still fails as ``database is locked``. Real SQLite files, real threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import exc, text
from sqlalchemy.engine import Engine

from cloud import sqlite_begin
from cloud.config import SQLITE_BUSY_TIMEOUT_MS
from cloud.db import READ_ONLY, make_engine


def _engines(path: Path) -> tuple[Engine, Engine]:
    url = f"sqlite:///{path / 'c.db'}"
    first, second = make_engine(url), make_engine(url)
    with first.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    return first, second


def test_a_writer_waiting_for_the_lock_gets_it_once_the_other_commits(tmp_path: Path) -> None:
    first, second = _engines(tmp_path)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with first.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    committed = threading.Event()

    def write() -> None:
        with second.begin() as conn:  # waits here while the first holds the lock
            conn.execute(text("INSERT INTO t VALUES (2)"))
        committed.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert not committed.wait(0.2)  # still held: the second one waits, it does not fail
    release.set()
    holder.join(10)
    writer.join(10)
    assert committed.is_set()
    with second.connect() as conn:
        assert sorted(conn.execute(text("SELECT n FROM t")).scalars()) == [1, 2]
        # the connection keeps SQLite's own busy timeout for every other statement
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS


def test_a_lock_held_past_the_timeout_is_database_is_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_begin, "TIMEOUT_S", 0.2)
    first, second = _engines(tmp_path)
    with first.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(exc.OperationalError, match="database is locked"), second.begin():
            pass
    with second.begin() as conn:  # released: the same connection writes
        conn.execute(text("INSERT INTO t VALUES (2)"))
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS


def test_a_read_only_connection_of_a_writer_engine_reads_while_the_lock_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_begin, "TIMEOUT_S", 0.2)
    first, second = _engines(tmp_path)
    with second.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with first.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (2)"))  # holds the write lock, uncommitted
        with second.connect().execution_options(**{READ_ONLY: True}) as reader:
            assert list(reader.execute(text("SELECT n FROM t")).scalars()) == [1]  # no waiting, no lock
