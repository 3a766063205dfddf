"""The buffer file's schema, its states, and how a gateway buffer file is recognised.

A buffer is one SQLite file (WAL mode) whose header carries ``PRAGMA application_id``
:data:`APPLICATION_ID`. The tables are created and upgraded only by the Alembic migrations
in ``gateway/buffer/migrations``; :mod:`gateway.buffer.tables` describes them for SQLAlchemy.
The migrations also create the triggers that keep the ``usage`` row and the per-device
``quarantine_usage`` rows exact (see ``0002_history_usage.py`` and ``0003_quarantine_caps.py``). This module imports neither SQLAlchemy nor Alembic: the
inspection commands recognise and read a buffer with ``sqlite3`` alone.

Row life::

    pending --fetch_pack--> inflight --PUBACK (confirm)--> delivered --retention--> purged
       ^                       |
       +------release/reset----+            quarantined --retry (passes)--> pending

``delivered`` rows are kept for the gateway's retention window, then purged; they never
count toward the quota. ``quarantined`` rows are kept for inspection and never forwarded.
A row's history lives in its own columns (hot path, no extra writes) and, for the rare
transitions (release, restart, retry, purge, recovery), in the ``events`` table.

Recognising a file (:func:`recognise`) only reads: the header bytes, then a read-only
SQLite connection. A missing, foreign, truncated, damaged or too-new file raises a
:class:`StoreError` subclass whose one-line message says what is wrong and what to run.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path

from gateway._exceptions import (
    BufferLocked,
    BufferMissing,
    CorruptBuffer,
    DiskFull,
    ForeignFile,
    SchemaTooNew,
    StoreError,
)

log = logging.getLogger(__name__)

APPLICATION_ID = 0x45544757  # "ETGW"
BUSY_TIMEOUT_MS = 10_000
MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_MAGIC = b"SQLite format 3\x00"


class State(StrEnum):
    PENDING = "pending"
    INFLIGHT = "inflight"
    DELIVERED = "delivered"
    QUARANTINED = "quarantined"


OUTBOUND_STATES = (State.PENDING, State.INFLIGHT)  # not yet delivered: the uplink's work
LIVE_STATES = (State.PENDING, State.INFLIGHT, State.QUARANTINED)  # not delivered (usage.live_*)


class EventKind(StrEnum):
    """Rare transitions, recorded in the ``events`` table (the hot path writes none)."""

    RELEASED = "released"  # inflight -> pending: link lost, publish refused, stop
    RESET = "reset"  # inflight -> pending at start: the previous run did not finish it
    RETRIED = "retried"  # quarantined -> pending: passed verification again
    RETRY_FAILED = "retry_failed"  # still quarantined, with the new reason
    PURGED = "purged"  # rows deleted (one event per purge transaction, for a range of ids)
    RECOVERED = "recovered"  # this file was salvaged from a damaged one


# -- revisions ------------------------------------------------------------------------
# The migrations in gateway/buffer/migrations/versions, oldest first. Listed here so that
# recognising a file imports neither Alembic nor SQLAlchemy (the inspection commands answer in
# a fraction of a second); tests/gateway/buffer/test_schema.py checks this list against
# Alembic's own reading of the migrations, so a new migration fails it until added here.
REVISIONS = ("0001", "0002", "0003")


def head_revision() -> str:
    return REVISIONS[-1]


def known_revisions() -> frozenset[str]:
    return frozenset(REVISIONS)


# -- recognising a file -----------------------------------------------------------------
class FileKind(Enum):
    EMPTY = "empty"  # a zero-byte file: SQLite treats it as a new database
    BUFFER = "buffer"


@dataclass(frozen=True, slots=True)
class Recognised:
    kind: FileKind
    revision: str | None  # Alembic revision; None for an empty or half-created buffer


def recovery_hint(path: Path, keys_dir: Path | None = None) -> str:
    """The commands that salvage a damaged buffer, with the real paths in them."""
    keys = f" --keys {keys_dir}" if keys_dir is not None else " --keys DIR"
    out = path.with_name(path.name + ".recovered")
    return (
        f"it was left unchanged; see `edgetally gateway buffer check --buffer {path}`, then salvage"
        f" every readable batch with `edgetally gateway buffer recover --buffer {path} --out {out}{keys}`"
        f" and start the gateway with --buffer {out}"
    )


def readonly_connect(
    path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, quiescent: bool = False
) -> sqlite3.Connection:
    """A connection that can only read ``path`` (SQLite ``mode=ro``); nothing it does writes the file.

    In autocommit mode (``isolation_level = None``): the caller opens its own ``BEGIN``.
    ``quiescent``: when the file has no write-ahead log (no gateway has it open), read it as
    immutable, so that not even SQLite's ``-wal``/``-shm`` companions are created next to it.
    Only for callers that either hold off gateways or can afford a spurious error if one
    starts meanwhile.
    """
    uri = path.resolve().as_uri() + "?mode=ro"
    if quiescent and not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    connection = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, check_same_thread=False)
    try:
        connection.isolation_level = None
        connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    except BaseException:
        connection.close()
        raise
    return connection


def recognise(
    path: Path,
    *,
    deep: bool = False,
    keys_dir: Path | None = None,
    allow_old: bool = True,
    wait_s: float = BUSY_TIMEOUT_MS / 1000,
) -> Recognised:
    """Say whether ``path`` is a usable gateway buffer; raise a :class:`StoreError` if not.

    Only reads. ``deep`` adds ``PRAGMA quick_check`` (every page; ~3 ms per 1,000 rows),
    which the gateway runs at start. ``allow_old=False`` also refuses a buffer that the
    gateway has not yet upgraded to this version's schema (inspection commands need it).
    """
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise BufferMissing(f"no buffer file at {path}") from exc
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ForeignFile(f"{path} is not a regular file, so it is not a gateway buffer")
    if info.st_size == 0:
        return Recognised(FileKind.EMPTY, None)
    header, size = _read_header(path)
    if not header.startswith(SQLITE_MAGIC):
        raise ForeignFile(
            f"{path} is not an SQLite database, so it is not a gateway buffer; it was left unchanged"
        )
    app_id = int.from_bytes(header[68:72], "big") if len(header) == 100 else None
    if app_id is not None and app_id != APPLICATION_ID:
        raise ForeignFile(
            f"{path} is an SQLite database of another application (application_id {app_id:#x},"
            f" a gateway buffer has {APPLICATION_ID:#x}); it was left unchanged"
        )
    problem = header_problem(header, size)
    live = path.with_name(path.name + "-wal").exists()
    deadline = time.monotonic() + _SETTLE_S
    while problem is not None and live and time.monotonic() < deadline:
        # A running gateway's checkpoint writes page 1 (the new page count) before the pages
        # that extend the file: a truncation seen mid-checkpoint must outlast it to be real.
        time.sleep(_SETTLE_POLL_S)
        header, size = _read_header(path)
        problem = header_problem(header, size)
    if problem is not None and _wal_has_frames(path):
        # A gateway killed mid-checkpoint leaves just this: page 1 (the new page count) written,
        # the pages after it not yet, every one of them still in the write-ahead log, which
        # SQLite reads them from. Only SQLite reading every page can tell that from a lost disk.
        log.warning("buffer %s: %s, with a write-ahead log: checking every page through it", path, problem)
        deep, problem = True, None
    if problem is not None:
        raise CorruptBuffer(f"buffer {path} is damaged: {problem}; {recovery_hint(path, keys_dir)}")
    revision = _read_revision(path, deep=deep, keys_dir=keys_dir, wait_s=wait_s)
    if revision is not None and revision not in known_revisions():
        raise SchemaTooNew(
            f"{path} has buffer schema revision {revision!r}, unknown to this gateway (newest known:"
            f" {head_revision()!r}; written by a newer version?); it was left unchanged: use the newer"
            " gateway to read it"
        )
    if not allow_old and revision != head_revision():
        raise StoreError(
            f"{path} has buffer schema revision {revision!r}, this version reads {head_revision()!r}:"
            " start the gateway on it once (it upgrades the file), or salvage it with"
            f" `edgetally gateway buffer recover --buffer {path} --out NEW`"
        )
    return Recognised(FileKind.BUFFER, revision)


WAL_HEADER_BYTES = 32  # a write-ahead log no longer than its header holds no page
_SETTLE_S = 1.0  # how long a live buffer's header may disagree with its size (a checkpoint)
_SETTLE_POLL_S = 0.02


def _read_header(path: Path) -> tuple[bytes, int]:
    """The first 100 bytes and the size of the file, the size taken after the header was read."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
            return header, os.fstat(file.fileno()).st_size
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc


def _wal_has_frames(path: Path) -> bool:
    try:
        return path.with_name(path.name + "-wal").stat().st_size > WAL_HEADER_BYTES
    except OSError:
        return False


def header_problem(header: bytes, size: int) -> str | None:
    """What the 100-byte SQLite header says is wrong with a file of ``size`` bytes, if anything."""
    if len(header) < 100:
        return f"truncated: {size} bytes, shorter than the 100-byte SQLite header"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"the header's page size {page_size} is invalid"
    if size % page_size:
        return f"truncated: {size} bytes is not a whole number of {page_size}-byte pages"
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]
    if header_valid and pages * page_size > size:
        return f"truncated: the header says {pages} pages of {page_size} bytes, the file holds {size // page_size}"
    return None


def _read_revision(path: Path, *, deep: bool, keys_dir: Path | None, wait_s: float) -> str | None:
    try:
        conn = readonly_connect(path, quiescent=True, busy_timeout_ms=int(wait_s * 1000))
        try:
            if deep:
                found = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
                if found != ["ok"]:
                    what = "; ".join(" ".join(str(f).split())[:160] for f in found)
                    raise CorruptBuffer(
                        f"buffer {path} is damaged (quick_check: {what}); {recovery_hint(path, keys_dir)}"
                    )
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
            if not has_table:
                return None
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise translate(exc, path, "read", keys_dir=keys_dir, wait_s=wait_s) from exc
    return None if row is None or row[0] is None else str(row[0])


# -- what SQLite's errors mean for a buffer ------------------------------------------------
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_NOTADB = 26
SQLITE_BUSY = 5
SQLITE_LOCKED = 6


def sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code behind ``exc`` (an ``sqlite3`` or SQLAlchemy error), if any."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def translate(
    exc: BaseException, path: Path, what: str, *, keys_dir: Path | None = None, wait_s: float = 0
) -> StoreError:
    """The gateway error for an SQLite failure while doing ``what`` on the buffer at ``path``."""
    orig = getattr(exc, "orig", None) or exc
    cause = " ".join(str(orig).split())
    code = sqlite_code(exc)
    if code in (SQLITE_FULL, SQLITE_IOERR):
        return DiskFull(
            f"buffer {path}: {what} failed, no room on the disk ({cause}); nothing of it was kept"
        )
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return CorruptBuffer(
            f"buffer {path} is damaged ({what}: {cause}); {recovery_hint(path, keys_dir)}"
        )
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        waited = f" for more than {wait_s:g} s" if wait_s else ""
        return BufferLocked(
            f"buffer {path} is locked by another process{waited} ({cause}); try again,"
            " or give it longer with --wait SECONDS"
        )
    return StoreError(f"buffer {path}: {what} failed: {cause}")
