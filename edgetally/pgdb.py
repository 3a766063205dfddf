"""A throw-away PostgreSQL database: created when a stack or scenario starts, dropped at its end.

Constructing one does no I/O: the name is chosen (``PREFIX_<12 hex>``) and :attr:`url` is known
at once, so components can be configured before anything runs.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


class ThrowawayDatabase:
    def __init__(self, admin_url: str, prefix: str) -> None:
        """``admin_url``: a server and a role allowed to CREATE DATABASE."""
        self.admin_url = admin_url
        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.url = make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)
        self.created = False

    def _admin(self, statement: str) -> None:
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(statement))
        finally:
            admin.dispose()

    def create(self) -> None:
        if not self.created:
            self._admin(f'CREATE DATABASE "{self.name}"')
            self.created = True
            log.info("created PostgreSQL database %s", self.name)

    def drop(self) -> None:
        """Drop it, connections and all (safe to call twice)."""
        if self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False
