"""Alembic migrations of the cloud database, run programmatically by cloud.db.upgrade()."""
