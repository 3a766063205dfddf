"""Inspecting a buffer file, also while its gateway runs: read-only, one consistent snapshot.

The file is opened with SQLite ``mode=ro``; in WAL mode readers neither wait for nor block
the gateway's writes. A missing file, a file that is not SQLite and another application's
SQLite file are refused with a clear error and left unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from gateway._exceptions import ForeignFile, StoreError
from gateway.schema import LIVE_STATES, FileKind, State, identify, messages, readonly_engine

c = messages.c


@dataclass(frozen=True, slots=True)
class BufferStats:
    path: Path
    states: dict[State, int]
    oldest_pending_age_s: float | None  # oldest batch not yet delivered (pending or in flight)
    db_bytes: int
    wal_bytes: int

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def file_bytes(self) -> int:
        """Bytes on disk: the database file plus its write-ahead log."""
        return self.db_bytes + self.wal_bytes

    def to_mapping(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "states": {state.value: self.states[state] for state in State},
            "total": self.total,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "file_bytes": self.file_bytes,
        }


def buffer_stats(path: Path, *, now: float | None = None) -> BufferStats:
    """Counts by state, age of the oldest undelivered batch, and size of the buffer at ``path``."""
    if identify(path) is FileKind.EMPTY:
        raise ForeignFile(f"{path} is an empty file, not a gateway buffer; it was left unchanged")
    engine = readonly_engine(path)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")  # one read snapshot for every query below
            found: dict[str, int] = dict(
                conn.execute(select(c.state, func.count()).group_by(c.state)).all()
            )
            oldest = conn.execute(
                select(c.received_at)
                .where(c.state.in_([s.value for s in LIVE_STATES]))
                .order_by(c.id)
                .limit(1)
            ).scalar()
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise StoreError(f"cannot read buffer {path}: {cause}") from exc
    finally:
        engine.dispose()
    moment = time.time() if now is None else now
    wal = path.with_name(path.name + "-wal")
    return BufferStats(
        path=path,
        states={state: int(found.get(state.value, 0)) for state in State},
        oldest_pending_age_s=None if oldest is None else max(0.0, moment - float(oldest)),
        db_bytes=path.stat().st_size,
        wal_bytes=wal.stat().st_size if wal.exists() else 0,
    )


def render_stats(stats: BufferStats, console: Console) -> None:
    """The human form: a table of states, then age and size."""
    console.print(f"[bold]gateway buffer[/] {stats.path}")
    table = Table()
    table.add_column("state")
    table.add_column("messages", justify="right")
    for state in State:
        table.add_row(state.value, str(stats.states[state]))
    table.add_section()
    table.add_row("total", str(stats.total))
    console.print(table)
    age = stats.oldest_pending_age_s
    console.print(f"oldest pending: {'-' if age is None else f'{age:.1f} s'}")
    console.print(
        f"file size: {stats.file_bytes} bytes (database {stats.db_bytes}, write-ahead log {stats.wal_bytes})"
    )
