"""The rows the buffer takes in and hands out: plain frozen values, no I/O.

:class:`NewMessage` is what ingress stores (verified: pending; rejected: quarantined with its
reason), :class:`OutboundMessage` what the uplink is handed to forward, :class:`Usage` what the
quota reads; :class:`QuarantineCaps` bounds what rejects may hold, :class:`Dropped` counts the
rejects a cap kept out, :class:`QuarantineUsage` is what the health status reports of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.buffer.schema import State
from gateway.config import (
    DEFAULT_MAX_QUARANTINE_BYTES,
    DEFAULT_MAX_QUARANTINE_BYTES_PER_DEVICE,
    DEFAULT_MAX_QUARANTINE_ROWS,
    DEFAULT_MAX_QUARANTINE_ROWS_PER_DEVICE,
)

# The quarantine counters' device key of a reject whose topic names no device (a bad topic);
# device ids are never empty, so '' is unambiguous. Shown as NO_DEVICE_LABEL.
NO_DEVICE = ""
NO_DEVICE_LABEL = "(no device)"
# Dropped-reject counters keep at most this many (device, reason) keys; past that, new keys
# (a flood on made-up device topics, possible without ACLs) are counted under OTHER_DEVICE.
MAX_DROPPED_KEYS = 10_000
OTHER_DEVICE = "*"
OTHER_DEVICE_LABEL = "(other devices)"


def device_label(key: str) -> str:
    """How a quarantine counter's device key is shown (``(no device)``, ``(other devices)``)."""
    return {NO_DEVICE: NO_DEVICE_LABEL, OTHER_DEVICE: OTHER_DEVICE_LABEL}.get(key, key)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """Something that arrived on the edge broker, verified (pending) or rejected (quarantined)."""

    topic: str
    payload: bytes
    state: State
    received_at: float
    election: str | None = None
    device: str | None = None
    seq: int | None = None
    body_hash: str | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A row handed to the uplink by :meth:`Buffer.fetch_pack`."""

    id: int
    topic: str
    payload: bytes
    device: str | None
    seq: int | None


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    id: int
    topic: str
    payload: bytes
    election: str | None
    device: str | None
    seq: int | None
    reason: str | None
    detail: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class QuarantineCaps:
    """How much rejects may hold in the buffer: per device (0 = no per-device cap) and in
    total (always capped). A reject that would go past any of them is counted, not stored."""

    rows_per_device: int = DEFAULT_MAX_QUARANTINE_ROWS_PER_DEVICE
    bytes_per_device: int = DEFAULT_MAX_QUARANTINE_BYTES_PER_DEVICE
    rows: int = DEFAULT_MAX_QUARANTINE_ROWS
    bytes: int = DEFAULT_MAX_QUARANTINE_BYTES

    def refusal(self, device: tuple[int, int], total: tuple[int, int], size: int) -> str | None:
        """Which cap a reject of ``size`` bytes would pass, given the (rows, bytes) its device
        and the whole quarantine hold; None if it may be stored."""
        if self.rows_per_device and device[0] + 1 > self.rows_per_device:
            return "device_rows"
        if self.bytes_per_device and device[1] + size > self.bytes_per_device:
            return "device_bytes"
        if total[0] + 1 > self.rows:
            return "total_rows"
        if total[1] + size > self.bytes:
            return "total_bytes"
        return None

    def settings(self) -> dict[str, str]:
        """As recorded in the buffer's settings table (read by ``buffer stats``)."""
        return {
            "max_quarantine_rows_per_device": str(self.rows_per_device),
            "max_quarantine_bytes_per_device": str(self.bytes_per_device),
            "max_quarantine_rows": str(self.rows),
            "max_quarantine_bytes": str(self.bytes),
        }


@dataclass(frozen=True, slots=True)
class Dropped:
    """Rejects of one (device, reason) in one write that a cap kept out: counted, not stored."""

    device: str  # the counter key: the topic's device, NO_DEVICE or OTHER_DEVICE
    reason: str
    count: int
    bytes: int
    cap: str  # the first cap it hit: device_rows, device_bytes, total_rows, total_bytes


@dataclass(frozen=True, slots=True)
class PutResult:
    stored: int
    duplicates: int
    dropped: tuple[Dropped, ...] = ()
    not_stored: frozenset[int] = frozenset()  # indexes (in the batch) of the rejects dropped

    @property
    def dropped_count(self) -> int:
        return sum(d.count for d in self.dropped)


@dataclass(frozen=True, slots=True)
class QuarantineUsage:
    """The quarantine at a glance (health status): what it holds, what was dropped, the caps."""

    rows: int
    bytes: int
    dropped: int
    dropped_bytes: int
    devices_at_cap: int  # devices whose rows or bytes have reached their per-device cap
    total_at_cap: bool  # the quarantine's rows or bytes have reached the total cap


@dataclass(frozen=True, slots=True)
class Usage:
    """What the buffer holds. live = pending + in flight + quarantined; delivered apart.

    The quota (backpressure) counts live minus quarantined: :meth:`Buffer.outbound_usage`."""

    live_batches: int
    live_bytes: int
    delivered_batches: int
    delivered_bytes: int


