"""The results service's other reads, each cached for one results version (trend, alerts) or
one poll interval (gateway health, which changes without a commit), so that any number of
clients costs one database read per change. Each returns JSON bytes."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from cloud.audit.audit import run_audit
from cloud.engine.outputs import load_alerts
from cloud.results.trend import load_trend
from cloud.worker.status import load_gateways

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from protocol import Registry

CACHED = 256  # entries kept (LRU): units x kinds of read
ALERTS_SHOWN = 100


class Reads:
    """Cached reads over ``engine``; thread-safe (requests run them in worker threads)."""

    def __init__(
        self, engine: Engine, election: str | None, ttl_s: float, *, registry: Registry | None = None, audit_every_s: float = 2.0
    ) -> None:
        self._engine = engine
        self._registry = registry
        self._audit_every_s = audit_every_s
        self._audited: tuple[float, int, bytes] | None = None  # when, at which version, the verdict
        self._audit_lock = threading.Lock()
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

    def audit(self, version: int) -> bytes | None:
        """The last audit's verdict (``cloud audit --json`` plus the version it read and when),
        run again when the version moved and the last one is ``audit_every_s`` old: the audit
        reads every ledger row. None without a registry (``cloud serve --keys``)."""
        if self._registry is None:
            return None
        with self._audit_lock:  # one audit at a time; the others wait for its verdict
            now = time.monotonic()
            last = self._audited
            if last is not None and (last[1] == version or now - last[0] < self._audit_every_s):
                return last[2]
            report = run_audit(self._engine, self._registry, self._election)
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = orjson.dumps({**report.to_mapping(), "version": version, "audited_at": stamp})
            self._audited = (now, version, body)
            return body
