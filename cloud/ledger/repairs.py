"""Repair requests: ask a device to resend the seqs missing from its chain (protocol/repair.py).

The ledger reports, after each commit, the missing ranges of every device whose chain had or
has a gap (cloud/ledger/store.py ``write_gaps``). :class:`RepairScheduler` keeps the latest
ranges per device and coalesces: a gap is first requested once it has stayed open ``grace_s``
(out-of-order arrival often fills it by itself), then again every interval while it stays open,
the interval doubling per request up to ``max_interval_s`` (a dead device is not asked forever
at full rate). At most one request per device per interval, always naming the latest ranges.
Memory is bounded by the number of devices with an open gap. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cloud.ledger.chain import DeviceKey
from protocol import RepairRequest
from protocol.repair import SeqRange


@dataclass(slots=True)
class _Open:
    ranges: tuple[SeqRange, ...]
    seen_at: float
    sent_at: float | None = None
    interval: float = 0.0


class RepairScheduler:
    def __init__(self, interval_s: float = 2.0, grace_s: float = 0.5, max_interval_s: float = 30.0) -> None:
        self._interval = interval_s
        self._grace = grace_s
        self._max_interval = max(max_interval_s, interval_s)
        self._open: dict[DeviceKey, _Open] = {}

    @property
    def open_devices(self) -> int:
        return len(self._open)

    def observe(self, gaps: Iterable[tuple[DeviceKey, tuple[SeqRange, ...]]], now: float) -> None:
        """The latest missing ranges of devices a commit touched (empty: the gap closed)."""
        for key, ranges in gaps:
            if not ranges:
                self._open.pop(key, None)
                continue
            entry = self._open.get(key)
            if entry is None:
                self._open[key] = _Open(ranges, now, interval=self._interval)
            else:
                entry.ranges = ranges

    def due(self, now: float) -> list[RepairRequest]:
        """The requests to publish now (each device's latest ranges); marks them sent."""
        requests = []
        for (election, device), entry in sorted(self._open.items()):
            if now - entry.seen_at < self._grace:
                continue
            if entry.sent_at is not None:
                if now - entry.sent_at < entry.interval:
                    continue
                entry.interval = min(entry.interval * 2, self._max_interval)
            entry.sent_at = now
            requests.append(RepairRequest(election, device, entry.ranges))
        return requests
