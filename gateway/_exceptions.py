"""Errors of the edge gateway.

    GatewayError              root: anything that stops the gateway or one of its commands
    ├── ConfigError           bad command-line input: option values, keys directory, registry
    ├── StoreError            the buffer file cannot be used (SQLite or migration failure)
    │   ├── BufferMissing     no buffer file at the given path (inspection commands)
    │   ├── ForeignFile       the file is not a gateway buffer (not SQLite, or another
    │   │                     application's SQLite); it is refused and left untouched
    │   ├── SchemaTooNew      the buffer was written by a newer gateway (unknown revision)
    │   ├── CorruptBuffer     the file is a gateway buffer but damaged (truncated, pages
    │   │                     overwritten); it is left untouched, the message names the
    │   │                     command that salvages it
    │   ├── BufferLocked      another gateway process has the buffer open, or another
    │   │                     process held its write lock for longer than the wait
    │   ├── NoSuchBatch       an inspection command named a row id the buffer does not hold
    │   └── DiskFull          a write found no room (SQLITE_FULL, ENOSPC, SQLITE_IOERR);
    │                         the transaction was rolled back whole, nothing half-written
    └── ServiceFailed         a supervised task kept failing; the gateway gave up

Errors of the libraries underneath (SQLAlchemy, Alembic, sqlite3) are translated into
these at the module that calls them, with ``raise ... from exc``. MQTT client problems are
not errors here: the links retry with backoff and log what happened.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway package's errors. ``str(err)`` is one line for people."""


class ConfigError(GatewayError):
    pass


class StoreError(GatewayError):
    pass


class BufferMissing(StoreError):
    pass


class ForeignFile(StoreError):
    pass


class SchemaTooNew(StoreError):
    pass


class CorruptBuffer(StoreError):
    pass


class BufferLocked(StoreError):
    pass


class DiskFull(StoreError):
    pass


class NoSuchBatch(StoreError):
    pass


class ServiceFailed(GatewayError):
    pass
