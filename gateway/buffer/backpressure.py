"""Backpressure: how much the writer may take in, given the buffer's quota and its usage.

``gateway run --max-buffer-batches N --max-buffer-bytes BYTES`` (0 = unlimited) bound the
*outbound* rows of the buffer: pending + in flight. Delivered rows do not count (they are
kept only for the retention window and may be purged early), nor do quarantined ones: they
are bounded by their own caps (``--max-quarantine-*``, gateway/buffer/quarantine.py), so a
flood of rejects from one device can never hold back the valid batches of any device. The writer asks
:meth:`Quota.room` before taking each group and takes at most that many batches and bytes,
counting what it has taken but not yet committed; so outbound rows never exceed either limit
(one exception: a single batch larger than ``--max-buffer-bytes`` is let into an otherwise
empty buffer, or it could never pass).

When the buffer is full the writer stops taking, committing and acknowledging: batches wait
unacknowledged in the gateway's persistent session on the edge broker (which sends at most
``max_inflight_messages`` of them and queues the rest) and on the devices, which keep every
batch until the cloud's receipt covers it. Ingress resumes when the uplink has drained outbound
rows below :data:`RESUME_RATIO` (90 %) of every limit; the gap keeps it from flapping at the
boundary. Both transitions are logged once, with the usage figures.

``Buffer.outbound_usage()`` reads one row that SQLite triggers keep exact, so calling it after every
group commit costs next to nothing; with no limit set it is never called.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway._exceptions import DiskFull
from gateway.buffer.rows import NewMessage, PutResult
from gateway.buffer.store import Buffer
from gateway.links import Backoff

log = logging.getLogger(__name__)

RESUME_RATIO = 0.9  # ingress resumes below 90 % of every limit
HOLD_POLL_S = 0.2  # while full: how often the writer looks at the usage again
DISK_RETRY_INITIAL_S = 0.1  # a full disk: first retry of the commit after this long,
DISK_RETRY_MAX_S = 2.0  # doubling (with jitter) up to this


class LiveUsage(Protocol):
    """What the quota reads of ``gateway.buffer.rows.Usage``."""

    @property
    def live_batches(self) -> int: ...

    @property
    def live_bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Room:
    """What the writer may take now; ``None`` means no limit on that measure."""

    batches: int | None
    bytes: int | None

    @property
    def open(self) -> bool:
        return (self.batches is None or self.batches > 0) and (self.bytes is None or self.bytes > 0)


UNLIMITED = Room(None, None)


class Quota:
    """The writer's admission control. Not thread-safe: only the writer thread uses it."""

    def __init__(
        self, max_batches: int, max_bytes: int, usage: Callable[[], LiveUsage]
    ) -> None:
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._usage = usage
        self.enabled = max_batches > 0 or max_bytes > 0
        self.live_batches = 0
        self.live_bytes = 0
        self.full = False
        self.episodes = 0
        self._full_since = 0.0
        self._needed = 0  # bytes of a batch waiting for room, while full

    def refresh(self) -> None:
        """Read the buffer's usage (after a commit, or while full) and update the full state."""
        if not self.enabled:
            return
        usage = self._usage()
        self.live_batches, self.live_bytes = usage.live_batches, usage.live_bytes
        if not self.full and self._at_limit():
            self._hold()
        elif self.full and self._below_resume():
            self.full = False
            self._needed = 0
            log.warning(
                "buffer below %d%% (outbound %s) after %.1fs full: resuming ingress",
                round(RESUME_RATIO * 100),
                self.describe(),
                time.monotonic() - self._full_since,
            )

    def hold(self, needed_bytes: int = 0) -> None:
        """The next batch (``needed_bytes``) does not fit in the room left: hold until it does
        and usage is below the resume mark."""
        self._needed = needed_bytes
        if not self.full:
            self._hold()

    def _hold(self) -> None:
        self.full = True
        self.episodes += 1
        self._full_since = time.monotonic()
        log.warning(
            "buffer full (outbound %s%s): holding ingress; new batches stay unacknowledged on the"
            " edge broker until the uplink drains below %d%%",
            self.describe(),
            f"; the next batch needs {self._needed:,} bytes" if self._needed else "",
            round(RESUME_RATIO * 100),
        )

    def room(self, reserved_batches: int = 0, reserved_bytes: int = 0) -> Room:
        """How much may be taken, given ``reserved`` batches/bytes taken but not yet committed."""
        if not self.enabled:
            return UNLIMITED
        if self.full:
            return Room(0, 0)
        return Room(
            self.max_batches - self.live_batches - reserved_batches if self.max_batches else None,
            self.max_bytes - self.live_bytes - reserved_bytes if self.max_bytes else None,
        )

    def describe(self) -> str:
        batches = f"{self.live_batches:,}/{self.max_batches:,} batches" if self.max_batches else f"{self.live_batches:,} batches"
        size = f"{self.live_bytes:,}/{self.max_bytes:,} bytes" if self.max_bytes else f"{self.live_bytes:,} bytes"
        return f"{batches}, {size}"

    def _at_limit(self) -> bool:
        return (0 < self.max_batches <= self.live_batches) or (0 < self.max_bytes <= self.live_bytes)

    def _below_resume(self) -> bool:
        return (not self.max_batches or self.live_batches < RESUME_RATIO * self.max_batches) and (
            not self.max_bytes
            or (
                self.live_bytes < RESUME_RATIO * self.max_bytes
                and self.live_bytes + self._needed <= self.max_bytes
            )
        )


class DiskHold:
    """A full disk is backpressure too: ``put`` retries the commit with capped backoff.

    ``Buffer.put_many`` raises :class:`DiskFull` with nothing stored (it has already tried
    dropping delivered rows early to make room). The group stays unacknowledged while the
    writer waits; one log line starts the episode and one ends it, however many retries
    lie between; nothing is raised, so the supervisor never sees a crash loop.
    """

    def __init__(self) -> None:
        self.episodes = 0
        self._since: float | None = None

    @property
    def full(self) -> bool:
        return self._since is not None

    def put(
        self, buffer: Buffer, rows: Sequence[NewMessage], stop: threading.Event
    ) -> PutResult | None:
        """``buffer.put_many(rows)``, retried while the disk is full; None if stopped first."""
        backoff: Backoff | None = None
        while True:
            try:
                result = buffer.put_many(rows)
            except DiskFull as exc:
                if backoff is None:
                    backoff = Backoff(DISK_RETRY_INITIAL_S, DISK_RETRY_MAX_S)
                    if self._since is None:
                        self._since = time.monotonic()
                        self.episodes += 1
                        log.error(
                            "%s; holding ingress: batches stay unacknowledged on the edge broker;"
                            " retrying every %gs at most",
                            exc,
                            DISK_RETRY_MAX_S,
                        )
                if stop.wait(backoff.next()):
                    log.warning(
                        "stopping while the disk is full: %d batches left unacknowledged", len(rows)
                    )
                    return None
                continue
            if self._since is not None:
                log.warning(
                    "buffer writable again after %.1fs of full disk: resuming ingress",
                    time.monotonic() - self._since,
                )
                self._since = None
            return result
