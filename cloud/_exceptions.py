"""Errors of the cloud tier. Library errors (SQLAlchemy, Alembic, paho) are translated into
these at the boundary, with ``raise ... from exc``.

    CloudError                  root: anything the cloud tier refuses or cannot do
    ├── ConfigError             bad option values; keys directory or registry unusable
    │   └── RulesFileError      a rules file that cannot be loaded (names file, rule, problem)
    ├── DatabaseError           the database failed in a way retrying will not fix
    │   ├── DatabaseUnavailable the database cannot be reached or is busy: retry later
    │   ├── NotACloudDatabase   no EdgeTally cloud schema there (run `edgetally cloud migrate`)
    │   ├── MigrationError      Alembic could not bring the schema to head
    │   └── ElectionMismatch    the database holds another definition of the same election
    ├── ResultsError            results asked for an election or unit the database does not hold
    └── ExportError             an export that cannot be written where --out says
"""

from __future__ import annotations


class CloudError(Exception):
    """Root of the cloud package's errors; ``str(err)`` is one line for people."""


class ConfigError(CloudError):
    pass


class RulesFileError(ConfigError):
    pass


class DatabaseError(CloudError):
    pass


class DatabaseUnavailable(DatabaseError):
    pass


class NotACloudDatabase(DatabaseError):
    pass


class MigrationError(DatabaseError):
    pass


class ElectionMismatch(DatabaseError):
    pass


class ResultsError(CloudError):
    pass


class ExportError(CloudError):
    pass
