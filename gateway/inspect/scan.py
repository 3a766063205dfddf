"""The two reading passes of ``buffer recover`` over a damaged buffer (read-only, no writes).

:func:`sql_rows` reads every ``messages`` row SQLite can still reach, in chunks of
:data:`CHUNK` ids, retrying a failing chunk id by id and marking what still fails in a
:class:`Scan`; :func:`page_rows` then reads the raw leaf pages (gateway/inspect/pages.py) for
the ids the SQL pass missed, keeping only records shaped like a ``messages`` row.
gateway/inspect/recover.py checks and writes what they find.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from gateway.buffer.schema import State
from gateway.buffer.tables import messages
from gateway.inspect.pages import leaf_records, open_pages

CHUNK = 500
COLUMNS = tuple(column.name for column in messages.columns)  # the current layout, in order
LAYOUTS = {len(COLUMNS): COLUMNS, 14: COLUMNS[:14]}  # by column count: current, revision 0001
STATES = frozenset(state.value for state in State)
UNBOUNDED = 1 << 62


@dataclass
class Scan:
    """What the SQL pass could and could not read."""

    schema_readable: bool = True
    unreadable: list[tuple[int, int]] = field(default_factory=list)  # inclusive id ranges
    seen: set[int] = field(default_factory=set)
    usage_from_pages: int | None = None  # live + delivered batches, from the usage row's page

    def missed(self, row_id: int) -> bool:
        if not self.schema_readable:
            return row_id not in self.seen
        return row_id not in self.seen and any(a <= row_id <= b for a, b in self.unreadable)

    def mark(self, first: int, last: int) -> None:
        if self.unreadable and self.unreadable[-1][1] == first - 1:
            self.unreadable[-1] = (self.unreadable[-1][0], last)
        else:
            self.unreadable.append((first, last))


def sql_rows(conn: Connection, scan: Scan) -> Iterator[dict[str, Any]]:
    """Every ``messages`` row SQLite can still read, in id order, as a column -> value dict."""
    try:
        present = [str(r[1]) for r in conn.exec_driver_sql("PRAGMA table_info(messages)")]
    except SQLAlchemyError:
        present = []
    if not present or "id" not in present:
        scan.schema_readable = False
        return
    columns = [c for c in COLUMNS if c in present]
    select = f"SELECT {', '.join(columns)} FROM messages NOT INDEXED"
    upper = _upper_id(conn)
    cursor = 0
    while cursor < (upper if upper is not None else UNBOUNDED):  # the cursor only grows
        try:
            rows = conn.exec_driver_sql(
                f"{select} WHERE id > ? ORDER BY id LIMIT ?", (cursor, CHUNK)
            ).all()
        except SQLAlchemyError:
            if upper is None:  # nowhere known to resume: the page pass takes the rest
                scan.mark(cursor + 1, UNBOUNDED)
                return
            end = min(cursor + CHUNK, upper)
            yield from _probe(conn, select, cursor + 1, end, scan)
            cursor = end
            continue
        if not rows:
            return
        for row in rows:
            scan.seen.add(int(row.id))
            yield dict(row._mapping)
        cursor = int(rows[-1].id)


def _probe(conn: Connection, select: str, first: int, last: int, scan: Scan) -> Iterator[dict[str, Any]]:
    """Ids ``first``..``last`` one by one; those SQLite cannot read are marked unreadable."""
    for row_id in range(first, last + 1):
        try:
            row = conn.exec_driver_sql(f"{select} WHERE id = ?", (row_id,)).first()
        except SQLAlchemyError:
            scan.mark(row_id, row_id)
            continue
        if row is not None:
            scan.seen.add(row_id)
            yield dict(row._mapping)


def _upper_id(conn: Connection) -> int | None:
    found: list[int] = []
    for sql in (
        "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
        "SELECT max(id) FROM messages",
    ):
        try:
            value = conn.exec_driver_sql(sql).scalar()
        except SQLAlchemyError:
            continue
        if value is not None:
            found.append(int(value))
    return max(found) if found else None


def page_rows(path: Path, scan: Scan) -> Iterator[dict[str, Any]]:
    """Rows from the raw pages that the SQL pass missed and that look like ``messages`` rows."""
    with open_pages(path) as pages:
        for rowid, values in leaf_records(pages):
            if _usage_record(rowid, values):
                scan.usage_from_pages = int(values[1]) + int(values[3])
                continue
            layout = LAYOUTS.get(len(values))
            if layout is None or not scan.missed(rowid):
                continue
            row = dict(zip(layout, values, strict=True))
            row["id"] = rowid
            if _plausible(row):
                scan.seen.add(rowid)
                yield row


def _usage_record(rowid: int, values: list[Any]) -> bool:
    """The one row of ``usage``: id 1 (stored as NULL, the rowid) and four integers >= 0 (six
    since revision 0003 added the quarantined counters)."""
    return (
        rowid == 1
        and len(values) in (5, 7)
        and values[0] is None
        and all(isinstance(v, int) and v >= 0 for v in values[1:])
    )


def _plausible(row: dict[str, Any]) -> bool:
    return (
        row.get("state") in STATES
        and isinstance(row.get("topic"), str)
        and isinstance(row.get("payload"), bytes)
        and isinstance(row.get("received_at"), int | float)
    )
