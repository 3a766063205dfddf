"""Alembic environment for the cloud database.

Run only through :func:`cloud.db.upgrade`, which hands over an open connection in
``config.attributes["connection"]``. No logging configuration here: only edgetally/cli.py
installs handlers.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cloud.migrations import VERSION_TABLE
from cloud.models import metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("cloud migrations run only through cloud.db.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite too: cloud.db makes SQLAlchemy emit BEGIN, so DDL is transactional there.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError(
        "offline (SQL script) migrations are not supported; use `edgetally cloud migrate`"
    )
run_migrations_online()
