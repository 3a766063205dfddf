"""What the rules wrote, read back for people: alerts, stored rows, dead letters.

Used by `edgetally cloud alerts`, `cloud stored` and `cloud dead-letters`: read-only, in one
snapshot; the newest ``limit`` rows (0: all), shown oldest first. ``--json`` prints the rows as
mappings with ``row`` decoded from JSON and times in RFC 3339 UTC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Table as SqlTable
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cloud import models
from cloud.config import DEFAULT_OUTPUT_LIMIT
from cloud.db import check_schema, translate_errors


def _read(engine: Engine, table: SqlTable, limit: int, **where: Any) -> list[dict[str, Any]]:
    check_schema(engine)
    query = select(table).order_by(table.c.id.desc())
    for column, value in where.items():
        if value is not None:
            query = query.where(table.c[column] == value)
    if limit:
        query = query.limit(limit)
    with translate_errors(f"reading {table.name}"), engine.connect() as conn:
        found = [dict(r._mapping) for r in conn.execute(query)]
    found.reverse()
    for row in found:
        row.pop("dedup_key", None)
        row["row"] = json.loads(row["row"])
        for key, value in row.items():
            if isinstance(value, datetime):
                row[key] = value.isoformat().replace("+00:00", "Z")
    return found


def load_alerts(
    engine: Engine,
    *,
    rule: str | None = None,
    device: str | None = None,
    election: str | None = None,
    limit: int = DEFAULT_OUTPUT_LIMIT,
) -> list[dict[str, Any]]:
    return _read(engine, models.alerts, limit, rule=rule, device=device, election=election)


def load_stored(engine: Engine, table: str, *, limit: int = DEFAULT_OUTPUT_LIMIT) -> list[dict[str, Any]]:
    return _read(engine, models.stored_rows, limit, table_name=table)


def load_dead_letters(engine: Engine, *, limit: int = DEFAULT_OUTPUT_LIMIT) -> list[dict[str, Any]]:
    return _read(engine, models.dead_letters, limit)


def stored_tables(engine: Engine) -> dict[str, int]:
    """Each logical table the store actions wrote, with its row count."""
    check_schema(engine)
    t = models.stored_rows.c
    query = select(t.table_name, func.count()).group_by(t.table_name).order_by(t.table_name)
    with translate_errors("reading stored_rows"), engine.connect() as conn:
        return {name: int(count) for name, count in conn.execute(query)}


_SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def render_alerts(alerts: Sequence[dict[str, Any]], console: Console) -> None:
    if not alerts:
        console.print("no alerts")
        return
    table = Table(title=f"Alerts ({len(alerts)}, oldest first)")
    for name in ("raised", "severity", "rule", "device", "seq", "message"):
        table.add_column(name, justify="right" if name == "seq" else "left")
    for a in alerts:
        style = _SEVERITY_STYLE.get(a["severity"], "")
        table.add_row(
            a["raised_at"],
            f"[{style}]{a['severity']}[/]" if style else a["severity"],
            escape(a["rule"]),
            escape(a["device"] or "-"),
            "-" if a["seq"] is None else str(a["seq"]),
            escape(a["message"]),
        )
    console.print(table)


def render_stored(table_name: str, stored: Sequence[dict[str, Any]], console: Console) -> None:
    if not stored:
        console.print(f"no rows stored in {table_name!r}")
        return
    table = Table(title=f"Stored rows of {table_name!r} ({len(stored)}, oldest first)")
    for name in ("stored", "rule", "device", "seq", "row"):
        table.add_column(name, justify="right" if name == "seq" else "left")
    for s in stored:
        table.add_row(
            s["stored_at"],
            escape(s["rule"]),
            escape(s["device"] or "-"),
            "-" if s["seq"] is None else str(s["seq"]),
            escape(json.dumps(s["row"], separators=(", ", ": "))),
        )
    console.print(table)


def render_tables(tables: dict[str, int], console: Console) -> None:
    if not tables:
        console.print("no rows stored (no store action has run)")
        return
    table = Table(title="Stored tables (edgetally cloud stored --table NAME shows one)")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in tables.items():
        table.add_row(escape(name), f"{count:,}")
    console.print(table)


def render_dead_letters(letters: Sequence[dict[str, Any]], console: Console) -> None:
    if not letters:
        console.print("no dead letters")
        return
    table = Table(title=f"Dead letters ({len(letters)}, oldest first)")
    for name in ("failed", "rule", "action", "device", "seq", "error", "row"):
        table.add_column(name, justify="right" if name == "seq" else "left")
    for d in letters:
        table.add_row(
            d["failed_at"],
            escape(d["rule"]),
            escape(d["action"]),
            escape(d["device"] or "-"),
            "-" if d["seq"] is None else str(d["seq"]),
            escape(d["error"]),
            escape(json.dumps(d["row"], separators=(", ", ": "))),
        )
    console.print(table)
