"""Reading results from a SQLite cloud database with the standard library alone.

``edgetally cloud results --db sqlite:///FILE`` is what an election office polls on results
night; importing SQLAlchemy (and Alembic, for the revision) cost ~0.3 s of each call. This
reader opens the file with ``sqlite3``, refuses a database that is not a cloud database at
the current revision with the same messages as :func:`cloud.db.check_schema`, and runs the
same queries as :func:`cloud.results.results.load_results` in one read transaction
(tests/cloud/results/test_sqlite.py compares the two on one database). Any other URL
(PostgreSQL, a URL with options) is read through SQLAlchemy.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloud._exceptions import DatabaseError, DatabaseUnavailable, NotACloudDatabase
from cloud.config import SQLITE_BUSY_TIMEOUT_MS
from cloud.migrations import VERSION_TABLE, one_revision, require_head
from cloud.results.results import Results, read_results

_PLAIN_FILE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///(?P<path>[^?#%]+)")


def sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///FILE`` URL; None for every other URL."""
    match = _PLAIN_FILE_URL.fullmatch(url)
    if match is None:
        return None
    path = match["path"]
    if path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def _translated(what: str, err: sqlite3.Error) -> DatabaseError:
    lines = str(err).strip().splitlines()
    cause = lines[0] if lines else type(err).__name__
    if isinstance(err, sqlite3.OperationalError):
        return DatabaseUnavailable(f"{what}: database unavailable: {cause}")
    return DatabaseError(f"{what}: {cause}")


@contextmanager
def read_file(path: Path, url: str, what: str) -> Iterator[sqlite3.Connection]:
    """One read transaction on the cloud database in ``path`` (``url`` names it in errors)."""
    if not path.exists():
        raise NotACloudDatabase(f"no database file {path}")
    try:  # mode=rw: never creates a file; this reader only reads
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as err:
        raise _translated("reading the cloud database", err) from err
    try:
        conn.isolation_level = None  # the BEGIN below is ours
        try:
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            require_head(_revision(conn), url)
        except sqlite3.Error as err:
            raise _translated("reading the cloud database", err) from err
        try:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise _translated(what, err) from err
    finally:
        conn.close()


def _revision(conn: sqlite3.Connection) -> str | None:
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
    ).fetchone()
    if has_table is None:
        return None
    return one_revision([row[0] for row in conn.execute(f"SELECT version_num FROM {VERSION_TABLE}")])


def load_results_file(
    path: Path, url: str, election_id: str | None = None, unit_id: str | None = None
) -> Results:
    """:func:`cloud.results.results.load_results`, for the SQLite file at ``path``."""
    with read_file(path, url, "reading results") as conn:

        def query(sql: str, params: Mapping[str, Any]) -> Iterable[Sequence[Any]]:
            return conn.execute(sql, dict(params)).fetchall()

        return read_results(query, election_id, unit_id)
