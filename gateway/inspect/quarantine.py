"""The quarantine part of ``buffer stats``: what rejects hold, the caps, what the caps dropped.

Read in the caller's snapshot with ``sqlite3`` alone (no SQLAlchemy: ``buffer stats`` stays
fast). The caps are those the gateway that last opened the file recorded in ``settings``
(null if none did). Device keys: ``null`` in JSON (``(no device)`` in the table) for rejects
whose topic names no device, ``"*"`` (``(other devices)``) for dropped counters past the
10,000 (device, reason) keys the buffer keeps.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.buffer.rows import NO_DEVICE, device_label

TOP = 10  # dropped (device, reason) counters shown in the table; JSON has them all
CAPS = (
    ("rows_per_device", "max_quarantine_rows_per_device"),
    ("bytes_per_device", "max_quarantine_bytes_per_device"),
    ("rows", "max_quarantine_rows"),
    ("bytes", "max_quarantine_bytes"),
)


def _device(key: Any) -> str | None:
    return None if key == NO_DEVICE else str(key)


def quarantine_stats(conn: sqlite3.Connection, settings: dict[str, str]) -> dict[str, Any]:
    """The ``quarantine`` object of ``buffer stats --json`` (docs/gateway.md)."""
    from gateway.inspect.snapshot import iso  # snapshot imports this module

    caps = {name: int(settings[key]) if key in settings else None for name, key in CAPS}
    rows, size = conn.execute(
        "SELECT quarantined_batches, quarantined_bytes FROM usage WHERE id = 1"
    ).fetchone()
    held = [
        (_device(d), int(r), int(b))
        for d, r, b in conn.execute(
            "SELECT device, rows, bytes FROM quarantine_usage ORDER BY rows DESC, device"
        )
    ]
    per_rows, per_bytes = caps["rows_per_device"], caps["bytes_per_device"]
    at_cap = [
        device
        for device, r, b in held
        if (per_rows and r >= per_rows) or (per_bytes and b >= per_bytes)
    ]
    devices = [{"device": device, "rows": r, "bytes": b} for device, r, b in held]
    dropped = [
        {
            "device": _device(d),
            "reason": str(reason),
            "count": int(count),
            "bytes": int(nbytes),
            "first_at": iso(first),
            "last_at": iso(last),
        }
        for d, reason, count, nbytes, first, last in conn.execute(
            "SELECT device, reason, count, bytes, first_at, last_at FROM quarantine_dropped"
            " ORDER BY count DESC, device, reason"
        )
    ]
    total_rows, total_bytes = caps["rows"], caps["bytes"]
    return {
        "rows": int(rows),
        "bytes": int(size),
        "caps": caps,
        "devices": devices,
        "cap_reached": {
            "devices": at_cap,
            "total": bool(
                (total_rows and rows >= total_rows) or (total_bytes and size >= total_bytes)
            ),
        },
        "dropped": {
            "count": sum(d["count"] for d in dropped),
            "bytes": sum(d["bytes"] for d in dropped),
            "by_device_reason": dropped,
        },
    }


def render_quarantine_stats(data: dict[str, Any], console: Console) -> None:
    """The human form: held vs caps, devices at their cap, the top dropped counters."""
    caps = data["caps"]

    def cap(name: str) -> str:
        value = caps[name]
        return "-" if value is None else ("none" if value == 0 else f"{value:,}")

    reached = data["cap_reached"]
    console.print(
        f"quarantine: {data['rows']:,} rows, {data['bytes']:,} bytes held"
        f" (caps: {cap('rows')} rows, {cap('bytes')} bytes in total;"
        f" {cap('rows_per_device')} rows, {cap('bytes_per_device')} bytes per device)"
        + ("; TOTAL CAP REACHED" if reached["total"] else "")
    )
    if reached["devices"]:
        names = ", ".join(device_label(d or NO_DEVICE) for d in reached["devices"][:TOP])
        more = len(reached["devices"]) - TOP
        console.print(
            f"devices at their quarantine cap: {names}" + (f" and {more} more" if more > 0 else "")
        )
    dropped = data["dropped"]
    console.print(
        f"dropped (past a cap, counted not stored): {dropped['count']:,} rejects,"
        f" {dropped['bytes']:,} bytes"
    )
    if not dropped["by_device_reason"]:
        return
    table = Table(title=f"dropped rejects, top {TOP} by count", title_justify="left")
    for name, justify in (("device", "left"), ("reason", "left"), ("count", "right"), ("bytes", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for entry in dropped["by_device_reason"][:TOP]:
        table.add_row(
            device_label(entry["device"] or NO_DEVICE),
            entry["reason"],
            f"{entry['count']:,}",
            f"{entry['bytes']:,}",
        )
    console.print(table)
