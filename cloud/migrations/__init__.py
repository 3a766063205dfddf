"""Alembic migrations of the cloud database, run programmatically by cloud.db.upgrade().

What a reader must know of them without importing Alembic or SQLAlchemy (``edgetally cloud
results`` on a SQLite file imports neither): the version table, the head revision
(tests/cloud/test_db.py checks it against Alembic's own reading of ``versions/``, so a new
migration fails that test until it is named here), and how a database at another revision
is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud._exceptions import NotACloudDatabase

VERSION_TABLE = "cloud_schema_version"
HEAD_REVISION = "0007"


def one_revision(stamped: Sequence[object]) -> str:
    """The revision in the version table's rows (there must be exactly one)."""
    if len(stamped) != 1:
        raise NotACloudDatabase(f"{VERSION_TABLE} holds {len(stamped)} revisions, expected one")
    return str(stamped[0])


def require_head(revision: str | None, where: str) -> None:
    """Refuse a database with no cloud schema (``revision`` None) or at another revision."""
    if revision is None:
        raise NotACloudDatabase(
            f"{where} is not an EdgeTally cloud database (run `edgetally cloud migrate --db URL`)"
        )
    if revision != HEAD_REVISION:
        raise NotACloudDatabase(
            f"cloud database schema is at {revision}, this code needs {HEAD_REVISION}"
            " (run `edgetally cloud migrate --db URL`)"
        )
