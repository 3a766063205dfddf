"""The gateway's durable buffer: one SQLite file (WAL) through SQLAlchemy Core.

The storage contract follows thingsboard's gateway storage: ``put_many`` stores what arrived,
``fetch_pack(limit)`` hands out the oldest pending rows (marking them in flight),
``confirm(ids)`` marks rows the cloud broker acknowledged as delivered, ``release(ids)`` puts
rows back to pending, and ``reset_inflight()`` at start forgets what a previous run had in
flight. Delivered rows stay for ``delivered_retention_s`` (for ``buffer show`` and audits),
then :meth:`Buffer.purge_expired` deletes them in bounded transactions; they never count
toward the quota (:meth:`Buffer.outbound_usage`) and go early when the disk is full. Nor do
quarantined rows: they are bounded by their own caps (gateway/buffer/quarantine.py), and a
reject past one is counted in ``quarantine_dropped`` instead of stored.

Durability: what ingress stores (``put_many``) is committed with the configured ``synchronous``
(FULL by default: fsynced before the edge broker gets its PUBACK). The uplink's own marks
(``advance``, ``fetch_pack``, ``confirm``: pending -> in flight -> delivered) commit with
``synchronous=NORMAL`` (:data:`MARK_SYNC`): still atomic, and made durable by the next fsynced
commit or checkpoint, but not fsynced themselves. Losing the last of them to a power cut only
sends those rows again (a row left in flight is pending at the next start), which a lost
PUBACK does anyway and the cloud ledger de-duplicates; nothing accepted can be lost by it.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so the writer thread (``put_many``)
and the uplink thread (the rest) queue instead of failing on a lock upgrade: on a lock in
this process (woken at once), and on SQLite's busy timeout against other processes; reads
(``usage``, ``counts``) take no write lock. ``open`` recognises the file first (read-only:
a missing, foreign, damaged or too-new file is refused and left as it is), then takes an exclusive ``flock`` on ``<buffer>.lock`` so that two gateways never share one
buffer, then runs the migrations.

A redelivered envelope identical to one still buffered (same election, device, seq and body
hash, pending or in flight) is not stored twice: the unique partial index
``ux_messages_live`` turns the insert into a no-op. A batch already delivered is stored and
forwarded again (the device resends only what the cloud has not receipted, so the cloud
may have lost it); the cloud ledger de-duplicates.

A write that finds no room (SQLITE_FULL, ENOSPC, SQLITE_IOERR) raises :class:`DiskFull`
after rolling the whole transaction back; ``put_many`` first tries once more after purging
delivered rows early.

Opening the file (engine, lock, migrations) is in gateway/buffer/file.py, the row values in
gateway/buffer/rows.py, the quarantine caps in gateway/buffer/quarantine.py. This module stays
whole (some 580 lines): it is the storage contract,
one class whose every write follows the same transaction and state rules.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway._exceptions import BufferMissing, DiskFull, StoreError
from gateway.buffer.file import acquire_lock, make_engine, migrate, prepare_file
from gateway.buffer.quarantine import admit
from gateway.buffer.rows import (
    NewMessage,
    OutboundMessage,
    PutResult,
    QuarantineCaps,
    QuarantinedMessage,
    QuarantineUsage,
    Usage,
)
from gateway.buffer.schema import (
    SQLITE_IOERR,
    EventKind,
    FileKind,
    State,
    recognise,
    sqlite_code,
    translate,
)
from gateway.config import DEFAULT_RETENTION_S, SyncMode

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

ID_CHUNK = 500  # ids per IN (...) clause, far below SQLite's bound-parameter limit
PURGE_LIMIT = 5000  # rows per purge transaction: a few ms of write lock
DISK_FULL_PURGE = 20_000  # delivered rows dropped early when a write finds the disk full
EVENTS_MIN_KEEP_S = 86_400.0  # events of rows that are gone are kept at least this long
# The uplink's state marks are not what keeps a batch safe (see the module docstring).
MARK_SYNC = SyncMode.NORMAL

_INSERT = (
    "INSERT INTO messages (election, device, seq, body_hash, topic, payload, size, state,"
    " reason, detail, received_at, updated_at, attempts, quarantined_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING"
)
_FETCH = (
    "SELECT id, topic, payload, device, seq FROM messages"
    " WHERE state = 'pending' ORDER BY id LIMIT ?"
)
_MARK_SENT = (
    "UPDATE messages SET state = 'inflight', attempts = attempts + 1,"
    " first_sent_at = coalesce(first_sent_at, ?), last_sent_at = ?, updated_at = ?"
    " WHERE state = 'pending' AND id BETWEEN ? AND ?"
)
_DELIVER_RANGE = (
    "UPDATE messages SET state = 'delivered', delivered_at = ?, updated_at = ?"
    " WHERE state = 'inflight' AND id BETWEEN ? AND ?"
)
_COUNTS = (
    "SELECT (SELECT count(*) FROM messages WHERE state = 'pending'),"
    " (SELECT count(*) FROM messages WHERE state = 'inflight'),"
    " (SELECT delivered_batches FROM usage WHERE id = 1),"
    " (SELECT count(*) FROM messages WHERE state = 'quarantined')"
)
_USAGE = (
    "SELECT live_batches, live_bytes, delivered_batches, delivered_bytes FROM usage WHERE id = 1"
)
_OUTBOUND_USAGE = (
    "SELECT live_batches - quarantined_batches, live_bytes - quarantined_bytes,"
    " delivered_batches, delivered_bytes FROM usage WHERE id = 1"
)
_QUARANTINE_USAGE = (
    "SELECT u.quarantined_batches, u.quarantined_bytes,"
    " (SELECT coalesce(sum(count), 0) FROM quarantine_dropped),"
    " (SELECT coalesce(sum(bytes), 0) FROM quarantine_dropped),"
    " (SELECT count(*) FROM quarantine_usage WHERE (? > 0 AND rows >= ?) OR (? > 0 AND bytes >= ?))"
    " FROM usage AS u WHERE u.id = 1"
)
_OLDEST_OUTBOUND = (
    "SELECT received_at FROM messages WHERE id = (SELECT min(m) FROM ("
    " SELECT min(id) AS m FROM messages WHERE state = 'pending'"
    " UNION ALL SELECT min(id) FROM messages WHERE state = 'inflight'))"
)


class Buffer:
    """The buffer file at ``path``. Construct, then :meth:`open` (or use as a context manager).

    ``keys_dir``, ``gateway_id`` and ``max_payload_bytes`` are only recorded in the file (for
    the inspection commands); so are ``quarantine_caps``, which also bound what rejects may
    hold (gateway/buffer/quarantine.py). ``max_page_count`` caps the file (SQLite pages of 4 KiB); a
    write past it fails exactly like one on a full disk.
    """

    def __init__(
        self,
        path: Path,
        *,
        sync: SyncMode = SyncMode.FULL,
        delivered_retention_s: float = DEFAULT_RETENTION_S,
        keys_dir: Path | None = None,
        gateway_id: str | None = None,
        max_payload_bytes: int | None = None,
        max_page_count: int | None = None,
        quarantine_caps: QuarantineCaps | None = None,
    ) -> None:
        if delivered_retention_s < 0:
            raise StoreError(f"delivered retention must be >= 0 s, got {delivered_retention_s}")
        self.path = path
        self.sync = sync
        self.delivered_retention_s = delivered_retention_s
        self.keys_dir = keys_dir
        self.gateway_id = gateway_id
        self.max_payload_bytes = max_payload_bytes
        self.max_page_count = max_page_count
        self.quarantine_caps = QuarantineCaps() if quarantine_caps is None else quarantine_caps
        self._engine: Engine | None = None
        self._lock: IO[bytes] | None = None
        # One write transaction at a time in this process: a thread waiting for SQLite's
        # write lock would poll it in sleeps of up to 100 ms; this lock wakes it at once.
        self._writing = threading.Lock()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Buffer:
        return cls(
            config.buffer_path,
            sync=config.sync,
            delivered_retention_s=config.delivered_retention_s,
            keys_dir=config.keys_dir,
            gateway_id=config.gateway_id,
            max_payload_bytes=config.max_payload_bytes,
            quarantine_caps=QuarantineCaps(
                rows_per_device=config.max_quarantine_rows_per_device,
                bytes_per_device=config.max_quarantine_bytes_per_device,
                rows=config.max_quarantine_rows,
                bytes=config.max_quarantine_bytes,
            ),
        )

    # -- life cycle -------------------------------------------------------------------
    def open(self) -> None:
        """Recognise (read-only), lock, create or upgrade the file, record the settings."""
        if self._engine is not None:
            raise StoreError(f"buffer {self.path} is already open")
        try:
            kind: FileKind | None = recognise(self.path, deep=True, keys_dir=self.keys_dir).kind
        except BufferMissing:
            kind = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of buffer {self.path}: {exc.strerror}"
                ) from exc
        with ExitStack() as undo:  # on any failure: dispose the engine, drop the lock
            self._lock = acquire_lock(self.path)
            undo.callback(self._release_lock)
            engine = make_engine(self.path, self.sync, self.max_page_count)
            undo.callback(engine.dispose)
            self._engine = engine
            undo.callback(setattr, self, "_engine", None)
            prepare_file(engine, self.path, new=kind is not FileKind.BUFFER)
            with self._transaction("migration") as conn:
                migrate(conn, self.path)
                self._record_settings(conn)
            undo.pop_all()
        log.info(
            "buffer %s open (WAL, synchronous=%s, delivered kept %gs)",
            self.path,
            self.sync.value,
            self.delivered_retention_s,
        )

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._release_lock()

    def __enter__(self) -> Buffer:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- storage contract (the hot path) ----------------------------------------------
    def put_many(self, batch: Sequence[NewMessage]) -> PutResult:
        """Store ``batch`` in one transaction; identical live batches are skipped, and rejects
        past a quarantine cap are counted in ``quarantine_dropped`` instead of stored.

        Raises :class:`DiskFull` (nothing of ``batch`` stored) when there is no room even
        after dropping delivered rows early.
        """
        if not batch:
            return PutResult(0, 0)
        try:
            return self._insert(batch)
        except DiskFull:
            freed = self.purge_delivered(limit=DISK_FULL_PURGE, why="disk_full")
            if not freed:
                raise
            log.warning("disk full: purged %d delivered rows early to make room", freed)
            return self._insert(batch)

    def _insert(self, batch: Sequence[NewMessage]) -> PutResult:
        now = time.time()
        with self._transaction("put") as conn:
            kept, dropped, skipped = admit(conn, batch, self.quarantine_caps, now)
            if not kept:
                return PutResult(0, 0, dropped, skipped)
            # executemany: its rowcount is the rows inserted (a duplicate adds 0; the usage
            # triggers' own changes are not counted).
            stored = int(conn.exec_driver_sql(_INSERT, _values(kept, now)).rowcount)
        return PutResult(stored, len(kept) - stored, dropped, skipped)

    def fetch_pack(self, limit: int) -> list[OutboundMessage]:
        """Move up to ``limit`` oldest pending rows to in flight and return them in id order."""
        return self.advance((), limit)[1]

    def confirm(self, ids: Sequence[int]) -> int:
        """Mark in-flight rows the cloud broker acknowledged as delivered; returns how many."""
        return self.advance(ids, 0)[0]

    def advance(self, delivered: Sequence[int], limit: int) -> tuple[int, list[OutboundMessage]]:
        """One uplink round in ONE transaction: mark the in-flight rows ``delivered`` (the cloud
        broker acknowledged them) as delivered, then move up to ``limit`` oldest pending rows
        to in flight. Returns how many were marked delivered, and the rows now in flight in
        id order. Committed with :data:`MARK_SYNC` (module docstring)."""
        if not delivered and limit < 1:
            return 0, []
        now = time.time()
        done = 0
        with self._transaction("confirm" if delivered else "fetch", sync=MARK_SYNC) as conn:
            runs, singles = _split(delivered)
            for first, last in runs:
                done += conn.exec_driver_sql(_DELIVER_RANGE, (now, now, first, last)).rowcount
            for chunk in _chunks(singles):
                done += conn.exec_driver_sql(
                    "UPDATE messages SET state = 'delivered', delivered_at = ?, updated_at = ?"
                    f" WHERE state = 'inflight' AND id IN ({_marks(chunk)})",
                    (now, now, *chunk),
                ).rowcount
            rows = conn.exec_driver_sql(_FETCH, (limit,)).all() if limit > 0 else []
            if rows:
                # The selected rows are exactly the pending ones between the first and last
                # id: BEGIN IMMEDIATE keeps any other writer out in between.
                moved = conn.exec_driver_sql(
                    _MARK_SENT, (now, now, now, rows[0].id, rows[-1].id)
                ).rowcount
                if moved != len(rows):
                    raise StoreError(f"buffer {self.path}: fetched {len(rows)} rows but moved {moved}")
        return done, [OutboundMessage(r.id, r.topic, bytes(r.payload), r.device, r.seq) for r in rows]

    def release(self, ids: Sequence[int], *, why: str = "link_lost") -> int:
        """Put in-flight rows back to pending (not delivered); returns how many moved."""
        done = 0
        now = time.time()
        with self._transaction("release") as conn:
            for chunk in _chunks(ids):
                where = f"state = 'inflight' AND id IN ({_marks(chunk)})"
                _record_rows(conn, EventKind.RELEASED, why, now, where, chunk)
                done += conn.exec_driver_sql(
                    f"UPDATE messages SET state = 'pending', updated_at = ? WHERE {where}",
                    (now, *chunk),
                ).rowcount
        return done

    def reset_inflight(self) -> int:
        """At start: whatever a previous run had in flight was not confirmed, so it is pending."""
        now = time.time()
        with self._transaction("reset") as conn:
            _record_rows(conn, EventKind.RESET, "restart", now, "state = 'inflight'", ())
            return int(
                conn.exec_driver_sql(
                    "UPDATE messages SET state = 'pending', updated_at = ? WHERE state = 'inflight'",
                    (now,),
                ).rowcount
            )

    # -- retention ----------------------------------------------------------------------
    def purge_expired(self, now: float | None = None, *, limit: int = PURGE_LIMIT) -> int:
        """Delete up to ``limit`` delivered rows older than the retention window; one short
        transaction. Returns how many went: call again soon while it returns ``limit``."""
        moment = time.time() if now is None else now
        return self.purge_delivered(
            before=moment - self.delivered_retention_s, limit=limit, why="retention", now=moment
        )

    def purge_delivered(
        self,
        *,
        limit: int,
        before: float | None = None,
        why: str = "quota",
        now: float | None = None,
    ) -> int:
        """Delete up to ``limit`` delivered rows, oldest delivery first (all ages unless
        ``before``); records one ``purged`` event. Also forgets events older than the
        retention window (and a day) whose rows are gone."""
        moment = time.time() if now is None else now
        condition = "state = 'delivered'" + ("" if before is None else " AND delivered_at < ?")
        params: tuple[Any, ...] = () if before is None else (before,)
        with self._transaction("purge") as conn:
            ids = [
                int(row[0])
                for row in conn.exec_driver_sql(
                    f"SELECT id FROM messages WHERE {condition} ORDER BY delivered_at LIMIT ?",
                    (*params, limit),
                )
            ]
            for chunk in _chunks(ids):
                conn.exec_driver_sql(f"DELETE FROM messages WHERE id IN ({_marks(chunk)})", chunk)
            if ids:
                record_purge(conn, ids, why=why, state=State.DELIVERED, at=moment)
            keep_events = max(self.delivered_retention_s, EVENTS_MIN_KEEP_S)
            conn.exec_driver_sql(
                "DELETE FROM events WHERE id IN (SELECT e.id FROM events AS e WHERE e.at < ?"
                " AND NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.id = e.first_id) LIMIT ?)",
                (moment - keep_events, limit),
            )
        if ids:
            log.info("purged %d delivered rows (%s)", len(ids), why)
        return len(ids)

    # -- reading (no write lock) ------------------------------------------------------------
    def usage(self) -> Usage:
        """Batches and bytes held, live and delivered: one primary-key read, exact."""
        (row,) = self._read(_USAGE)
        return Usage(*(int(value) for value in row))

    def outbound_usage(self) -> Usage:
        """What backpressure counts: live minus quarantined (pending + in flight), and
        delivered. One primary-key read, exact: rejects never hold back a valid batch."""
        (row,) = self._read(_OUTBOUND_USAGE)
        return Usage(*(int(value) for value in row))

    def quarantine_usage(self) -> QuarantineUsage:
        """What the quarantine holds, what its caps dropped, and whether a cap is reached."""
        caps = self.quarantine_caps
        (row,) = self._read(
            _QUARANTINE_USAGE,
            (caps.rows_per_device, caps.rows_per_device, caps.bytes_per_device, caps.bytes_per_device),
        )
        rows, size, dropped, dropped_bytes, devices = (int(v or 0) for v in row)
        return QuarantineUsage(
            rows, size, dropped, dropped_bytes, devices, rows >= caps.rows or size >= caps.bytes
        )

    def counts(self) -> dict[State, int]:
        """Rows per state (index counts; delivered from the usage counters)."""
        (row,) = self._read(_COUNTS)
        pending, inflight, delivered, quarantined = (int(v or 0) for v in row)
        return {
            State.PENDING: pending,
            State.INFLIGHT: inflight,
            State.DELIVERED: delivered,
            State.QUARANTINED: quarantined,
        }

    def oldest_outbound_at(self) -> float | None:
        """``received_at`` of the oldest row not yet delivered (pending or in flight)."""
        rows = self._read(_OLDEST_OUTBOUND)
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def quarantined(self) -> list[QuarantinedMessage]:
        rows = self._read(
            "SELECT id, topic, payload, election, device, seq, reason, detail, received_at"
            " FROM messages WHERE state = 'quarantined' ORDER BY id"
        )
        return [
            QuarantinedMessage(
                int(r[0]), r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7], float(r[8])
            )
            for r in rows
        ]

    # -- internals --------------------------------------------------------------------
    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise StoreError(f"buffer {self.path} is not open")
        return self._engine

    @contextmanager
    def _transaction(self, what: str, *, sync: SyncMode | None = None) -> Iterator[Connection]:
        """A ``BEGIN IMMEDIATE`` transaction committed with ``sync`` (default: the buffer's)."""
        engine = self._require_engine()
        mode = sync if sync is not None and self.sync is SyncMode.FULL else self.sync
        try:
            with self._writing, engine.connect() as conn:
                # Per connection, and pooled connections serve every thread: set it each time.
                cursor = conn.connection.cursor()
                cursor.execute(f"PRAGMA synchronous = {mode.value}")
                cursor.close()
                try:
                    with conn.begin():
                        yield conn
                except SQLAlchemyError as exc:
                    if sqlite_code(exc) == SQLITE_IOERR:
                        conn.invalidate()  # an I/O error can leave the connection unusable
                    raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise translate(exc, self.path, what, keys_dir=self.keys_dir) from exc

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement in SQLite's own read transaction (autocommit): no write lock."""
        raw = self._require_engine().raw_connection()
        try:
            cursor = raw.cursor()
            try:
                return list(cursor.execute(sql, params).fetchall())
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "read", keys_dir=self.keys_dir) from exc
        finally:
            raw.close()

    def _record_settings(self, conn: Connection) -> None:
        values = {
            "gateway_id": self.gateway_id,
            "keys_dir": None if self.keys_dir is None else str(self.keys_dir.resolve()),
            "delivered_retention_s": repr(float(self.delivered_retention_s)),
            "max_payload_bytes": None if self.max_payload_bytes is None else str(self.max_payload_bytes),
            "opened_at": repr(time.time()),
            "pid": str(os.getpid()),
            **self.quarantine_caps.settings(),
        }
        conn.exec_driver_sql(
            "INSERT INTO settings (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [(name, value) for name, value in values.items() if value is not None],
        )

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None


def record_purge(
    conn: Connection, ids: Sequence[int], *, why: str, state: State, at: float
) -> None:
    """One ``purged`` event for rows just deleted (their id range and count)."""
    conn.exec_driver_sql(
        "INSERT INTO events (at, kind, first_id, last_id, rows, reason, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at, EventKind.PURGED.value, min(ids), max(ids), len(ids), why, f"{len(ids)} {state.value}"),
    )


def _record_rows(
    conn: Connection, kind: EventKind, why: str, at: float, where: str, params: Sequence[Any]
) -> None:
    """One event per row matching ``where`` (rare transitions only)."""
    conn.exec_driver_sql(
        "INSERT INTO events (at, kind, first_id, last_id, rows, reason)"
        f" SELECT ?, ?, id, id, 1, ? FROM messages WHERE {where}",
        (at, kind.value, why, *params),
    )


def _values(batch: Sequence[NewMessage], now: float) -> list[tuple[Any, ...]]:
    return [
        (
            m.election,
            m.device,
            m.seq,
            m.body_hash,
            m.topic,
            m.payload,
            len(m.payload),
            m.state.value,
            m.reason,
            m.detail,
            m.received_at,
            now,
            m.received_at if m.state is State.QUARANTINED else None,
        )
        for m in batch
    ]


def _marks(chunk: Sequence[Any]) -> str:
    return ", ".join("?" * len(chunk))


RUN_MIN = 8  # consecutive ids from this many on are updated as one id range


def _split(ids: Sequence[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """The distinct ``ids`` as (first, last) runs of at least RUN_MIN consecutive ids, and
    the ids left over."""
    ordered = sorted(set(ids))
    runs: list[tuple[int, int]] = []
    singles: list[int] = []
    start = 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            if index - start >= RUN_MIN:
                runs.append((ordered[start], ordered[index - 1]))
            else:
                singles.extend(ordered[start:index])
            start = index
    return runs, singles


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), ID_CHUNK):
        yield tuple(ids[start : start + ID_CHUNK])


__all__ = [
    "DEFAULT_RETENTION_S",
    "PURGE_LIMIT",
    "Buffer",
    "DiskFull",
]
