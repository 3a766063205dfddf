"""``buffer recover``: salvage every readable row of a damaged buffer into a new file.

The source is never written: it is read through a read-only SQLite connection and, where
SQLite cannot reach rows, page by page (:mod:`gateway.inspect.pages`); while it runs, a
shared ``flock`` on ``<buffer>.lock`` keeps a gateway from starting on the source (and a
running gateway makes it refuse). The new file is built at ``<out>.part`` with the current
schema and renamed to ``<out>`` only when complete.

1. SQL pass, in id order (:func:`gateway.inspect.scan.sql_rows`): chunks of :data:`CHUNK` ids; a chunk SQLite
   cannot read is retried id by id; ids that still fail are "unreadable".
2. Page pass, only if the SQL pass missed anything: every record of every table leaf page
   (not on the freelist) that has the shape of a ``messages`` row and an id the SQL pass
   could not read.
3. Every row is checked before it is written: rows in flight become pending (the gateway is
   stopped); the payload of a row on its way to the cloud must still parse and match its
   stored body hash (and, with ``--keys``, verify), else it is quarantined with the reason, so a
   damaged envelope is never forwarded.

Counts: ``read`` rows found, ``salvaged`` rows written, ``lost`` = what the source's usage
counters say it held minus what was read (``None`` if the counters are unreadable).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from gateway._exceptions import BufferLocked, CorruptBuffer, ForeignFile, StoreError
from gateway.buffer.file import lock_path, readonly_engine
from gateway.buffer.schema import EventKind, FileKind, State, recognise
from gateway.buffer.store import Buffer
from gateway.inspect.rows import load_keys
from gateway.inspect.scan import CHUNK, COLUMNS, UNBOUNDED, Scan, page_rows, sql_rows
from gateway.verify import classify
from protocol import DEFAULT_MAX_BYTES, ProtocolError, Registry, body_hash, parse_envelope

log = logging.getLogger(__name__)

@dataclass
class RecoverReport:
    source: Path
    out: Path
    read: int = 0
    salvaged: int = 0
    from_pages: int = 0
    duplicates: int = 0
    expected: int | None = None
    requarantined: int = 0  # payloads damaged (or failing --keys) that were on their way out
    damaged_delivered: int = 0
    by_state: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in State})
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    keys: str | None = None

    @property
    def lost(self) -> int | None:
        return None if self.expected is None else max(0, self.expected - self.read)

    def to_mapping(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "out": str(self.out),
            "read": self.read,
            "salvaged": self.salvaged,
            "lost": self.lost,
            "expected": self.expected,
            "from_pages": self.from_pages,
            "duplicates": self.duplicates,
            "requarantined": self.requarantined,
            "damaged_delivered": self.damaged_delivered,
            "by_state": self.by_state,
            "unreadable_ids": [[a, None if b >= UNBOUNDED else b] for a, b in self.unreadable],
            "keys": self.keys,
        }


def recover(source: Path, out: Path, *, keys_dir: Path | None = None) -> RecoverReport:
    """Salvage every readable row of ``source`` into the new buffer ``out`` (see the module doc)."""
    if out.exists() or out.resolve() == source.resolve():
        raise StoreError(f"--out {out} already exists; name a new file (the source is never overwritten)")
    try:
        if recognise(source).kind is FileKind.EMPTY:
            raise ForeignFile(f"{source} is an empty file, not a gateway buffer; nothing to recover")
    except CorruptBuffer:
        pass  # damaged is what recover is for
    except ForeignFile:
        if source.stat().st_size == 0 or not lock_path(source).exists():
            raise
        # A gateway locked this file, so it was a buffer: its first page is what is damaged.
        log.warning("%s no longer has an SQLite header; reading its pages", source)
    registry = None if keys_dir is None else load_keys(keys_dir)
    report = RecoverReport(source, out, keys=None if keys_dir is None else str(keys_dir))
    part = out.with_name(out.name + ".part")
    for leftover in (part, part.with_name(part.name + "-wal"), part.with_name(part.name + "-shm")):
        leftover.unlink(missing_ok=True)
    with ExitStack() as stack:
        stack.enter_context(_no_gateway_on(source))
        with Buffer(part, keys_dir=keys_dir):
            pass  # creates the file with the current schema
        target = sqlite3.connect(part, isolation_level=None)
        stack.callback(target.close)
        _copy(source, target, report, registry)
        target.close()
        os.replace(part, out)
    lock_path(part).unlink(missing_ok=True)
    log.info("recovered %s -> %s: %s", source, out, report.to_mapping())
    return report


@contextmanager
def _no_gateway_on(source: Path) -> Iterator[None]:
    """Hold a shared lock on the source's lock file (if any): refuse if a gateway holds it."""
    file = lock_path(source)
    handle: IO[bytes] | None = None
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed below
    except OSError:
        yield  # no lock file: no gateway ever ran here, or it is gone
        return
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = handle.read(32).decode("ascii", "replace").strip() or "unknown"
            raise BufferLocked(
                f"buffer {source} is in use by a running gateway (pid {holder}); stop it before recovering"
            ) from exc
        yield
    finally:
        handle.close()


def _copy(source: Path, target: sqlite3.Connection, report: RecoverReport, registry: Registry | None) -> None:
    scan = Scan()
    engine = readonly_engine(source, quiescent=True)  # gateways are held off (flock)
    max_bytes = DEFAULT_MAX_BYTES
    try:
        with engine.connect() as conn:
            report.expected = _expected(conn)
            recorded = _settings(conn)
            max_bytes = int(recorded.get("max_payload_bytes", max_bytes))
            _write(target, sql_rows(conn, scan), report, registry, max_bytes)
            events = _events(conn)
            dropped = _dropped(conn)
    except SQLAlchemyError as exc:  # the file cannot even be opened by SQLite
        log.warning("SQLite cannot read %s (%s); reading its pages directly", source, exc)
        scan.schema_readable = False
        recorded, events, dropped = {}, [], []
    finally:
        engine.dispose()
    if not scan.schema_readable or scan.unreadable:
        before = report.read
        _write(target, page_rows(source, scan), report, registry, max_bytes)
        report.from_pages = report.read - before
        if report.expected is None:
            report.expected = scan.usage_from_pages
    report.unreadable = _still_missing(scan)
    _finish(target, report, recorded, events, max(scan.seen, default=0), dropped)


def _still_missing(scan: Scan) -> list[tuple[int, int]]:
    """Unreadable ranges minus what the page pass found (ranges stay ranges)."""
    left: list[tuple[int, int]] = []
    for first, last in scan.unreadable:
        inside = sorted(i for i in scan.seen if first <= i <= last) if last < UNBOUNDED else []
        start = first
        for found in inside:
            if found > start:
                left.append((start, found - 1))
            start = found + 1
        if start <= last:
            left.append((start, last))
    return left


def _expected(conn: Connection) -> int | None:
    try:
        row = conn.exec_driver_sql(
            "SELECT live_batches + delivered_batches FROM usage WHERE id = 1"
        ).scalar()
    except SQLAlchemyError:
        return None
    return None if row is None else int(row)


def _settings(conn: Connection) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in conn.exec_driver_sql("SELECT name, value FROM settings")}
    except SQLAlchemyError:
        return {}


def _events(conn: Connection) -> list[tuple[Any, ...]]:
    try:
        return [
            tuple(r)
            for r in conn.exec_driver_sql(
                "SELECT at, kind, first_id, last_id, rows, reason, detail FROM events ORDER BY id"
            )
        ]
    except SQLAlchemyError:
        return []  # history is worth less than batches: lost events are not counted


def _dropped(conn: Connection) -> list[tuple[Any, ...]]:
    """The quarantine caps' dropped-reject counters (none before schema 0003, or unreadable)."""
    try:
        return [
            tuple(r)
            for r in conn.exec_driver_sql(
                "SELECT device, reason, count, bytes, first_at, last_at FROM quarantine_dropped"
            )
        ]
    except SQLAlchemyError:
        return []  # counters, like events, are worth less than batches


_INSERT = (
    f"INSERT INTO messages ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT DO NOTHING"
)


def _write(
    target: sqlite3.Connection,
    rows: Iterator[dict[str, Any]],
    report: RecoverReport,
    registry: Registry | None,
    max_bytes: int,
) -> None:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        report.read += 1
        checked = _checked(row, report, registry, max_bytes)
        batch.append(tuple(checked.get(c) for c in COLUMNS))
        if len(batch) >= CHUNK:
            _insert(target, batch, report)
            batch = []
    if batch:
        _insert(target, batch, report)


def _insert(target: sqlite3.Connection, batch: list[tuple[Any, ...]], report: RecoverReport) -> None:
    target.execute("BEGIN IMMEDIATE")
    stored = target.executemany(_INSERT, batch).rowcount
    target.execute("COMMIT")
    report.salvaged += stored
    report.duplicates += len(batch) - stored
    state_at = COLUMNS.index("state")
    for row in batch:
        report.by_state[row[state_at]] = report.by_state.get(row[state_at], 0) + 1


def _checked(row: dict[str, Any], report: RecoverReport, registry: Registry | None, max_bytes: int) -> dict[str, Any]:
    """The row as it goes into the new file (see step 3 of the module doc)."""
    row = dict(row)
    payload = bytes(row["payload"])
    now = time.time()
    row["payload"] = payload
    row["size"] = len(payload)
    row["updated_at"] = row.get("updated_at") or now
    row["attempts"] = row.get("attempts") or 0
    if row["state"] == State.INFLIGHT.value:
        row["state"] = State.PENDING.value
    if row["state"] == State.QUARANTINED.value:
        return row
    problem = payload_problem(row, payload, registry, max_bytes)
    if problem is None:
        return row
    if row["state"] == State.DELIVERED.value:
        report.damaged_delivered += 1  # history only: it reached the cloud intact
        return row
    report.requarantined += 1
    row.update(state=State.QUARANTINED.value, reason=problem[0], detail=problem[1], quarantined_at=now)
    return row


def payload_problem(
    row: dict[str, Any], payload: bytes, registry: Registry | None, max_bytes: int
) -> tuple[str, str] | None:
    if registry is not None:
        verdict = classify(row["topic"], payload, float(row["received_at"]), registry, max_bytes)
        if verdict.state is State.QUARANTINED:
            return str(verdict.reason), f"recover: {verdict.detail}"
        return None
    try:
        envelope = parse_envelope(payload, max_bytes=max(max_bytes, len(payload)))
    except ProtocolError as err:
        return "damaged", f"recover: payload no longer parses ({err})"
    stored = row.get("body_hash")
    if stored is not None and body_hash(envelope.body) != stored:
        return "damaged", "recover: payload does not match its stored body hash"
    return None


def _finish(
    target: sqlite3.Connection,
    report: RecoverReport,
    recorded: dict[str, str],
    events: list[tuple[Any, ...]],
    highest: int,
    dropped: list[tuple[Any, ...]],
) -> None:
    now = time.time()
    target.execute("BEGIN IMMEDIATE")
    target.executemany(
        "INSERT INTO events (at, kind, first_id, last_id, rows, reason, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        events,
    )
    target.executemany(
        "INSERT INTO quarantine_dropped (device, reason, count, bytes, first_at, last_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        dropped,
    )
    kept = {k: v for k, v in recorded.items() if k not in ("pid", "opened_at")}
    target.executemany(
        "INSERT INTO settings (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        list(kept.items()),
    )
    # Ids are never reused: a new row must not take the id of one the source had.
    target.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'messages'", (highest,)
    )
    target.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'messages', ?"
        " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages')",
        (highest,),
    )
    target.execute(
        "INSERT INTO events (at, kind, rows, reason, detail) VALUES (?, ?, ?, ?, ?)",
        (
            now,
            EventKind.RECOVERED.value,
            report.salvaged,
            "recover",
            f"from {report.source}: read {report.read}, salvaged {report.salvaged},"
            f" lost {report.lost if report.lost is not None else 'unknown'}",
        ),
    )
    target.execute("COMMIT")
