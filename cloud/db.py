"""Engines, migrations and the bulk statements the ledger needs, on SQLite and PostgreSQL alike.

SQLite runs in WAL mode with a busy timeout and ``synchronous=FULL`` (an acknowledged batch
must survive a power cut, and group commits make the fsync cheap). SQLAlchemy emits BEGIN
itself (``BEGIN IMMEDIATE`` for writers) so that a transaction's reads and writes are one
unit on SQLite too. PostgreSQL is reached with ``postgresql+psycopg://``.

Bulk writes (:func:`insert_rows`, :func:`upsert_add`, :func:`insert_missing`,
:func:`update_rows`) are the ledger's hot path: a group of 500 batches writes thousands of
rows. They run through the driver, with values converted by each column's own SQLAlchemy bind
processor (so a UTC datetime is stored exactly as the Core statements store it), as ONE
statement per table and group: on SQLite a multi-row ``INSERT ... VALUES (?, ...), (?, ...)``,
on PostgreSQL ``INSERT ... SELECT * FROM unnest(%b::type[], ...)`` with one array parameter per
column, sent in binary (psycopg spends milliseconds parsing a query with thousands of
placeholders, and escaping text arrays). ``ON CONFLICT`` is the same syntax on both.
SQLAlchemy's per-row parameter processing cost ~10 µs a row; this costs ~1.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Table, create_engine, event, exc, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeEngine

if TYPE_CHECKING:
    from alembic.config import Config

from cloud._exceptions import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    MigrationError,
    NotACloudDatabase,
)
from cloud.config import SQLITE_BUSY_TIMEOUT_MS
from cloud.migrations import VERSION_TABLE, one_revision, require_head
from cloud.sqlite_begin import begin_immediate

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x45544301  # pg_advisory_xact_lock key: "ETC\x01"
# Bound parameters per bulk statement: under SQLite's 32,766 and PostgreSQL's 65,535.
# Execution option: this connection only reads, so on SQLite a writer engine's transaction
# starts with a plain BEGIN and does not wait for (or hold) the write lock.
READ_ONLY = "edgetally_read_only"
_MAX_PARAMS = 30_000
_MAX_ROWS = 1_000  # rows per multi-row INSERT


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
        if writer and not conn.get_execution_options().get(READ_ONLY, False):
            begin_immediate(conn)  # polls for the write lock (cloud/sqlite_begin.py)
        else:
            conn.exec_driver_sql("BEGIN")


# -- migrations ------------------------------------------------------------------------


# Alembic is imported where it is used: it costs ~0.2 s, and most commands only read.


def _alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("the cloud package ships no migrations")
    return head


def upgrade(engine: Engine) -> str:
    """Bring the schema to the newest migration (idempotent); return the revision."""
    from alembic import command
    from alembic.util import CommandError

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
    return one_revision(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all())


def check_schema(engine: Engine) -> None:
    """Refuse a database that is not a cloud database at the current schema."""
    with translate_errors("reading the cloud database"), engine.connect() as conn:
        revision = _current_revision(conn)
    require_head(revision, engine.url.render_as_string(hide_password=True))


# -- bulk statements ---------------------------------------------------------------------


def placeholder(dialect: Dialect) -> str:
    """The driver's positional parameter marker: ``?`` (sqlite3) or ``%s`` (psycopg)."""
    if dialect.paramstyle == "qmark":
        return "?"
    if dialect.paramstyle in ("format", "pyformat"):
        return "%s"
    raise DatabaseError(f"unsupported parameter style {dialect.paramstyle!r}")


def quote(dialect: Dialect, name: str) -> str:
    return str(dialect.identifier_preparer.quote(name))


def bind_converter(dialect: Dialect, column: Column[Any]) -> Callable[[Any], Any] | None:
    """The SQLAlchemy bind processor of ``column`` on ``dialect`` (None if values pass as-is)."""
    return _converter(dialect, column.type)


@lru_cache(maxsize=256)
def _converter(dialect: Dialect, type_: TypeEngine[Any]) -> Callable[[Any], Any] | None:
    processor: Callable[[Any], Any] | None = type_.bind_processor(dialect)
    return processor


def _columns(
    dialect: Dialect, table: Table, names: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> list[list[Any]]:
    """Per column, its values in ``rows``, converted for the driver by the column's type."""
    values: list[list[Any]] = []
    for name in names:
        convert = bind_converter(dialect, table.c[name])
        if convert is None:
            values.append([row[name] for row in rows])
            continue
        seen: dict[Any, Any] = {}  # e.g. the same window start many times
        column = []
        for row in rows:
            value = row[name]
            if value is not None:
                converted = seen.get(value)
                if converted is None:
                    converted = seen[value] = convert(value)
                value = converted
            column.append(value)
        values.append(column)
    return values


@lru_cache(maxsize=128)
def _update_sql(
    dialect: Dialect, table: Table, key: tuple[str, ...], set_: tuple[str, ...], add: tuple[str, ...]
) -> str:
    q = functools.partial(quote, dialect)
    t = q(table.name)
    if dialect.name == "postgresql":
        assignments = [f"{q(c)} = v.{q(c)}" for c in set_]
        assignments += [f"{q(c)} = {t}.{q(c)} + v.{q(c)}" for c in add]
        names = (*key, *set_, *add)
        arrays = ", ".join(f"%b::{table.c[c].type.compile(dialect)}[]" for c in names)
        match = " AND ".join(f"{t}.{q(c)} = v.{q(c)}" for c in key)
        return (
            f"UPDATE {t} SET {', '.join(assignments)} FROM unnest({arrays})"
            f" AS v({', '.join(q(c) for c in names)}) WHERE {match}"
        )
    mark = placeholder(dialect)
    assignments = [f"{q(c)} = {mark}" for c in set_] + [f"{q(c)} = {q(c)} + {mark}" for c in add]
    match = " AND ".join(f"{q(c)} = {mark}" for c in key)
    return f"UPDATE {t} SET {', '.join(assignments)} WHERE {match}"


def update_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    set_: Sequence[str] = (),
    add: Sequence[str] = (),
) -> None:
    """For each row, update the table's row with its ``key``: ``set_`` columns take the row's
    value, ``add`` columns are incremented by it. One statement on PostgreSQL (``UPDATE ...
    FROM unnest(...)``), one prepared statement run per row on SQLite. Rows are updated in
    the order given: sort them by key so that concurrent writers lock in the same order."""
    if not rows:
        return
    dialect = conn.dialect
    sql = _update_sql(dialect, table, tuple(key), tuple(set_), tuple(add))
    if dialect.name == "postgresql":
        conn.exec_driver_sql(sql, tuple(_columns(dialect, table, (*key, *set_, *add), rows)))
        return
    values = _columns(dialect, table, (*set_, *add, *key), rows)
    conn.exec_driver_sql(sql, list(zip(*values, strict=True)))


@lru_cache(maxsize=512)
def _insert_sql(
    dialect: Dialect, table: str, columns: tuple[str, ...], rows: int, conflict: str
) -> str:
    mark = placeholder(dialect)
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    names = ", ".join(quote(dialect, c) for c in columns)
    return f"INSERT INTO {quote(dialect, table)} ({names}) VALUES " + ", ".join([one] * rows) + conflict


@lru_cache(maxsize=256)
def _unnest_sql(dialect: Dialect, table: Table, columns: tuple[str, ...], conflict: str) -> str:
    arrays = ", ".join(f"%b::{table.c[c].type.compile(dialect)}[]" for c in columns)
    names = ", ".join(quote(dialect, c) for c in columns)
    return f"INSERT INTO {quote(dialect, table.name)} ({names}) SELECT * FROM unnest({arrays}){conflict}"


def _bulk(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], conflict: str) -> None:
    """Insert ``rows`` (mappings with the same keys): one statement (SQLite: per chunk)."""
    if not rows:
        return
    dialect = conn.dialect
    columns = tuple(rows[0])
    values = _columns(dialect, table, columns, rows)
    if dialect.name == "postgresql":
        conn.exec_driver_sql(_unnest_sql(dialect, table, columns, conflict), tuple(values))
        return
    flat = [value for row in zip(*values, strict=True) for value in row]
    width = len(columns)
    per_statement = max(1, min(_MAX_ROWS, _MAX_PARAMS // width))
    for start in range(0, len(rows), per_statement):
        count = min(per_statement, len(rows) - start)
        sql = _insert_sql(dialect, table.name, columns, count, conflict)
        conn.exec_driver_sql(sql, tuple(flat[start * width : (start + count) * width]))


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (mappings with the same keys), many per statement."""
    _bulk(conn, table, rows, "")


def upsert_add(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    add: Sequence[str],
    distinct: bool = False,
) -> None:
    """Insert ``rows``; where the key exists, add each ``add`` column's value to the stored one.

    Rows that share a key are merged first (the ``add`` columns summed, the rest of the first
    kept, as inserting them one after the other would): PostgreSQL refuses to update one row
    twice in a statement. ``distinct=True``: the caller made the rows from a mapping keyed by
    ``key`` (already summed per key), so that check is skipped (it cost as much as building the rows).
    """
    if not rows:
        return
    keys_of = [] if distinct else [tuple(row[c] for c in key) for row in rows]
    if not distinct and len(set(keys_of)) < len(rows):
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        for k, row in zip(keys_of, rows, strict=True):
            first = merged.get(k)
            if first is None:
                merged[k] = dict(row)
            else:
                for c in add:
                    first[c] += row[c]
        rows = list(merged.values())
    dialect = conn.dialect
    t = quote(dialect, table.name)
    sets = ", ".join(
        f"{quote(dialect, c)} = {t}.{quote(dialect, c)} + excluded.{quote(dialect, c)}"
        for c in add
    )
    keys = ", ".join(quote(dialect, c) for c in key)
    _bulk(conn, table, rows, f" ON CONFLICT ({keys}) DO UPDATE SET {sets}")


def insert_missing(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str]
) -> None:
    """Insert the ``rows`` whose key is not there yet; leave existing rows untouched."""
    if not rows:
        return
    keys = ", ".join(quote(conn.dialect, c) for c in key)
    _bulk(conn, table, rows, f" ON CONFLICT ({keys}) DO NOTHING")
