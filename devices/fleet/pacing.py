"""Pacing for the fleet: how often a device may connect, publish, or try again.

:class:`TokenBucket` paces new connections fleet-wide (reconnects go through it too) and, as
:class:`RateLimiter`, publishes; :class:`ConnectSlots` caps the connects in progress at once;
:class:`Backoff` spaces one device's reconnect attempts (capped exponential, full jitter, from
the device's own small :class:`Jitter`) so a broker restart is not met by a thundering herd.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Protocol


class TokenBucket:
    """At most ``rate`` acquisitions per second, after a burst of ``burst`` (rate 0 = no limit).

    Callers reserve the next free slot and sleep until it: waiting is FIFO and needs no task.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._burst = max(1, burst)
        self._next = 0.0

    async def acquire(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        at = max(self._next, now - (self._burst - 1) * self._interval)
        self._next = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)


class ConnectSlots:
    """At most ``limit`` connects in progress at once (0: no cap): ``async with slots: ...``."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"connect concurrency must be 0 (no cap) or more, got {limit}")
        # asyncio's primitives bind to the running loop on first use, not here
        self._semaphore = asyncio.Semaphore(limit) if limit else None

    async def __aenter__(self) -> None:
        if self._semaphore is not None:
            await self._semaphore.acquire()

    async def __aexit__(self, *exc: object) -> None:
        if self._semaphore is not None:
            self._semaphore.release()


class RateLimiter(TokenBucket):
    """Paces publishes fleet-wide: at most ``rate`` per second (0 = no pacing)."""

    def __init__(self, rate: float) -> None:
        super().__init__(rate, 1)


class Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


_MASK = (1 << 64) - 1


class Jitter:
    """A device's own deterministic random numbers for its backoff: SplitMix64 over 64 bits of
    state, seeded from a name. A ``random.Random`` holds 2.5 KiB of Mersenne Twister state,
    measured here as a sixth of a connected device's memory; this holds one int."""

    __slots__ = ("_state",)

    def __init__(self, seed: str) -> None:
        self._state = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big")

    def random(self) -> float:
        """Uniform in [0, 1)."""
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return ((z ^ (z >> 31)) >> 11) / (1 << 53)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()


class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, first * 2**attempt))."""

    __slots__ = ("_attempt", "_rng", "cap", "first")

    def __init__(self, first: float, cap: float, rng: Uniform | random.Random) -> None:
        self.first, self.cap, self._rng = first, cap, rng
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return self._rng.uniform(0, ceiling)
