"""Engines, migrations and the two upserts the ledger needs, on SQLite and PostgreSQL alike.

SQLite runs in WAL mode with a busy timeout and ``synchronous=FULL`` (an acknowledged batch
must survive a power cut, and group commits make the fsync cheap). SQLAlchemy emits BEGIN
itself (``BEGIN IMMEDIATE`` for writers) so that a transaction's reads and writes are one
unit on SQLite too. PostgreSQL is reached with ``postgresql+psycopg://``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Table, create_engine, event, exc, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from cloud._exceptions import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    MigrationError,
    NotACloudDatabase,
)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "cloud_schema_version"  # kept in step with migrations/env.py
SQLITE_BUSY_TIMEOUT_MS = 5_000  # then DatabaseUnavailable: the worker retries with backoff
_MIGRATION_LOCK = 0x45544301  # pg_advisory_xact_lock key: "ETC\x01"


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn SQLAlchemy errors into cloud errors naming ``what`` was being done."""
    try:
        yield
    except exc.OperationalError as err:
        raise DatabaseUnavailable(f"{what}: database unavailable: {_first_line(err)}") from err
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            raise DatabaseUnavailable(f"{what}: connection lost: {_first_line(err)}") from err
        raise DatabaseError(f"{what}: {_first_line(err)}") from err
    except exc.SQLAlchemyError as err:
        raise DatabaseError(f"{what}: {_first_line(err)}") from err


def _first_line(err: exc.SQLAlchemyError) -> str:
    """The driver's own message, first line only (SQLAlchemy appends SQL and a link)."""
    source: BaseException = getattr(err, "orig", None) or err
    lines = str(source).strip().splitlines()
    return lines[0] if lines else type(source).__name__


def make_engine(url: str, *, create: bool = True, writer: bool = True) -> Engine:
    """An engine for ``url``. With ``create=False`` a missing SQLite file is an error.

    Does not connect; the first use does.
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as err:
        raise ConfigError(f"--db {url!r} is not a database URL ({err})") from err
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"--db {url!r}: only sqlite:/// and postgresql+psycopg:// are supported")
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ConfigError(
                f"--db {url!r}: the cloud needs a SQLite file, not an in-memory database"
            )
        path = Path(database)
        if not create and not path.exists():
            raise NotACloudDatabase(f"no database file {path}")
        if create and not path.parent.exists():
            raise ConfigError(f"--db {url!r}: directory {path.parent} does not exist")
    try:
        if backend == "sqlite":
            engine = create_engine(parsed)
            _configure_sqlite(engine, writer=writer)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (exc.ArgumentError, ImportError) as err:
        raise ConfigError(f"--db {url!r}: {err}") from err
    return engine


def _configure_sqlite(engine: Engine, *, writer: bool) -> None:
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if writer:  # a reader must not change the file (it may not even be ours)
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


# -- migrations ------------------------------------------------------------------------


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("the cloud package ships no migrations")
    return head


def upgrade(engine: Engine) -> str:
    """Bring the schema to the newest migration (idempotent); return the revision."""
    with translate_errors("migrating the cloud database"), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two workers starting together must not both create the tables.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        try:
            command.upgrade(_alembic_config(conn), "head")
        except CommandError as err:
            raise MigrationError(f"cannot migrate the cloud database: {err}") from err
        revision = _current_revision(conn)
    log.info("cloud database at revision %s", revision)
    return revision or ""


def _current_revision(conn: Connection) -> str | None:
    """The schema revision stamped in the database; ``None`` if it has no cloud schema."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    revisions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(revisions) != 1:
        raise NotACloudDatabase(f"{VERSION_TABLE} holds {len(revisions)} revisions, expected one")
    return str(revisions[0])


def check_schema(engine: Engine) -> None:
    """Refuse a database that is not a cloud database at the current schema."""
    with translate_errors("reading the cloud database"), engine.connect() as conn:
        revision = _current_revision(conn)
    if revision is None:
        raise NotACloudDatabase(
            f"{engine.url.render_as_string(hide_password=True)} is not an EdgeTally cloud database"
            " (run `edgetally cloud migrate --db URL`)"
        )
    head = head_revision()
    if revision != head:
        raise NotACloudDatabase(
            f"cloud database schema is at {revision}, this code needs {head}"
            " (run `edgetally cloud migrate --db URL`)"
        )


# -- upserts ---------------------------------------------------------------------------


def _insert(conn: Connection, table: Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise DatabaseError(f"unsupported database dialect {name!r}")


def upsert_add(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    add: Sequence[str],
) -> None:
    """Insert ``rows``; where the key exists, add each ``add`` column's value to the stored one."""
    if not rows:
        return
    stmt = _insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={name: table.c[name] + stmt.excluded[name] for name in add},
    )
    conn.execute(stmt, list(rows))


def insert_missing(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str]
) -> None:
    """Insert the ``rows`` whose key is not there yet; leave existing rows untouched."""
    if not rows:
        return
    stmt = _insert(conn, table).on_conflict_do_nothing(index_elements=list(key))
    conn.execute(stmt, list(rows))
