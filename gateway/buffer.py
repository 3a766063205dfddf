"""The gateway's durable buffer: one SQLite file (WAL) through SQLAlchemy Core.

The storage contract follows thingsboard's gateway storage: ``put_many`` stores what arrived,
``fetch_pack(limit)`` hands out the oldest pending rows (marking them in flight),
``confirm(ids)`` deletes rows the cloud broker acknowledged, ``release(ids)`` puts rows back
to pending, and ``reset_inflight()`` at start forgets what a previous run had in flight.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, so the writer thread (``put_many``)
and the uplink thread (the rest) queue on SQLite's busy timeout instead of failing on a
lock upgrade. ``open`` takes an exclusive ``flock`` on ``<buffer>.lock`` so that two
gateways never share one buffer.

A redelivered envelope identical to one still buffered (same election, device, seq and body
hash, pending or in flight) is not stored twice: the unique partial index
``ux_messages_live`` turns the insert into a no-op. Anything else is the cloud ledger's job.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import URL, Connection, Engine, create_engine, delete, event, func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from gateway._exceptions import BufferLocked, BufferMissing, SchemaTooNew, StoreError
from gateway.config import SyncMode
from gateway.schema import APPLICATION_ID, BUSY_TIMEOUT_MS, FileKind, State, identify, messages

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
ID_CHUNK = 500  # ids per IN (...) clause, far below SQLite's bound-parameter limit
c = messages.c


@dataclass(frozen=True, slots=True)
class NewMessage:
    """Something that arrived on the edge broker, verified (pending) or rejected (quarantined)."""

    topic: str
    payload: bytes
    state: State
    received_at: float
    election: str | None = None
    device: str | None = None
    seq: int | None = None
    body_hash: str | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A row handed to the uplink by :meth:`Buffer.fetch_pack`."""

    id: int
    topic: str
    payload: bytes
    device: str | None
    seq: int | None


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    id: int
    topic: str
    payload: bytes
    election: str | None
    device: str | None
    seq: int | None
    reason: str | None
    detail: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class PutResult:
    stored: int
    duplicates: int


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def migrate(connection: Connection, path: Path) -> None:
    """Bring the schema to the newest revision, inside the caller's transaction."""
    config = alembic_config(connection)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None:
        try:
            ScriptDirectory.from_config(config).get_revision(current)
        except CommandError as exc:
            raise SchemaTooNew(
                f"{path} has buffer schema revision {current!r}, unknown to this gateway"
                " (written by a newer version?); it was left unchanged"
            ) from exc
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise StoreError(f"buffer {path}: migration failed: {exc}") from exc


class Buffer:
    """The buffer file at ``path``. Construct, then :meth:`open` (or use as a context manager)."""

    def __init__(self, path: Path, *, sync: SyncMode = SyncMode.FULL) -> None:
        self.path = path
        self.sync = sync
        self._engine: Engine | None = None
        self._lock: IO[bytes] | None = None

    # -- life cycle -------------------------------------------------------------------
    def open(self) -> None:
        """Lock, create or recognise the file, switch it to WAL, run the migrations."""
        if self._engine is not None:
            raise StoreError(f"buffer {self.path} is already open")
        try:
            kind: FileKind | None = identify(self.path)  # read-only: a foreign file stays as it is
        except BufferMissing:
            kind = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of buffer {self.path}: {exc.strerror}"
                ) from exc
        with ExitStack() as undo:  # on any failure: dispose the engine, drop the lock
            self._lock = _acquire_lock(self.path)
            undo.callback(self._release_lock)
            engine = self._make_engine()
            undo.callback(engine.dispose)
            _prepare_file(engine, self.path, new=kind is not FileKind.BUFFER)
            with _translated(self.path, "migration"), engine.begin() as conn:
                migrate(conn, self.path)
            undo.pop_all()
        self._engine = engine
        log.info("buffer %s open (WAL, synchronous=%s)", self.path, self.sync.value)

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

    # -- storage contract -------------------------------------------------------------
    def put_many(self, batch: Sequence[NewMessage]) -> PutResult:
        """Store ``batch`` in one transaction; identical live batches are skipped."""
        if not batch:
            return PutResult(0, 0)
        now = time.time()
        rows = [
            {
                "election": m.election,
                "device": m.device,
                "seq": m.seq,
                "body_hash": m.body_hash,
                "topic": m.topic,
                "payload": m.payload,
                "size": len(m.payload),
                "state": m.state.value,
                "reason": m.reason,
                "detail": m.detail,
                "received_at": m.received_at,
                "updated_at": now,
                "attempts": 0,
            }
            for m in batch
        ]
        stored = 0
        with self._transaction("put") as conn:
            # One execute per row, so each rowcount says stored (1) or duplicate (0);
            # ~30 us a row, small next to the signature check every row has had.
            insert = sqlite_insert(messages).on_conflict_do_nothing()
            for row in rows:
                stored += conn.execute(insert, row).rowcount
        return PutResult(stored, len(batch) - stored)

    def fetch_pack(self, limit: int) -> list[OutboundMessage]:
        """Move up to ``limit`` oldest pending rows to in flight and return them in id order."""
        if limit < 1:
            return []
        with self._transaction("fetch") as conn:
            rows = conn.execute(
                select(c.id, c.topic, c.payload, c.device, c.seq)
                .where(c.state == State.PENDING.value)
                .order_by(c.id)
                .limit(limit)
            ).all()
            if not rows:
                return []
            # The selected rows are exactly the pending ones between the first and last id:
            # BEGIN IMMEDIATE keeps any other writer out in between.
            moved = conn.execute(
                update(messages)
                .where(c.state == State.PENDING.value, c.id.between(rows[0].id, rows[-1].id))
                .values(state=State.INFLIGHT.value, attempts=c.attempts + 1, updated_at=time.time())
            ).rowcount
            if moved != len(rows):
                raise StoreError(f"buffer {self.path}: fetched {len(rows)} rows but moved {moved}")
        return [OutboundMessage(r.id, r.topic, bytes(r.payload), r.device, r.seq) for r in rows]

    def confirm(self, ids: Sequence[int]) -> int:
        """Delete in-flight rows the cloud broker acknowledged; returns how many went."""
        done = 0
        with self._transaction("confirm") as conn:
            for chunk in _chunks(ids):
                done += conn.execute(
                    delete(messages).where(c.id.in_(chunk), c.state == State.INFLIGHT.value)
                ).rowcount
        return done

    def release(self, ids: Sequence[int]) -> int:
        """Put in-flight rows back to pending (not delivered); returns how many moved."""
        done = 0
        with self._transaction("release") as conn:
            for chunk in _chunks(ids):
                done += conn.execute(
                    update(messages)
                    .where(c.id.in_(chunk), c.state == State.INFLIGHT.value)
                    .values(state=State.PENDING.value, updated_at=time.time())
                ).rowcount
        return done

    def reset_inflight(self) -> int:
        """At start: whatever a previous run had in flight was not confirmed, so it is pending."""
        with self._transaction("reset") as conn:
            return conn.execute(
                update(messages)
                .where(c.state == State.INFLIGHT.value)
                .values(state=State.PENDING.value, updated_at=time.time())
            ).rowcount

    # -- reading ----------------------------------------------------------------------
    def counts(self) -> dict[State, int]:
        with self._transaction("count") as conn:
            found: dict[str, int] = dict(
                conn.execute(select(c.state, func.count()).group_by(c.state)).all()
            )
        return {state: int(found.get(state.value, 0)) for state in State}

    def quarantined(self) -> list[QuarantinedMessage]:
        with self._transaction("read quarantine") as conn:
            rows = conn.execute(
                select(
                    c.id,
                    c.topic,
                    c.payload,
                    c.election,
                    c.device,
                    c.seq,
                    c.reason,
                    c.detail,
                    c.received_at,
                )
                .where(c.state == State.QUARANTINED.value)
                .order_by(c.id)
            ).all()
        return [
            QuarantinedMessage(
                r.id,
                r.topic,
                bytes(r.payload),
                r.election,
                r.device,
                r.seq,
                r.reason,
                r.detail,
                r.received_at,
            )
            for r in rows
        ]

    # -- internals --------------------------------------------------------------------
    def _make_engine(self) -> Engine:
        engine = create_engine(
            URL.create("sqlite+pysqlite", database=str(self.path)),
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        )
        sync = self.sync.value.upper()

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy, not the sqlite3 module, decides where transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA synchronous = {sync}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    @contextmanager
    def _transaction(self, what: str) -> Iterator[Connection]:
        if self._engine is None:
            raise StoreError(f"buffer {self.path} is not open")
        with _translated(self.path, what), self._engine.begin() as conn:
            yield conn

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None


@contextmanager
def _translated(path: Path, what: str) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise StoreError(f"buffer {path}: {what} failed: {cause}") from exc


def _prepare_file(engine: Engine, path: Path, *, new: bool) -> None:
    """Mark a new file as a gateway buffer (before WAL, so the mark is in the main file)."""
    with _translated(path, "open"):
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if new:
                cursor.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            cursor.close()
        finally:
            raw.close()
    if str(mode).lower() != "wal":
        raise StoreError(f"buffer {path}: SQLite refused WAL mode (journal_mode is {mode})")


def _acquire_lock(path: Path) -> IO[bytes]:
    """Hold an exclusive flock on ``<buffer>.lock`` (which records the holder's pid)."""
    file = lock_path(path)
    try:
        handle = open(file, "a+b")  # noqa: SIM115 - kept open while the buffer is open
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {file}: {exc.strerror}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
    except BlockingIOError as exc:
        handle.seek(0)
        holder = handle.read(32).decode("ascii", "replace").strip() or "unknown"
        handle.close()
        raise BufferLocked(f"buffer {path} is in use by another gateway (pid {holder})") from exc
    except OSError as exc:
        handle.close()
        raise StoreError(f"cannot lock buffer {path}: {exc.strerror}") from exc
    return handle


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start : start + ID_CHUNK]
