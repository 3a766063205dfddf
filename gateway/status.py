"""The gateway's health status: built every few seconds, published retained on both brokers.

The format is :class:`protocol.gateway_status.GatewayStatus` (docs/protocol.md section 15):
gateway id, state, uplink and edge link up/down, buffer depth by state, age of the oldest
batch not yet delivered, ingress and egress rates over the last interval (batches/s), the
quarantine (rejects held, rejects dropped past its caps, devices at their cap, total cap
reached), started_at, pid and version.

:class:`StatusReporter` runs in its own supervised thread. Every ``status_interval_s``, or at
once when :meth:`StatusReporter.poke` is called (a link came up or went down), it reads the
buffer (three cheap indexed queries), builds the status and hands the same bytes to both links:
the edge link publishes them retained, QoS 1 (``publish_edge``); the uplink publishes them
on its own thread when it is connected (``publish_cloud``). Nothing is queued when a link is
down: the next status replaces this one, and each link's last will (``state`` offline, see
:func:`offline_payload`) covers a connection that dies.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway._exceptions import StoreError
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from protocol.election import format_timestamp
from protocol.gateway_status import DOWN, OFFLINE, ONLINE, UP, GatewayStatus, Quarantine, Rates

log = logging.getLogger(__name__)

EDGE = "edge"
CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class Identity:
    """What stays the same for the life of the process."""

    pid: int
    started_at: str
    version: str


@functools.cache
def identity() -> Identity:
    """This process's identity; ``started_at`` is fixed at the first call (the gateway's start)."""
    try:
        version = importlib.metadata.version("edgetally")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    return Identity(os.getpid(), format_timestamp(datetime.now(UTC)), version)


def link_payload(gateway_id: str, state: str, link: str) -> bytes:
    """A status that only knows about one link: its last will, its clean goodbye, its hello.

    ``state`` offline says that link is down; online that it is up. Everything else that the
    link cannot know (the other link, the buffer, rates) is null; the cloud keeps the last
    values it had for those.
    """
    me = identity()
    link_state = UP if state == ONLINE else DOWN
    return GatewayStatus(
        gateway=gateway_id,
        state=state,
        started_at=me.started_at,
        pid=me.pid,
        version=me.version,
        at=None if state == OFFLINE else format_timestamp(datetime.now(UTC)),
        uplink=link_state if link == CLOUD else None,
        edge=link_state if link == EDGE else None,
    ).to_bytes()


def offline_payload(gateway_id: str, link: str) -> bytes:
    """The last will of ``link`` (``edge`` or ``cloud``), fixed when the connection is made."""
    return link_payload(gateway_id, OFFLINE, link)


class StatusReporter:
    """Builds the status and hands it to both links. Constructing it does no I/O.

    ``uplink_up`` / ``edge_up`` say whether each link is connected (``None``: not known);
    ``ingress_count`` / ``egress_count`` are monotonic counters of batches committed to the
    buffer and confirmed by the cloud broker, from which the rates are taken.
    """

    def __init__(
        self,
        gateway_id: str,
        buffer: Buffer,
        *,
        interval_s: float,
        uplink_up: Callable[[], bool],
        edge_up: Callable[[], bool | None],
        ingress_count: Callable[[], int],
        egress_count: Callable[[], int],
        publish_edge: Callable[[bytes], None],
        publish_cloud: Callable[[bytes], None],
    ) -> None:
        self._gateway_id = gateway_id
        self._buffer = buffer
        self._interval_s = interval_s
        self._uplink_up = uplink_up
        self._edge_up = edge_up
        self._ingress_count = ingress_count
        self._egress_count = egress_count
        self._publish_edge = publish_edge
        self._publish_cloud = publish_cloud
        self._poked = threading.Event()
        self._last: tuple[float, int, int] | None = None  # (monotonic time, ingress, egress)
        self.published = 0

    def poke(self) -> None:
        """Publish a fresh status now (a link changed state). Safe from any thread."""
        self._poked.set()

    def run(self, stop: threading.Event) -> None:
        """Publish every interval (and when poked) until ``stop`` is set."""
        while not stop.is_set():
            self._poked.clear()
            try:
                self.publish_once()
            except StoreError as exc:  # informational: skip this one, the buffer's owner reports it
                log.warning("gateway status not published: %s", exc)
            deadline = time.monotonic() + self._interval_s
            while not stop.is_set() and not self._poked.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._poked.wait(min(remaining, 0.2))  # bounded so that stop is seen

    def publish_once(self) -> GatewayStatus:
        status = self.build()
        payload = status.to_bytes()
        if status.edge != DOWN:  # a link that is down gets the next one (its will speaks now)
            self._publish_edge(payload)
        if status.uplink == UP:
            self._publish_cloud(payload)
        self.published += 1
        log.debug(
            "status uplink=%s edge=%s pending=%s",
            status.uplink,
            status.edge,
            status.buffer and status.buffer["pending"],
        )
        return status

    def build(self) -> GatewayStatus:
        """The current status (reads the buffer; advances the rate window)."""
        now_wall = time.time()
        counts = self._buffer.counts()
        oldest = self._buffer.oldest_outbound_at()
        held = self._buffer.quarantine_usage()
        me = identity()
        edge = self._edge_up()
        return GatewayStatus(
            gateway=self._gateway_id,
            state=ONLINE,
            started_at=me.started_at,
            pid=me.pid,
            version=me.version,
            at=format_timestamp(datetime.fromtimestamp(now_wall, UTC)),
            uplink=UP if self._uplink_up() else DOWN,
            edge=None if edge is None else (UP if edge else DOWN),
            buffer={state.value: counts[state] for state in State},
            oldest_pending_age_s=None if oldest is None else round(max(0.0, now_wall - oldest), 3),
            rates=self._rates(),
            quarantine=Quarantine(
                rows=held.rows,
                bytes=held.bytes,
                dropped=held.dropped,
                devices_at_cap=held.devices_at_cap,
                total_at_cap=held.total_at_cap,
            ),
        )

    def _rates(self) -> Rates | None:
        now = time.monotonic()
        ingress, egress = self._ingress_count(), self._egress_count()
        last, self._last = self._last, (now, ingress, egress)
        if last is None or now <= last[0]:
            return None
        elapsed = now - last[0]
        return Rates(
            ingress=round((ingress - last[1]) / elapsed, 1),
            egress=round((egress - last[2]) / elapsed, 1),
            interval_s=round(elapsed, 3),
        )
