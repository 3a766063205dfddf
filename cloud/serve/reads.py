"""The results service's other reads, each cached for one results version (trend, alerts) or
one poll interval (gateway health, which changes without a commit), so that any number of
clients costs one database read per change. Each returns JSON bytes."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from cloud.engine.outputs import load_alerts
from cloud.results.trend import load_trend
from cloud.worker.status import load_gateways

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

CACHED = 256  # entries kept (LRU): units x kinds of read
ALERTS_SHOWN = 100


class Reads:
    """Cached reads over ``engine``; thread-safe (requests run them in worker threads)."""

    def __init__(self, engine: Engine, election: str | None, ttl_s: float) -> None:
        self._engine = engine
        self._election = election
        self._ttl_s = ttl_s
        self._cache: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._gateways: tuple[float, bytes] | None = None
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, str, int], read: Callable[[], bytes]) -> bytes:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        body = read()
        with self._lock:
            self._cache[key] = body
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
        return body

    def trend(self, unit: str, version: int) -> bytes:
        """Ballots and votes per time window of ``unit`` (``cloud results --windows --json``)."""
        return self._cached(
            ("trend", unit, version),
            lambda: orjson.dumps(load_trend(self._engine, self._election, unit).to_mapping()),
        )

    def alerts(self, version: int) -> bytes:
        """The newest alerts the rules raised (``cloud alerts --json``)."""
        return self._cached(
            ("alerts", "", version),
            lambda: orjson.dumps(load_alerts(self._engine, limit=ALERTS_SHOWN)),
        )

    def gateways(self) -> bytes:
        """Every gateway's latest health status (``cloud gateways --json``), at most ``ttl_s`` old."""
        now = time.monotonic()
        with self._lock:
            if self._gateways is not None and now - self._gateways[0] < self._ttl_s:
                return self._gateways[1]
        body = orjson.dumps([row.to_mapping() for row in load_gateways(self._engine)])
        with self._lock:
            self._gateways = (now, body)
        return body
