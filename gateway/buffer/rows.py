"""The rows the buffer takes in and hands out: plain frozen values, no I/O.

:class:`NewMessage` is what ingress stores (verified: pending; rejected: quarantined with its
reason), :class:`OutboundMessage` what the uplink is handed to forward, :class:`Usage` what the
quota reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.buffer.schema import State


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
class PutResult:
    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What the buffer holds. live = pending + in flight + quarantined (the quota counts these)."""

    live_batches: int
    live_bytes: int
    delivered_batches: int
    delivered_bytes: int


