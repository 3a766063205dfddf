"""What a fleet run counts: :class:`FleetStats` while it runs, :class:`FleetSummary` at the end.

The fleet's loop updates :class:`FleetStats` (connections, publishes, resends, outages, RSS,
progress samples for the steady rate); :class:`FleetSummary` is the immutable result of a run,
as the CLI prints it and the shards' parent merges it. :func:`rss_kib` reads this process's RSS.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FleetStats:
    devices: int = 0
    batches: int = 0
    publishes: int = 0
    resends: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    connect_failure_causes: dict[str, int] = field(default_factory=dict)  # ConnectionFailed.cause
    connections_lost: int = 0
    connected: int = 0
    max_connected: int = 0
    all_connected_s: float | None = None  # from start until every device first connected
    full_reconnect_s: float | None = None  # last outage: first loss -> every device back
    rss_prepared_kib: int = 0
    rss_connected_kib: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    down: int = 0  # devices that lost their connection and are not back yet
    outage_started: float | None = None
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, publishes)
    exited: int = 0  # device runners that have ended (done, or gave up at the timeout)
    behaviours: dict[str, int] = field(default_factory=dict)  # misbehaviours injected, by name
    # receipts and repair requests ignored (not the cloud's, or not for the device), by
    # (word, reason): devices/fleet/words.py
    ignored: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def steady_rate(self, low: float = 0.1, high: float = 0.9) -> float | None:
        """Publishes acked per second between ``low`` and ``high`` of all batches published."""
        if not self.batches or len(self.samples) < 2:
            return None
        lo = next((s for s in self.samples if s[1] >= low * self.batches), None)
        hi = next((s for s in self.samples if s[1] >= high * self.batches), None)
        if lo is None or hi is None or hi[0] <= lo[0]:
            return None
        return (hi[1] - lo[1]) / (hi[0] - lo[0])


@dataclass(frozen=True)
class FleetSummary:
    devices: int
    batches: int
    acked: int
    receipted: int
    confirmed_devices: int
    unconfirmed_devices: tuple[str, ...]
    publishes: int
    resends: int
    reconnects: int
    elapsed_s: float
    confirm: bool
    connected: int = 0
    max_connected: int = 0
    connect_failures: int = 0
    connect_failure_causes: Mapping[str, int] = field(default_factory=dict)  # ConnectionFailed.cause
    connections_lost: int = 0
    all_connected_s: float | None = None
    full_reconnect_s: float | None = None
    rss_prepared_kib: int = 0
    rss_connected_kib: int = 0
    steady_acked_per_s: float | None = None
    sent: int = 0  # distinct batches written to the broker at least once
    pending: int = 0  # sent and not receipted (still in device spools)
    behaviours: Mapping[str, int] = field(default_factory=dict)  # misbehaviours injected
    # receipts and repair requests ignored: {"receipt": {"bad_signature": 3}, "repair": {...}}
    ignored: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        if self.confirm:
            return not self.unconfirmed_devices
        return self.acked == self.batches

    @property
    def connection_kib_per_device(self) -> float | None:
        if not self.rss_connected_kib or not self.max_connected:
            return None
        return (self.rss_connected_kib - self.rss_prepared_kib) / self.max_connected

    def connect_failures_text(self) -> str:
        """``12 (timeout 9, ECONNREFUSED 3)``: failed connects and what they failed on."""
        causes = sorted(self.connect_failure_causes.items(), key=lambda item: -item[1])
        shown = ", ".join(f"{cause} {n}" for cause, n in causes)
        return f"{self.connect_failures} ({shown})" if self.connect_failures and causes else str(self.connect_failures)

    def to_mapping(self) -> dict[str, object]:
        per_device = self.connection_kib_per_device
        return {
            "ok": self.ok,
            "devices": self.devices,
            "batches": self.batches,
            "acked": self.acked,
            "receipted": self.receipted,
            "confirmed_devices": self.confirmed_devices,
            "unconfirmed_devices": list(self.unconfirmed_devices),
            "publishes": self.publishes,
            "resends": self.resends,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "connect_failure_causes": dict(sorted(self.connect_failure_causes.items())),
            "connections_lost": self.connections_lost,
            "connected": self.connected,
            "max_connected": self.max_connected,
            "all_connected_s": _round(self.all_connected_s),
            "full_reconnect_s": _round(self.full_reconnect_s),
            "rss_prepared_kib": self.rss_prepared_kib,
            "rss_connected_kib": self.rss_connected_kib,
            "connection_kib_per_device": round(per_device, 2) if per_device is not None else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "acked_per_s": round(self.acked / self.elapsed_s, 1) if self.elapsed_s else None,
            "steady_acked_per_s": _round(self.steady_acked_per_s, 1),
            "sent": self.sent,
            "pending": self.pending,
            "behaviours": dict(sorted(self.behaviours.items())),
            "ignored": {word: dict(sorted(r.items())) for word, r in sorted(self.ignored.items())},
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


def rss_kib() -> int:
    """This process's resident memory (VmRSS), KiB; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
