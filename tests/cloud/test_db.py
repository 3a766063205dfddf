"""Schema and engines: migrations build exactly the tables the code uses, on both databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from cloud._exceptions import ConfigError, NotACloudDatabase
from cloud.db import head_revision, make_engine, upgrade
from cloud.migrations import HEAD_REVISION, VERSION_TABLE
from cloud.models import metadata
from cloud.results.results import load_results


def test_migrations_build_exactly_the_tables_the_code_uses(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
        assert context.get_current_revision() == head_revision()


def test_the_head_revision_a_reader_checks_is_the_newest_migration() -> None:
    assert head_revision() == HEAD_REVISION


def test_upgrade_again_changes_nothing(engine: Engine) -> None:
    tables = sorted(inspect(engine).get_table_names())
    assert upgrade(engine) == head_revision()
    assert sorted(inspect(engine).get_table_names()) == tables


def test_sqlite_database_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(engine)
    engine.dispose()
    with sqlite3.connect(tmp_path / "c.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_results_refuse_a_sqlite_file_that_is_not_a_cloud_database_and_leave_it_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    before = path.read_bytes()
    engine = make_engine(f"sqlite:///{path}", create=False, writer=False)

    with pytest.raises(NotACloudDatabase, match="not an EdgeTally cloud database"):
        load_results(engine)

    engine.dispose()
    assert path.read_bytes() == before
    assert not (tmp_path / "other.db-wal").exists()


def test_results_refuse_a_missing_sqlite_file_without_creating_it(tmp_path: Path) -> None:
    with pytest.raises(NotACloudDatabase, match="no database file"):
        make_engine(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://localhost/x", "only sqlite"),
        ("not a url", "not a database URL"),
        ("sqlite:////no/such/dir/c.db", "does not exist"),
    ],
)
def test_make_engine_refuses_unusable_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_engine(url)
