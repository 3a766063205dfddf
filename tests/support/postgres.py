"""The PostgreSQL server the tests use: its admin URL, and whether anything answers there.

Tests that need PostgreSQL skip only when no server answers on its port, and never under CI
(``CI=true``), where the PostgreSQL tests must run; a server that answers but refuses (wrong
user, no right to create databases) is a failure, not a skip.
"""

from __future__ import annotations

import os
import socket

import pytest
from sqlalchemy.engine import make_url

# A URL with the right to CREATE DATABASE; every test session makes its own database there.
PG_ADMIN_URL = os.environ.get(
    "EDGETALLY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def server_answers(url: str = PG_ADMIN_URL, timeout: float = 2.0) -> bool:
    """True if something accepts TCP connections at the URL's host and port."""
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout):
            return True
    except OSError:
        return False


def require_server(url: str = PG_ADMIN_URL) -> str:
    """``url`` if a server answers there; otherwise skip the test, or fail it under CI."""
    if server_answers(url):
        return url
    where = make_url(url).host
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but no PostgreSQL server answers at {where}")
    pytest.skip(f"no PostgreSQL server answers at {where}")
