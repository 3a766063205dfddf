"""``buffer check``: is this buffer file sound? Read-only, also on a running gateway's file.

Checks, in one read snapshot: the header (SQLite, application id, not truncated), SQLite's
``PRAGMA integrity_check``, the schema revision, that the usage counters equal what the
rows add up to, that every row can be read, and that every payload on its way to (or already
at) the cloud still parses and matches its stored body hash; with ``--keys`` each of those is
verified again as the gateway would. ``ok`` only if every check passed.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from gateway._exceptions import CorruptBuffer, ForeignFile, SchemaTooNew
from gateway.buffer.file import readonly_engine
from gateway.buffer.rows import Usage
from gateway.buffer.schema import FileKind, State, head_revision, recognise
from gateway.inspect.recover import payload_problem
from gateway.inspect.rows import load_keys
from gateway.inspect.scan import UNBOUNDED, Scan, sql_rows
from protocol import DEFAULT_MAX_BYTES, Registry

EXAMPLES = 20


@dataclass
class CheckReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    application_id: int | None = None
    revision: str | None = None
    integrity: list[str] = field(default_factory=list)
    usage_recorded: Usage | None = None
    usage_actual: Usage | None = None
    rows_read: int = 0
    payloads_checked: int = 0
    payload_problems: int = 0
    signatures_checked: bool = False
    examples: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_mapping(self) -> dict[str, Any]:
        def usage(value: Usage | None) -> dict[str, int] | None:
            return None if value is None else {
                "live_batches": value.live_batches,
                "live_bytes": value.live_bytes,
                "delivered_batches": value.delivered_batches,
                "delivered_bytes": value.delivered_bytes,
            }

        return {
            "path": str(self.path),
            "ok": self.ok,
            "problems": self.problems,
            "application_id": self.application_id,
            "schema": {"revision": self.revision, "head": head_revision()},
            "integrity": self.integrity,
            "usage": {"recorded": usage(self.usage_recorded), "actual": usage(self.usage_actual)},
            "rows": {
                "read": self.rows_read,
                "payloads_checked": self.payloads_checked,
                "payload_problems": self.payload_problems,
                "signatures_checked": self.signatures_checked,
                "unreadable_ids": [[a, None if b >= UNBOUNDED else b] for a, b in self.unreadable],
            },
            "examples": self.examples,
        }


def check(path: Path, *, keys_dir: Path | None = None) -> CheckReport:
    """Run every check on the buffer at ``path``; missing or foreign files raise (one line)."""
    registry = None if keys_dir is None else load_keys(keys_dir)
    report = CheckReport(path, signatures_checked=registry is not None)
    try:
        kind = recognise(path).kind
        if kind is FileKind.EMPTY:
            raise ForeignFile(f"{path} is an empty file, not a gateway buffer; it was left unchanged")
    except (CorruptBuffer, SchemaTooNew) as err:
        report.problems.append(str(err))
    with open(path, "rb") as file:
        header = file.read(100)
    report.application_id = int.from_bytes(header[68:72], "big") if len(header) >= 72 else None
    engine = readonly_engine(path, quiescent=True)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            _integrity(conn, report)
            _revision(conn, report)
            _usage(conn, report)
            _quarantine_counters(conn, report)
            _rows(conn, report, registry)
    except SQLAlchemyError as exc:
        cause = " ".join(str(getattr(exc, "orig", None) or exc).split())
        report.problems.append(f"SQLite cannot read the file: {cause}")
    finally:
        engine.dispose()
    return report


def _integrity(conn: Connection, report: CheckReport) -> None:
    try:
        found = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check(20)")]
    except SQLAlchemyError as exc:
        found = [" ".join(str(getattr(exc, "orig", None) or exc).split())]
    report.integrity = [" ".join(f.split()) for f in found]
    if report.integrity != ["ok"]:
        report.problems.append(f"integrity_check: {'; '.join(report.integrity[:3])}")


def _revision(conn: Connection, report: CheckReport) -> None:
    try:
        value = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except SQLAlchemyError:
        report.problems.append("the schema revision cannot be read")
        return
    report.revision = None if value is None else str(value)
    if report.revision != head_revision():
        report.problems.append(
            f"schema revision {report.revision!r}, this version expects {head_revision()!r}"
            " (the gateway upgrades it when it starts)"
        )


def _usage(conn: Connection, report: CheckReport) -> None:
    try:
        recorded = conn.exec_driver_sql(
            "SELECT live_batches, live_bytes, delivered_batches, delivered_bytes FROM usage WHERE id = 1"
        ).one()
        actual = conn.exec_driver_sql(
            "SELECT coalesce(sum(state <> 'delivered'), 0), coalesce(sum((state <> 'delivered') * size), 0),"
            " coalesce(sum(state = 'delivered'), 0), coalesce(sum((state = 'delivered') * size), 0)"
            " FROM messages"
        ).one()
    except SQLAlchemyError as exc:
        cause = " ".join(str(getattr(exc, "orig", None) or exc).split())
        report.problems.append(f"usage counters cannot be compared: {cause}")
        return
    report.usage_recorded = Usage(*(int(v) for v in recorded))
    report.usage_actual = Usage(*(int(v) for v in actual))
    if report.usage_recorded != report.usage_actual:
        report.problems.append(
            f"usage counters {report.usage_recorded} differ from the rows {report.usage_actual}"
        )


def _quarantine_counters(conn: Connection, report: CheckReport) -> None:
    """The quarantine caps' counters (usage.quarantined_*, quarantine_usage) against the rows."""
    try:
        recorded = tuple(conn.exec_driver_sql(
            "SELECT quarantined_batches, quarantined_bytes FROM usage WHERE id = 1"
        ).one())
        actual = tuple(conn.exec_driver_sql(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE state = 'quarantined'"
        ).one())
        held = {
            str(d): (int(r), int(b))
            for d, r, b in conn.exec_driver_sql("SELECT device, rows, bytes FROM quarantine_usage")
        }
        rows = {
            str(d): (int(r), int(b))
            for d, r, b in conn.exec_driver_sql(
                "SELECT coalesce(device, ''), count(*), sum(size) FROM messages"
                " WHERE state = 'quarantined' GROUP BY 1"
            )
        }
    except SQLAlchemyError as exc:
        cause = " ".join(str(getattr(exc, "orig", None) or exc).split())
        report.problems.append(f"quarantine counters cannot be compared: {cause}")
        return
    if recorded != actual:
        report.problems.append(
            f"quarantine counters (rows, bytes) {recorded} differ from the rows {actual}"
        )
    devices = sorted(d for d in held.keys() | rows.keys() if held.get(d) != rows.get(d))
    if devices:
        names = ", ".join(repr(d) for d in devices[:5])
        report.problems.append(f"per-device quarantine counters differ from the rows for {names}")


def _rows(conn: Connection, report: CheckReport, registry: Registry | None) -> None:
    recorded: dict[str, str] = {}
    with suppress(SQLAlchemyError):  # unreadable settings: the default payload limit, then
        recorded = {str(k): str(v) for k, v in conn.exec_driver_sql("SELECT name, value FROM settings")}
    max_bytes = int(recorded.get("max_payload_bytes", DEFAULT_MAX_BYTES))
    scan = Scan()
    for row in sql_rows(conn, scan):
        report.rows_read += 1
        if row["state"] == State.QUARANTINED.value:
            continue  # rejected on arrival, with its reason: not a fault of the file
        report.payloads_checked += 1
        problem = payload_problem(row, bytes(row["payload"]), registry, max_bytes)
        if problem is not None:
            report.payload_problems += 1
            if len(report.examples) < EXAMPLES:
                report.examples.append(
                    {"id": row["id"], "state": row["state"], "reason": problem[0], "detail": problem[1]}
                )
    report.unreadable = scan.unreadable
    if not scan.schema_readable:
        report.problems.append("the messages table cannot be read")
    if scan.unreadable:
        ranges = ", ".join(f"{a}-{'end' if b >= UNBOUNDED else b}" for a, b in scan.unreadable[:5])
        report.problems.append(f"rows unreadable (ids {ranges})")
    if report.payload_problems:
        what = "fail verification or " if registry is not None else ""
        report.problems.append(
            f"{report.payload_problems} payloads on their way to the cloud {what}no longer match"
            " what was stored"
        )
