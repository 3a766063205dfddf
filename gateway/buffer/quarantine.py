"""Quarantine flood control: a device allowed to publish must not fill the disk with rejects.

Rejects (verify.py: bad topic, signature, body...) are stored as ``quarantined`` rows for
inspection, but only within :class:`gateway.buffer.rows.QuarantineCaps`: rows and payload
bytes per device (the device named by the topic; ``''`` when the topic names none) and in
total. A reject past any cap is not stored: its (device, reason) counter in
``quarantine_dropped`` grows instead, in the same transaction that stores the rest of its
group, so the count survives a crash exactly like the rows, and the message is still
acknowledged after that commit (the broker would otherwise redeliver it forever).

What the caps count is read inside the write transaction from counters that SQLite triggers
keep exact (migration 0003): ``usage.quarantined_*`` (one primary-key read) and
``quarantine_usage`` (one primary-key read per device of the group's rejects). A group with
no rejects reads nothing. Because the triggers fire in every transaction that changes
``messages``, ``buffer retry`` (rows passing verification leave quarantine) and ``buffer
purge --state quarantined`` free room at once, also while the gateway runs.

Valid batches are never refused here, and quarantined rows do not count toward
``--max-buffer-batches`` / ``--max-buffer-bytes`` (backpressure admits on pending + in flight,
gateway/buffer/backpressure.py): someone else's rejects can never hold back a valid batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from gateway.buffer.rows import (
    MAX_DROPPED_KEYS,
    NO_DEVICE,
    OTHER_DEVICE,
    Dropped,
    NewMessage,
    QuarantineCaps,
    device_label,
)
from gateway.buffer.schema import State

KEY_CHUNK = 500  # device keys per IN (...) clause
UNKNOWN_REASON = "unknown"

_UPSERT_DROPPED = (
    "INSERT INTO quarantine_dropped (device, reason, count, bytes, first_at, last_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, reason) DO UPDATE SET"
    " count = count + excluded.count, bytes = bytes + excluded.bytes, last_at = excluded.last_at"
)


def device_key(message: NewMessage) -> str:
    """The per-device counter a reject counts under: the topic's device, or ``''``."""
    return NO_DEVICE if message.device is None else message.device


@dataclass
class _Tally:
    count: int = 0
    bytes: int = 0
    cap: str = ""


def admit(
    conn: Connection, batch: Sequence[NewMessage], caps: QuarantineCaps, now: float
) -> tuple[list[NewMessage], tuple[Dropped, ...], frozenset[int]]:
    """The rows of ``batch`` to store, in order, the rejects counted instead, and their
    indexes in ``batch``.

    Runs inside the caller's write transaction; records the dropped counters in it.
    """
    rejects = [m for m in batch if m.state is State.QUARANTINED]
    if not rejects:
        return list(batch), (), frozenset()
    total = list(
        conn.exec_driver_sql(
            "SELECT quarantined_batches, quarantined_bytes FROM usage WHERE id = 1"
        ).one()
    )
    held = _held(conn, sorted({device_key(m) for m in rejects}))
    kept: list[NewMessage] = []
    drops: dict[tuple[str, str], _Tally] = {}
    skipped: set[int] = set()
    for index, message in enumerate(batch):
        if message.state is not State.QUARANTINED:
            kept.append(message)
            continue
        key, size = device_key(message), len(message.payload)
        device = held.setdefault(key, [0, 0])
        cap = caps.refusal((device[0], device[1]), (total[0], total[1]), size)
        if cap is None:
            kept.append(message)
            device[0] += 1
            device[1] += size
            total[0] += 1
            total[1] += size
            continue
        tally = drops.setdefault((key, message.reason or UNKNOWN_REASON), _Tally(cap=cap))
        tally.count += 1
        tally.bytes += size
        skipped.add(index)
    if not drops:
        return kept, (), frozenset()
    return kept, _record(conn, drops, now), frozenset(skipped)


def _held(conn: Connection, keys: list[str]) -> dict[str, list[int]]:
    held: dict[str, list[int]] = {}
    for start in range(0, len(keys), KEY_CHUNK):
        chunk = keys[start : start + KEY_CHUNK]
        for device, rows, size in conn.exec_driver_sql(
            "SELECT device, rows, bytes FROM quarantine_usage"
            f" WHERE device IN ({', '.join('?' * len(chunk))})",
            tuple(chunk),
        ):
            held[str(device)] = [int(rows), int(size)]
    return held


def _record(
    conn: Connection, drops: dict[tuple[str, str], _Tally], now: float
) -> tuple[Dropped, ...]:
    """Add ``drops`` to ``quarantine_dropped``; keys past :data:`MAX_DROPPED_KEYS` count as
    OTHER_DEVICE (so a flood on made-up device names cannot grow the table without bound)."""
    keys = list(drops)
    existing: set[tuple[str, str]] = set()
    for start in range(0, len(keys), KEY_CHUNK):
        chunk = keys[start : start + KEY_CHUNK]
        where = " OR ".join("(device = ? AND reason = ?)" for _ in chunk)
        existing.update(
            (str(d), str(r))
            for d, r in conn.exec_driver_sql(
                f"SELECT device, reason FROM quarantine_dropped WHERE {where}",
                tuple(v for key in chunk for v in key),
            )
        )
    room = MAX_DROPPED_KEYS - int(
        conn.exec_driver_sql("SELECT count(*) FROM quarantine_dropped").scalar() or 0
    )
    merged: dict[tuple[str, str], _Tally] = {}
    for (device, reason), tally in drops.items():
        target = (device, reason)
        if target not in existing:
            if room > 0:
                room -= 1
            else:
                target = (OTHER_DEVICE, reason)
        into = merged.setdefault(target, _Tally(cap=tally.cap))
        into.count += tally.count
        into.bytes += tally.bytes
    conn.exec_driver_sql(
        _UPSERT_DROPPED,
        [(d, r, t.count, t.bytes, now, now) for (d, r), t in merged.items()],
    )
    return tuple(
        Dropped(device, reason, tally.count, tally.bytes, tally.cap)
        for (device, reason), tally in drops.items()
    )


WARN_AGAIN_S = 300.0  # a device still past its cap is named again at most this often


class DropWarnings:
    """One WARNING when a device first has a reject dropped (and again at most every
    :data:`WARN_AGAIN_S` while it keeps going, with the count since), not one per message.
    A device whose reject is stored again (room was freed) is warned afresh next time.
    Writer thread only."""

    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._since: dict[str, tuple[float, int]] = {}  # device -> (last warning, dropped since)

    def stored(self, device: str) -> None:
        self._since.pop(device, None)

    def dropped(self, drops: Sequence[Dropped], caps: QuarantineCaps) -> None:
        now = self._clock()
        for drop in drops:
            last = self._since.get(drop.device)
            if last is not None and now - last[0] < WARN_AGAIN_S:
                self._since[drop.device] = (last[0], last[1] + drop.count)
                continue
            self._since[drop.device] = (now, 0)
            if last is None:
                self._log.warning(
                    "quarantine cap reached (%s) for device=%s reason=%s: its rejects are now"
                    " counted, not stored (see `edgetally gateway buffer stats`)",
                    _describe(drop.cap, caps),
                    device_label(drop.device),
                    drop.reason,
                )
            else:
                self._log.warning(
                    "device=%s still past its quarantine cap (%s): %d more rejects counted"
                    " since the last warning, latest reason=%s",
                    device_label(drop.device),
                    _describe(drop.cap, caps),
                    last[1] + drop.count,
                    drop.reason,
                )


def _describe(cap: str, caps: QuarantineCaps) -> str:
    limits = {
        "device_rows": f"{caps.rows_per_device:,} rows per device",
        "device_bytes": f"{caps.bytes_per_device:,} bytes per device",
        "total_rows": f"{caps.rows:,} rows in total",
        "total_bytes": f"{caps.bytes:,} bytes in total",
    }
    return limits.get(cap, cap)
