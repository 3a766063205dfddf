"""Gateway status in the cloud: the latest status of each gateway, stored and shown.

Gateways publish a retained status (protocol/gateway_status.py) on
``edgetally/v1/_gateway/{gateway}/status`` every few seconds, and their connections leave an
offline one as last will. The worker subscribes to them and :class:`StatusStore` upserts one
row per gateway (table ``gateway_status``), on SQLite and PostgreSQL alike:

- the newest arrival wins, except that a status of an earlier run of the gateway (older
  ``started_at``, e.g. a last will delivered late) never replaces one of a later run;
- a status that only speaks for one link (its last will, or its goodbye: no buffer figures)
  updates what it knows and keeps the last known buffer figures, rates and the other link.

``edgetally cloud gateways --db URL [--json]`` reads them (:func:`load_gateways`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud._exceptions import DatabaseError
from cloud.db import check_schema, translate_errors
from protocol import ProtocolError
from protocol.election import parse_timestamp
from protocol.gateway_status import GatewayStatus

log = logging.getLogger(__name__)

# Columns a link-only status (no buffer figures) leaves as they were when it has no value.
_KEPT_WHEN_UNKNOWN = (
    "uplink",
    "edge",
    "pending",
    "inflight",
    "delivered",
    "quarantined",
    "oldest_pending_age_s",
    "ingress_rate",
    "egress_rate",
    "rate_interval_s",
    "status_at",
)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One status message as it arrived."""

    status: GatewayStatus
    payload: bytes
    received_at: datetime


def _row(update: StatusUpdate) -> dict[str, Any]:
    s = update.status
    buffer = s.buffer or {}
    return {
        "gateway": s.gateway,
        "state": s.state,
        "uplink": s.uplink,
        "edge": s.edge,
        "pending": buffer.get("pending"),
        "inflight": buffer.get("inflight"),
        "delivered": buffer.get("delivered"),
        "quarantined": buffer.get("quarantined"),
        "oldest_pending_age_s": s.oldest_pending_age_s,
        "ingress_rate": None if s.rates is None else s.rates.ingress,
        "egress_rate": None if s.rates is None else s.rates.egress,
        "rate_interval_s": None if s.rates is None else s.rates.interval_s,
        "status_at": None if s.at is None else _time(s.at),
        "started_at": _time(s.started_at),
        "pid": s.pid,
        "version": s.version,
        "received_at": update.received_at,
        "status": update.payload.decode("utf-8"),
    }


def _time(text: str) -> datetime:
    return parse_timestamp(text, "gateway status")  # already checked by GatewayStatus.parse


class StatusStore:
    """Upserts gateway statuses. Constructing it does no I/O."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, updates: Sequence[StatusUpdate]) -> int:
        """Store ``updates`` in arrival order in one transaction; return how many were applied.

        Raises :class:`DatabaseUnavailable` (retry later: nothing was committed) or
        :class:`DatabaseError`.
        """
        if not updates:
            return 0
        applied = 0
        with translate_errors("storing gateway status"), self._engine.begin() as conn:
            for update in updates:  # one statement each: several may name the same gateway
                applied += _upsert(conn, _row(update), full=update.status.buffer is not None)
        return applied


def _upsert(conn: Connection, row: dict[str, Any], *, full: bool) -> int:
    table = models.gateway_status
    name = conn.dialect.name
    if name == "postgresql":
        stmt: Any = postgresql.insert(table)
    elif name == "sqlite":
        stmt = sqlite.insert(table)
    else:
        raise DatabaseError(f"unsupported database dialect {name!r}")
    stmt = stmt.values(row)
    updated = {
        column: stmt.excluded[column]
        for column in row
        if column != "gateway"
        and (full or column not in _KEPT_WHEN_UNKNOWN or row[column] is not None)
    }
    stmt = stmt.on_conflict_do_update(
        index_elements=["gateway"],
        set_=updated,
        where=table.c.started_at <= stmt.excluded.started_at,  # an earlier run never wins
    )
    # RETURNING says whether the row was written (rowcount is -1 on psycopg for an upsert).
    return len(conn.execute(stmt.returning(table.c.gateway)).all())


# -- reading --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayRow:
    gateway: str
    state: str
    uplink: str | None
    edge: str | None
    buffer: dict[str, int | None]
    oldest_pending_age_s: float | None
    ingress_rate: float | None
    egress_rate: float | None
    rate_interval_s: float | None
    status_at: datetime | None
    started_at: datetime
    pid: int
    version: str
    received_at: datetime
    # rejects held and dropped by the caps (protocol/gateway_status.py), from the last status
    # message; None when it carried none (a last will, an older gateway)
    quarantine: dict[str, Any] | None = None

    def to_mapping(self, now: datetime | None = None) -> dict[str, Any]:
        moment = now or datetime.now(UTC)
        return {
            "gateway": self.gateway,
            "state": self.state,
            "uplink": self.uplink,
            "edge": self.edge,
            "buffer": dict(self.buffer),
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "rates": {
                "ingress": self.ingress_rate,
                "egress": self.egress_rate,
                "interval_s": self.rate_interval_s,
            },
            "status_at": _iso(self.status_at),
            "started_at": _iso(self.started_at),
            "pid": self.pid,
            "version": self.version,
            "received_at": _iso(self.received_at),
            "quarantine": None if self.quarantine is None else dict(self.quarantine),
            "age_s": round((moment - self.received_at).total_seconds(), 1),
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_gateways(engine: Engine) -> list[GatewayRow]:
    """Every gateway's latest status, by gateway id."""
    check_schema(engine)
    c = models.gateway_status.c
    with translate_errors("reading gateway status"), engine.connect() as conn:
        rows = conn.execute(select(models.gateway_status).order_by(c.gateway)).all()
    return [
        GatewayRow(
            gateway=r.gateway,
            state=r.state,
            uplink=r.uplink,
            edge=r.edge,
            buffer={
                "pending": r.pending,
                "inflight": r.inflight,
                "delivered": r.delivered,
                "quarantined": r.quarantined,
            },
            oldest_pending_age_s=r.oldest_pending_age_s,
            ingress_rate=r.ingress_rate,
            egress_rate=r.egress_rate,
            rate_interval_s=r.rate_interval_s,
            status_at=r.status_at,
            started_at=r.started_at,
            pid=r.pid,
            version=r.version,
            received_at=r.received_at,
            quarantine=_quarantine(r.status),
        )
        for r in rows
    ]


def _quarantine(status: str) -> dict[str, Any] | None:
    """The quarantine figures of a stored status message (stored only once it parsed)."""
    try:
        quarantine = GatewayStatus.parse(status.encode("utf-8")).quarantine
    except ProtocolError:  # pragma: no cover - only parsed messages are stored
        return None
    return None if quarantine is None else asdict(quarantine)


def render_gateways(rows: Sequence[GatewayRow], console: Console) -> None:
    if not rows:
        console.print("no gateway has reported a status yet")
        return
    now = datetime.now(UTC)
    table = Table(title="Gateways (latest status of each)")
    for name, justify in (
        ("gateway", "left"),
        ("state", "left"),
        ("uplink", "left"),
        ("edge", "left"),
        ("pending", "right"),
        ("inflight", "right"),
        ("delivered", "right"),
        ("quarantined", "right"),
        ("rejects dropped", "right"),
        ("oldest pending", "right"),
        ("in / out per s", "right"),
        ("reported", "right"),
        ("pid", "right"),
        ("version", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        state = f"[green]{row.state}[/]" if row.state == "online" else f"[red]{row.state}[/]"
        table.add_row(
            row.gateway,
            state,
            _link(row.uplink),
            _link(row.edge),
            *(_count(row.buffer[k]) for k in ("pending", "inflight", "delivered", "quarantined")),
            _dropped(row.quarantine),
            "-" if row.oldest_pending_age_s is None else f"{row.oldest_pending_age_s:.1f}s",
            "-"
            if row.ingress_rate is None
            else f"{row.ingress_rate:,.1f} / {row.egress_rate or 0:,.1f}",
            f"{(now - row.received_at).total_seconds():.0f}s ago",
            str(row.pid),
            row.version,
        )
    console.print(table)


def _dropped(quarantine: dict[str, Any] | None) -> str:
    """Rejects the caps dropped, and which cap is reached (a device sending floods of them)."""
    if quarantine is None:
        return "-"
    at_cap = []
    if quarantine["devices_at_cap"]:
        at_cap.append(f"{quarantine['devices_at_cap']:,} device(s) at cap")
    if quarantine["total_at_cap"]:
        at_cap.append("total at cap")
    text = f"{quarantine['dropped']:,}"
    return f"[red]{text}[/] ({', '.join(at_cap)})" if at_cap else text


def _link(value: str | None) -> str:
    if value is None:
        return "-"
    return f"[green]{value}[/]" if value == "up" else f"[red]{value}[/]"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
