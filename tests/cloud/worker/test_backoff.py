"""The worker's reconnect and retry backoff: capped, exponential, jittered."""

from __future__ import annotations

import random

from cloud.worker.session import Backoff


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(0.2, 5.0, random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    ceilings = [min(5.0, 0.2 * 2**i) for i in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 5.0
    assert len({round(d, 6) for d in delays[-5:]}) == 5  # jittered, not one fixed value


def test_backoff_reset_starts_again_from_the_shortest_delay() -> None:
    backoff = Backoff(0.2, 5.0, random.Random(2))
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 0.2
