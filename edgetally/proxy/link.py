"""The fault proxy's link model: what a link does (:class:`Mode`) and how (:class:`LinkState`:
latency, jitter, bandwidth). Pure data, no I/O; :class:`edgetally.proxy.proxy.FaultProxy`
applies a state to its connections."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Mode(enum.Enum):
    PASS = "pass"
    CUT = "cut"
    BLACKHOLE = "blackhole"


def _non_negative(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class LinkState:
    """What the link does. Latency and bandwidth apply only while ``mode`` is ``PASS``."""

    mode: Mode
    latency_ms: float = 0
    jitter_ms: float = 0
    bandwidth_bps: int | None = None  # bytes per second, per direction; None = unlimited

    def __post_init__(self) -> None:
        if not isinstance(self.mode, Mode):
            raise ValueError(f"mode must be a Mode, got {self.mode!r}")
        _non_negative("latency_ms", self.latency_ms)
        _non_negative("jitter_ms", self.jitter_ms)
        bps = self.bandwidth_bps
        if bps is not None and (isinstance(bps, bool) or not isinstance(bps, int) or bps <= 0):
            raise ValueError(f"bandwidth_bps must be a positive integer or None, got {bps!r}")

    def describe(self) -> str:
        parts = [self.mode.value]
        if self.latency_ms or self.jitter_ms:
            parts.append(f"latency {self.latency_ms:g} ms ± {self.jitter_ms:g} ms")
        if self.bandwidth_bps is not None:
            parts.append(f"bandwidth {self.bandwidth_bps} B/s")
        return ", ".join(parts)


PASS = LinkState(Mode.PASS)
