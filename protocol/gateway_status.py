"""The gateway status message: what a gateway says about itself, retained on both brokers.

Published on ``edgetally/v1/_gateway/{gateway}/status`` (QoS 1, retained) every few seconds,
and set as the last will of both of the gateway's MQTT connections (``state`` offline, with
what is known when the connection is made). JSON with sorted keys, exactly these fields::

    {"at": "2026-11-03T20:00:05Z",          when the gateway wrote it; null in a last will
     "buffer": {"delivered": 0, "inflight": 12, "pending": 340, "quarantined": 1},   or null
     "edge": "up",                           edge link "up" / "down", null if unknown
     "gateway": "gw1",
     "oldest_pending_age_s": 4.2,            age of the oldest undelivered batch; null if none
     "pid": 4242,
     "quarantine": {"bytes": 2048, "devices_at_cap": 0, "dropped": 0, "rows": 1,
                    "total_at_cap": false},   rejects held and dropped (caps), or null
     "rates": {"egress": 950.0, "ingress": 1010.4, "interval_s": 5.0},   batches/s, or null
     "started_at": "2026-11-03T19:58:00Z",
     "state": "online",                      "online" or "offline"
     "uplink": "down",                       cloud link "up" / "down", null if unknown
     "v": 1,
     "version": "0.1.0"}

``quarantine`` is newer than the other fields: a status without it (an older gateway) parses
with ``quarantine`` None; this version always writes it (null where the others are null).

Informational: nothing is counted from it, so it is not signed; :meth:`GatewayStatus.parse`
still refuses anything malformed with a :class:`ProtocolError` subclass naming the problem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from protocol import canonical
from protocol._errors import (
    InvalidValue,
    MalformedJSON,
    PayloadTooLarge,
    WrongType,
    require_exact_fields,
    shown,
)
from protocol.election import ID_PATTERN

VERSION = 1
MAX_STATUS_BYTES = 4096
ONLINE = "online"
OFFLINE = "offline"
UP = "up"
DOWN = "down"
STATES = (ONLINE, OFFLINE)
LINK_STATES = (UP, DOWN)
BUFFER_STATES = ("pending", "inflight", "delivered", "quarantined")
RATE_FIELDS = ("ingress", "egress", "interval_s")
QUARANTINE_COUNTS = ("rows", "bytes", "dropped", "devices_at_cap")
QUARANTINE_FIELDS = frozenset({*QUARANTINE_COUNTS, "total_at_cap"})
OPTIONAL_FIELDS = frozenset({"quarantine"})  # absent in the status of an older gateway
FIELDS = frozenset(
    {
        "v",
        "gateway",
        "state",
        "at",
        "started_at",
        "pid",
        "version",
        "uplink",
        "edge",
        "buffer",
        "oldest_pending_age_s",
        "rates",
        "quarantine",
    }
)
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_VERSION = re.compile(r"[0-9A-Za-z.+_-]{1,32}")


@dataclass(frozen=True, slots=True)
class Rates:
    """Batches per second over the last ``interval_s``: committed to the buffer, confirmed by the cloud."""

    ingress: float
    egress: float
    interval_s: float


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Rejects the gateway holds (rows, payload bytes), those its caps dropped (counted, not
    stored), how many devices are at their per-device cap, whether the total cap is reached."""

    rows: int
    bytes: int
    dropped: int
    devices_at_cap: int
    total_at_cap: bool


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    gateway: str
    state: str
    started_at: str
    pid: int
    version: str
    at: str | None = None
    uplink: str | None = None
    edge: str | None = None
    buffer: dict[str, int] | None = None
    oldest_pending_age_s: float | None = None
    rates: Rates | None = None
    quarantine: Quarantine | None = None
    v: int = VERSION

    def to_mapping(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "gateway": self.gateway,
            "state": self.state,
            "at": self.at,
            "started_at": self.started_at,
            "pid": self.pid,
            "version": self.version,
            "uplink": self.uplink,
            "edge": self.edge,
            "buffer": None if self.buffer is None else dict(self.buffer),
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "rates": None
            if self.rates is None
            else {
                "ingress": self.rates.ingress,
                "egress": self.rates.egress,
                "interval_s": self.rates.interval_s,
            },
            "quarantine": None
            if self.quarantine is None
            else {
                "rows": self.quarantine.rows,
                "bytes": self.quarantine.bytes,
                "dropped": self.quarantine.dropped,
                "devices_at_cap": self.quarantine.devices_at_cap,
                "total_at_cap": self.quarantine.total_at_cap,
            },
        }

    def to_bytes(self) -> bytes:
        return canonical.dumps(self.to_mapping())

    @classmethod
    def parse(cls, payload: bytes, *, max_bytes: int = MAX_STATUS_BYTES) -> GatewayStatus:
        """Parse status bytes; raise a :class:`ProtocolError` subclass naming the problem."""
        if len(payload) > max_bytes:
            raise PayloadTooLarge(f"gateway status is {len(payload)} bytes, limit {max_bytes}")
        data = canonical.loads(payload, what="gateway status")
        if not isinstance(data, dict):
            raise MalformedJSON(f"gateway status must be a JSON object, got {type(data).__name__}")
        data = {**dict.fromkeys(OPTIONAL_FIELDS), **data}  # an older gateway's status lacks them
        require_exact_fields(data, FIELDS, "gateway status")
        if type(data["v"]) is not int or data["v"] != VERSION:
            raise InvalidValue(f"gateway status v must be {VERSION}, got {shown(data['v'])}")
        gateway = _string(data, "gateway")
        if not ID_PATTERN.match(gateway):
            raise InvalidValue(f"gateway status gateway {shown(gateway)} is not a valid id")
        version = _string(data, "version")
        if not _VERSION.fullmatch(version):
            raise InvalidValue(f"gateway status version {shown(version)} is not a version")
        pid = data["pid"]
        if type(pid) is not int:
            raise WrongType(f"gateway status pid must be an integer, got {shown(pid)}")
        if pid < 1:
            raise InvalidValue(f"gateway status pid must be positive, got {pid}")
        return cls(
            gateway=gateway,
            state=_choice(data, "state", STATES, optional=False) or ONLINE,
            started_at=_timestamp(data, "started_at", optional=False) or "",
            pid=pid,
            version=version,
            at=_timestamp(data, "at", optional=True),
            uplink=_choice(data, "uplink", LINK_STATES, optional=True),
            edge=_choice(data, "edge", LINK_STATES, optional=True),
            buffer=_buffer(data["buffer"]),
            oldest_pending_age_s=_number(data["oldest_pending_age_s"], "oldest_pending_age_s"),
            rates=_rates(data["rates"]),
            quarantine=_quarantine(data["quarantine"]),
        )


def _string(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise WrongType(f"gateway status {name} must be a string, got {type(value).__name__}")
    return value


def _choice(
    data: dict[str, Any], name: str, allowed: tuple[str, ...], *, optional: bool
) -> str | None:
    value = data[name]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise WrongType(f"gateway status {name} must be a string, got {shown(value)}")
    if value not in allowed:
        raise InvalidValue(
            f"gateway status {name} must be one of {', '.join(allowed)}, got {shown(value)}"
        )
    return value


def _timestamp(data: dict[str, Any], name: str, *, optional: bool) -> str | None:
    value = data[name]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise WrongType(f"gateway status {name} must be a timestamp string, got {shown(value)}")
    if not _TIMESTAMP.fullmatch(value):
        raise InvalidValue(f"gateway status {name} {shown(value)} is not like 2026-11-03T20:00:00Z")
    return value


def _number(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WrongType(f"gateway status {name} must be a number, got {shown(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidValue(f"gateway status {name} must be a finite number >= 0, got {number}")
    return number


def _buffer(value: object) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WrongType(f"gateway status buffer must be an object or null, got {shown(value)}")
    require_exact_fields(value, frozenset(BUFFER_STATES), "gateway status buffer")
    out: dict[str, int] = {}
    for state in BUFFER_STATES:
        count = value[state]
        if type(count) is not int:
            raise WrongType(f"gateway status buffer.{state} must be an integer, got {shown(count)}")
        if count < 0:
            raise InvalidValue(f"gateway status buffer.{state} must be >= 0, got {count}")
        out[state] = count
    return out


def _rates(value: object) -> Rates | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WrongType(f"gateway status rates must be an object or null, got {shown(value)}")
    require_exact_fields(value, frozenset(RATE_FIELDS), "gateway status rates")
    ingress, egress, interval = (_number(value[name], f"rates.{name}") for name in RATE_FIELDS)
    if ingress is None or egress is None or interval is None:
        raise WrongType("gateway status rates must be numbers, not null")
    return Rates(ingress, egress, interval)


def _quarantine(value: object) -> Quarantine | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WrongType(f"gateway status quarantine must be an object or null, got {shown(value)}")
    require_exact_fields(value, QUARANTINE_FIELDS, "gateway status quarantine")
    counts: list[int] = []
    for name in QUARANTINE_COUNTS:
        count = value[name]
        if type(count) is not int:
            raise WrongType(f"gateway status quarantine.{name} must be an integer, got {shown(count)}")
        if count < 0:
            raise InvalidValue(f"gateway status quarantine.{name} must be >= 0, got {count}")
        counts.append(count)
    reached = value["total_at_cap"]
    if type(reached) is not bool:
        raise WrongType(f"gateway status quarantine.total_at_cap must be true or false, got {shown(reached)}")
    rows, size, dropped, devices = counts
    return Quarantine(rows, size, dropped, devices, reached)
