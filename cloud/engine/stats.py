"""What the rules engine counts and returns: :class:`EngineStats` (since the worker started),
:class:`EngineResult` (what one committed group did, for the worker's receipts, counts and
publishing) and :class:`RateWindows` (the in-memory per-device windows behind the engine's
``device_rate(n)``; see :mod:`cloud.engine.engine`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cloud.engine.actions import Outgoing
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import GroupResult


@dataclass(slots=True)
class EngineStats:
    """Counts since the worker started (messages of committed groups only)."""

    messages: int = 0
    unmatched: int = 0  # selected by no rule: counted, logged at DEBUG, not stored
    ledgered: int = 0
    alerts: int = 0
    stored: int = 0
    republished: int = 0
    failed_actions: int = 0  # failures that went to an error action or a dead letter
    dead_letters: int = 0
    lost: int = 0  # failures that not even the dead-letter table took (logged at ERROR)

    def summary(self) -> str:
        return (
            f"{self.messages} messages, {self.unmatched} matched no rule, {self.ledgered} to the"
            f" ledger, {self.alerts} alerts, {self.stored} stored rows, {self.republished}"
            f" republished, {self.failed_actions} failed actions, {self.dead_letters} dead letters"
        )


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What a committed group did; what the worker needs for receipts, counts and publishing."""

    ledger: GroupResult | None
    outgoing: tuple[Outgoing, ...] = ()

    @property
    def receipts(self) -> tuple[Any, ...]:
        return self.ledger.receipts if self.ledger is not None else ()

    @property
    def gaps(self) -> tuple[Any, ...]:
        return self.ledger.gaps if self.ledger is not None else ()

    def count(self, verdict: Verdict) -> int:
        return self.ledger.count(verdict) if self.ledger is not None else 0


class RateWindows:
    """Per device, how many messages arrived in each second, for the last ``window_s``
    seconds. A group's messages are added only once it committed."""

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self._seconds: dict[str, deque[list[int]]] = {}

    def count(self, device: str, second: int, seconds: int) -> int:
        """Messages of ``device`` in the ``seconds`` seconds up to ``second`` (committed ones)."""
        buckets = self._seconds.get(device)
        if not buckets:
            return 0
        floor = second - seconds
        total = 0
        for at, n in reversed(buckets):
            if at <= floor:
                break
            total += n
        return total

    def add(self, device: str, seconds: Iterable[int]) -> None:
        buckets = self._seconds.setdefault(device, deque())
        for second in seconds:
            if buckets and buckets[-1][0] >= second:  # same second (or the clock stepped back)
                buckets[-1][1] += 1
            else:
                buckets.append([second, 1])
        if buckets:
            oldest = buckets[-1][0] - self.window_s
            while buckets and buckets[0][0] <= oldest:
                buckets.popleft()
