"""Inspecting a buffer file, also while its gateway runs, and what every ``buffer`` command shares.

Reading commands open the file with SQLite ``mode=ro`` and one ``BEGIN`` (deferred): one
consistent snapshot, and in WAL mode readers neither wait for nor block the gateway's
writes. Writing commands (``retry``, ``purge``) use short ``BEGIN IMMEDIATE`` transactions
with a busy timeout (``--wait``), so they queue behind the gateway's group commits for a few
milliseconds and never hold it up for long; the usage triggers keep the counters right.

A missing file, a file that is not SQLite, another application's SQLite file, a damaged
file and one from a newer gateway are refused with a one-line error and left unchanged.
This module holds the shared read access (:func:`snapshot`, plain ``sqlite3``: no SQLAlchemy
is imported to read), time and duration helpers, and ``stats``; the writing commands' access
is in :mod:`gateway.inspect.writer`.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway._exceptions import ForeignFile
from gateway.buffer.rows import Usage
from gateway.buffer.schema import (
    FileKind,
    State,
    head_revision,
    readonly_connect,
    recognise,
    translate,
)
from gateway.inspect.quarantine import quarantine_stats, render_quarantine_stats

DEFAULT_WAIT_S = 5.0  # how long a command waits for SQLite locks before "locked"


# -- access ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Snapshot:
    """One read transaction on a buffer file; every query through ``conn`` sees the same state.

    ``conn`` is a plain ``sqlite3`` connection whose rows are :class:`sqlite3.Row` (by index
    or by column name): the inspection commands run their own SQL, and reading without
    SQLAlchemy keeps ``edgetally gateway buffer stats`` at interpreter-start speed.
    """

    path: Path
    conn: sqlite3.Connection

    def settings(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.conn.execute("SELECT name, value FROM settings")}

    def usage(self) -> Usage:
        row = self.conn.execute(
            "SELECT live_batches, live_bytes, delivered_batches, delivered_bytes FROM usage WHERE id = 1"
        ).fetchone()
        if row is None:
            raise ForeignFile(f"{self.path} has no usage row, so it is not a gateway buffer; it was left unchanged")
        return Usage(*(int(v) for v in row))


def require_buffer(path: Path, wait_s: float) -> None:
    if recognise(path, allow_old=False, wait_s=wait_s).kind is FileKind.EMPTY:
        raise ForeignFile(f"{path} is an empty file, not a gateway buffer; it was left unchanged")


@contextmanager
def snapshot(path: Path, *, wait_s: float = DEFAULT_WAIT_S) -> Iterator[Snapshot]:
    """A read-only, consistent view of the buffer at ``path`` (errors translated, one line)."""
    require_buffer(path, wait_s)
    try:
        conn = readonly_connect(path, busy_timeout_ms=int(wait_s * 1000), quiescent=True)
    except sqlite3.Error as exc:
        raise translate(exc, path, "read", wait_s=wait_s) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN")
        yield Snapshot(path, conn)
    except sqlite3.Error as exc:
        raise translate(exc, path, "read", wait_s=wait_s) from exc
    finally:
        conn.close()


# -- times and durations -----------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``5m``, ``2h``, ``1d``, ``1h30m`` or a bare number of seconds."""
    cleaned = text.strip().lower()
    pos, total = 0, 0.0
    while pos < len(cleaned):
        match = _DURATION.match(cleaned, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"{text!r} is not a duration (examples: 90s, 5m, 2h, 1d, 1h30m)")
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if not cleaned:
        raise ValueError("empty duration")
    return total


def iso(moment: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, or None."""
    if moment is None:
        return None
    return datetime.fromtimestamp(float(moment), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover


# -- stats ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BufferStats:
    path: Path
    states: dict[State, int]
    oldest_pending_age_s: float | None  # oldest batch not yet delivered (pending or in flight)
    db_bytes: int
    wal_bytes: int
    usage: Usage
    retention_s: float | None  # what the gateway that last opened the file keeps delivered rows
    gateway: str | None
    keys_dir: str | None
    schema: str
    quarantine: dict[str, Any]  # gateway/inspect/quarantine.py

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
            "usage": {
                "live_batches": self.usage.live_batches,
                "live_bytes": self.usage.live_bytes,
                "delivered_batches": self.usage.delivered_batches,
                "delivered_bytes": self.usage.delivered_bytes,
            },
            "retention_s": self.retention_s,
            "gateway": self.gateway,
            "keys_dir": self.keys_dir,
            "schema": self.schema,
            "quarantine": self.quarantine,
        }


_STATS = (
    "SELECT (SELECT count(*) FROM messages WHERE state = 'pending'),"
    " (SELECT count(*) FROM messages WHERE state = 'inflight'),"
    " (SELECT count(*) FROM messages WHERE state = 'quarantined'),"
    " (SELECT received_at FROM messages WHERE id = (SELECT min(m) FROM ("
    "   SELECT min(id) AS m FROM messages WHERE state = 'pending'"
    "   UNION ALL SELECT min(id) FROM messages WHERE state = 'inflight')))"
)


def buffer_stats(path: Path, *, now: float | None = None, wait_s: float = DEFAULT_WAIT_S) -> BufferStats:
    """Counts by state, usage, age of the oldest undelivered batch, retention and size."""
    with snapshot(path, wait_s=wait_s) as snap:
        pending, inflight, quarantined, oldest = snap.conn.execute(_STATS).fetchone()
        usage = snap.usage()
        recorded = snap.settings()
        quarantine = quarantine_stats(snap.conn, recorded)
    moment = time.time() if now is None else now
    wal = path.with_name(path.name + "-wal")
    retention = recorded.get("delivered_retention_s")
    return BufferStats(
        path=path,
        states={
            State.PENDING: int(pending),
            State.INFLIGHT: int(inflight),
            State.DELIVERED: usage.delivered_batches,  # exact (triggers), and O(1)
            State.QUARANTINED: int(quarantined),
        },
        oldest_pending_age_s=None if oldest is None else max(0.0, moment - float(oldest)),
        db_bytes=path.stat().st_size,
        wal_bytes=wal.stat().st_size if wal.exists() else 0,
        usage=usage,
        retention_s=None if retention is None else float(retention),
        gateway=recorded.get("gateway_id"),
        keys_dir=recorded.get("keys_dir"),
        schema=head_revision(),
        quarantine=quarantine,
    )


def render_stats(stats: BufferStats, console: Console) -> None:
    """The human form: a table of states, then usage, age, retention and size."""
    console.print(f"[bold]gateway buffer[/] {stats.path}")
    table = Table()
    table.add_column("state")
    table.add_column("messages", justify="right")
    for state in State:
        table.add_row(state.value, str(stats.states[state]))
    table.add_section()
    table.add_row("total", str(stats.total))
    console.print(table)
    usage = stats.usage
    console.print(
        f"usage: live {usage.live_batches} batches, {human_bytes(usage.live_bytes)}"
        f" (pending + in flight + quarantined; --max-buffer-* count pending + in flight);"
        f" delivered {usage.delivered_batches} batches, {human_bytes(usage.delivered_bytes)}"
    )
    age = stats.oldest_pending_age_s
    console.print(f"oldest pending: {'-' if age is None else f'{age:.1f} s'}")
    retention = "-" if stats.retention_s is None else f"{stats.retention_s:g} s"
    console.print(
        f"delivered kept for: {retention} (gateway {stats.gateway or '-'}, keys {stats.keys_dir or '-'})"
    )
    render_quarantine_stats(stats.quarantine, console)
    console.print(
        f"file size: {stats.file_bytes} bytes (database {stats.db_bytes}, write-ahead log {stats.wal_bytes})"
    )

