"""Cloud fixtures: a migrated database on a real SQLite file or on the real PostgreSQL server,
a prepared ledger, and signed envelopes of the sample election.

PostgreSQL: one fresh database ``edgetally_test_<random>`` per test session on the server at
127.0.0.1:5432 (override the admin URL with EDGETALLY_TEST_PG_URL), emptied before each test
and dropped at the end. Tests parametrized over ``backend`` run once per database. They skip
only when no server answers there (tests/support/postgres.py); one that refuses is an error.
Under CI (``CI=true``) a missing server fails: the PostgreSQL tests must run there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from cloud import models
from cloud.db import make_engine, upgrade
from cloud.ledger.ledger import Ledger
from protocol import Registry
from tests.cloud.support import Envelopes
from tests.support.postgres import PG_ADMIN_URL, require_server


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session; dropped at the end."""
    require_server(PG_ADMIN_URL)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"edgetally_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    return url


@pytest.fixture
def engine(db_url: str, backend: str) -> Iterator[Engine]:
    """A migrated, empty cloud database (through the real migrations, never create_all)."""
    eng = make_engine(db_url)
    upgrade(eng)
    if backend == "postgres":
        names = ", ".join(t.name for t in models.metadata.sorted_tables)
        with eng.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    yield eng
    eng.dispose()


@pytest.fixture
def ledger(engine: Engine, registry: Registry) -> Ledger:
    """A ledger over ``engine`` with the sample election stored (as `cloud run` starts)."""
    led = Ledger(engine, registry, max_payload_bytes=64 * 1024)
    led.prepare()
    return led


@pytest.fixture(scope="session")
def envelopes(keys_dir: Path) -> Envelopes:
    return Envelopes(keys_dir)
