"""The station's own state: one SQLite file, ``station.db`` (mode 0600) in the station directory.

Every keying is kept with its operator's signature; a round (the sheet itself is round 0, each
correction the next) is ``keying`` until two operators agree or a supervisor resolves it,
``conflict`` while two keyings differ, ``signed`` once its batch is signed (written before it is
published: a station that dies while sending resends the same bytes, never a second body for a
seq) and ``sent`` once the edge broker acknowledged it. The manual sources' chains (last seq and
hash per device) live here too, so seqs go on across restarts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgetally.entry.errors import StationStateError
from edgetally.entry.sheet import Figures
from protocol import GENESIS_HASH

log = logging.getLogger(__name__)

STATE_FILE = "station.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    sheet TEXT NOT NULL, round INTEGER NOT NULL, precinct TEXT NOT NULL, device TEXT NOT NULL,
    reason TEXT, status TEXT NOT NULL, figures TEXT, resolved_by TEXT,
    PRIMARY KEY (sheet, round));
CREATE TABLE IF NOT EXISTS keyings (
    sheet TEXT NOT NULL, round INTEGER NOT NULL, signer TEXT NOT NULL, role TEXT NOT NULL,
    figures TEXT NOT NULL, kid TEXT NOT NULL, sig BLOB NOT NULL, keyed_at TEXT NOT NULL,
    PRIMARY KEY (sheet, round, signer));
CREATE TABLE IF NOT EXISTS chain (device TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    device TEXT NOT NULL, seq INTEGER NOT NULL, sheet TEXT NOT NULL, round INTEGER NOT NULL,
    payload BLOB NOT NULL, body_hash TEXT NOT NULL, signed_at TEXT NOT NULL, sent_at TEXT,
    PRIMARY KEY (device, seq));
"""


@dataclass(frozen=True, slots=True)
class Round:
    sheet: str
    round: int
    precinct: str
    device: str
    reason: str | None
    status: str  # keying | conflict | signed | sent
    figures: Figures | None  # the figures agreed or resolved (full, not deltas)
    resolved_by: str | None


@dataclass(frozen=True, slots=True)
class Keying:
    signer: str
    role: str
    figures: Figures
    kid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class PendingBatch:
    device: str
    seq: int
    sheet: str
    round: int
    payload: bytes


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StationState:
    """The state file of one station directory. Constructing it does no I/O: :meth:`open`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self._db: sqlite3.Connection | None = None

    def open(self) -> StationState:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StationStateError(f"cannot open the station state {self.path}: {exc}") from exc
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StationStateError("the station state is not open")
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- rounds and keyings ---------------------------------------------------------------
    def rounds(self, sheet: str | None = None) -> list[Round]:
        query = "SELECT sheet, round, precinct, device, reason, status, figures, resolved_by FROM rounds"
        rows = self.db.execute(query + (" WHERE sheet = ?" if sheet else "") + " ORDER BY sheet, round", (sheet,) if sheet else ())
        return [
            Round(s, r, p, d, reason, status, None if f is None else Figures.from_json(f), by)
            for s, r, p, d, reason, status, f, by in rows
        ]

    def current(self, sheet: str) -> Round | None:
        found = self.rounds(sheet)
        return found[-1] if found else None

    def sent_figures(self, sheet: str) -> Figures | None:
        """The figures of the sheet's last round sent (or signed): what the cloud counts for it."""
        done = [r for r in self.rounds(sheet) if r.status in ("signed", "sent")]
        return done[-1].figures if done else None

    def start_round(self, db: sqlite3.Connection, sheet: str, number: int, precinct: str, device: str, reason: str | None) -> None:
        db.execute(
            "INSERT INTO rounds (sheet, round, precinct, device, reason, status) VALUES (?, ?, ?, ?, ?, 'keying')",
            (sheet, number, precinct, device, reason),
        )

    def set_status(self, db: sqlite3.Connection, sheet: str, number: int, status: str, figures: Figures | None = None, resolved_by: str | None = None) -> None:
        db.execute(
            "UPDATE rounds SET status = ?, figures = coalesce(?, figures), resolved_by = coalesce(?, resolved_by)"
            " WHERE sheet = ? AND round = ?",
            (status, None if figures is None else figures.to_json(), resolved_by, sheet, number),
        )

    def add_keying(self, db: sqlite3.Connection, sheet: str, number: int, keying: Keying) -> None:
        db.execute(
            "INSERT INTO keyings (sheet, round, signer, role, figures, kid, sig, keyed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (sheet, number, keying.signer, keying.role, keying.figures.to_json(), keying.kid, keying.sig, _now()),
        )

    def keyings(self, sheet: str, number: int) -> list[Keying]:
        rows = self.db.execute(
            "SELECT signer, role, figures, kid, sig FROM keyings WHERE sheet = ? AND round = ? ORDER BY keyed_at, rowid",
            (sheet, number),
        )
        return [Keying(s, role, Figures.from_json(f), kid, bytes(sig)) for s, role, f, kid, sig in rows]

    # -- the manual sources' chains and their batches -------------------------------------
    def chain_head(self, device: str) -> tuple[int, str]:
        row = self.db.execute("SELECT seq, hash FROM chain WHERE device = ?", (device,)).fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def record_batch(self, db: sqlite3.Connection, batch: PendingBatch, body_hash: str) -> None:
        """Write-ahead: the signed batch and the new chain head, before anything is published."""
        db.execute(
            "INSERT INTO batches (device, seq, sheet, round, payload, body_hash, signed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (batch.device, batch.seq, batch.sheet, batch.round, batch.payload, body_hash, _now()),
        )
        db.execute(
            "INSERT INTO chain (device, seq, hash) VALUES (?, ?, ?)"
            " ON CONFLICT (device) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (batch.device, batch.seq, body_hash),
        )

    def unsent(self) -> list[PendingBatch]:
        rows = self.db.execute(
            "SELECT device, seq, sheet, round, payload FROM batches WHERE sent_at IS NULL ORDER BY device, seq"
        )
        return [PendingBatch(d, s, sh, r, bytes(p)) for d, s, sh, r, p in rows]

    def mark_sent(self, batch: PendingBatch) -> None:
        with self.transaction() as db:
            db.execute("UPDATE batches SET sent_at = ? WHERE device = ? AND seq = ?", (_now(), batch.device, batch.seq))
            self.set_status(db, batch.sheet, batch.round, "sent")
        log.info("device=%s seq=%d sheet=%s round=%d sent", batch.device, batch.seq, batch.sheet, batch.round)
