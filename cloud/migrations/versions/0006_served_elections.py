"""Elections a cloud serves: each election's registry and where its cloud signing key lies.

``registry`` is the canonical JSON of the election's registry (devices, public keys, the cloud's
receipt key), stored by ``edgetally cloud elections add`` or by ``cloud run --keys``; workers
read it to serve an election added while they run. ``keys_dir`` is the directory (as the
workers see it) holding ``cloud-signing.key``, the private half of the registry's cloud key.
Both NULL on a row stored before this revision: such an election is served only by a worker
given its ``--keys``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("elections") as batch:
        batch.add_column(sa.Column("registry", sa.Text(), nullable=True))
        batch.add_column(sa.Column("keys_dir", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("elections") as batch:
        batch.drop_column("keys_dir")
        batch.drop_column("registry")
