"""The buffer schema's light half: what it knows without asking Alembic."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from gateway.buffer.schema import MIGRATIONS, REVISIONS, head_revision, known_revisions


def test_the_listed_revisions_are_the_shipped_migrations_oldest_first() -> None:
    scripts = ScriptDirectory(str(MIGRATIONS))
    assert tuple(reversed([s.revision for s in scripts.walk_revisions()])) == REVISIONS
    assert scripts.get_current_head() == head_revision()
    assert known_revisions() == frozenset(REVISIONS)
