"""Alembic environment for the gateway buffer.

Run only programmatically (``gateway.buffer.file.migrate``): the caller passes an open SQLAlchemy
connection, already inside the transaction that also claims the file, in
``config.attributes["connection"]``. No logging configuration here: only edgetally/cli.py
installs handlers.
"""

from __future__ import annotations

from alembic import context

from gateway._exceptions import StoreError
from gateway.buffer.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise StoreError("the gateway buffer migrations run only through gateway.buffer.file.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
