"""Device sources: ``devices.source`` is ``tabulator`` or ``manual`` (a data-entry station,
`edgetally entry`), so results tell a precinct's tabulator figures from its hand-keyed ones.
Rows written before it are tabulators (the server default).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="tabulator"))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("source")
