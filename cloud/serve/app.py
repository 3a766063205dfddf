"""The results service (``edgetally cloud serve``): read-only HTTP over the cloud database.

Routes (JSON unless said)::

    GET /api/results              the root unit's figures (``cloud results --json``)
    GET /api/units/{unit}         any reporting unit's figures; 404 naming the unit if unknown
    GET /api/version              {"election", "version", "at"}: the results version
    GET /api/election             the election: contests, choices and units with their names
    GET /api/trend/{unit}         ballots and votes per time window (``cloud results --windows``)
    GET /api/alerts               the newest alerts the rules raised (``cloud alerts``)
    GET /api/gateways             every gateway's health (``cloud gateways``), <= 1 poll old
    GET /api/audit                the last ``cloud audit`` verdict (``--keys``), rerun <= every 2 s
    GET /                         the live results page (cloud/serve/static/)
    GET /feed/...                 the `cloud publish` feed (``--feed DIR``), as static files
    GET /events                   Server-Sent Events: ``event: change`` with ``id:`` the results
                                  version and data {"version", "at", "units": {unit: figures}}
                                  for the units that changed, within one poll of a commit
    GET /metrics                  Prometheus text

Every unit response carries a strong ``ETag`` (a digest of its bytes) and ``Last-Modified``
(when this server read that version); ``If-None-Match`` with the current tag gets 304. All of
it is answered from the one :class:`~cloud.serve.snapshot.Poller` of the server: one database
poll every ``poll_s`` (a thread, so the event loop never waits on the database), fanned out to
every subscriber. Before the first successful read the unit routes answer 503.

Subscribers: each a bounded queue of :data:`QUEUE_EVENTS` events; a subscriber whose queue is
full (a client that stopped reading) is dropped, and reconnects (``retry:``) to the current
state, since a change carries the new figures, not a delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cloud._exceptions import CloudError
from cloud.serve.reads import Reads
from cloud.serve.snapshot import Poller, Snapshot, etag_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from protocol import Registry

log = logging.getLogger(__name__)

QUEUE_EVENTS = 16
KEEPALIVE_S = 15.0
STATIC = Path(__file__).with_name("static")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    election: str | None = None
    poll_s: float = 0.25
    retry_ms: int = 2000  # what SSE clients wait before reconnecting
    feed: Path | None = None  # a `cloud publish` directory, served under /feed/
    audit_every_s: float = 2.0  # the audit (with a registry) runs again at most this often


class Hub:
    """The SSE subscribers of one server."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[bytes | None]] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._queues)

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_EVENTS)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._queues.discard(queue)

    def publish(self, event: bytes | None) -> None:
        """To every subscriber; None ends every stream (the server stops)."""
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                self.dropped += 1
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)  # its stream ends; the client reconnects to the current state


class _Stats:
    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.latency_s = 0.0
        self.not_modified = 0
        self.poll_errors = 0

    def observe(self, route: str, started: float) -> None:
        self.requests[route] = self.requests.get(route, 0) + 1
        self.latency_s += time.perf_counter() - started


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def create_app(
    engine: Engine, config: ServeConfig, *, on_ready: Callable[[], None] | None = None, registry: Registry | None = None
) -> Starlette:
    """The app; ``on_ready`` is called once the first poll was tried (started, not serving yet:
    the caller has bound the socket, so requests queue until it is). ``app.state.end_streams()``
    ends every SSE stream, from any thread (the server calls it when told to stop)."""
    poller = Poller(engine, config.election)
    reads = Reads(engine, config.election, ttl_s=config.poll_s, registry=registry, audit_every_s=config.audit_every_s)
    hub = Hub()
    stats = _Stats()

    failing: list[str] = []  # the error the last poll met, logged once until it changes or clears

    async def poll_once() -> None:
        try:
            change = await asyncio.to_thread(poller.poll)
        except CloudError as exc:  # keep serving the last figures
            stats.poll_errors += 1
            if failing != [str(exc)]:
                log.warning("results service: cannot read the database: %s", exc)
                failing[:] = [str(exc)]
            return
        if failing:
            log.info("results service: the database reads again")
            failing.clear()
        if change is not None and change.changed:
            hub.publish(b"id: %d\nevent: change\ndata: %s\n\n" % (change.snapshot.version, change.event()))

    async def poll_forever() -> None:
        while True:
            await asyncio.sleep(config.poll_s)
            await poll_once()

    loops: list[asyncio.AbstractEventLoop] = []

    def end_streams() -> None:
        """End every SSE stream (thread-safe: a signal handler calls it as the server stops)."""
        for loop in loops:
            loop.call_soon_threadsafe(hub.publish, None)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        loops.append(asyncio.get_running_loop())
        await poll_once()
        if on_ready is not None:
            on_ready()
        task = asyncio.create_task(poll_forever(), name="results-poller")
        try:
            yield
        finally:
            hub.publish(None)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot() -> Snapshot | None:
        return poller.current

    def unit_response(request: Request, unit: str, route: str) -> Response:
        started = time.perf_counter()
        try:
            current = snapshot()
            if current is None:
                return _json({"error": "the results service has not read the database yet"}, 503)
            if unit not in current.units:
                return _json({"error": f"election {current.election!r} has no reporting unit {unit!r}"}, 404)
            headers = {
                "ETag": current.etag(unit),
                "Last-Modified": format_datetime(current.at, usegmt=True),
                "Cache-Control": "no-cache",
                "X-Results-Version": str(current.version),
            }
            if request.headers.get("if-none-match") == current.etag(unit):
                stats.not_modified += 1
                return Response(status_code=304, headers=headers)
            return Response(current.units[unit], media_type="application/json", headers=headers)
        finally:
            stats.observe(route, started)

    def not_ready() -> Response:
        return _json({"error": "the results service has not read the database yet"}, 503)

    def cached(request: Request, body: bytes, route: str, started: float, current: Snapshot) -> Response:
        tag = etag_of(body)
        headers = {"ETag": tag, "Cache-Control": "no-cache", "X-Results-Version": str(current.version)}
        stats.observe(route, started)
        if request.headers.get("if-none-match") == tag:
            stats.not_modified += 1
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    async def election(request: Request) -> Response:
        started, current = time.perf_counter(), snapshot()
        if current is None:
            return not_ready()
        return cached(request, current.definition, "/api/election", started, current)

    async def trend(request: Request) -> Response:
        started, current = time.perf_counter(), snapshot()
        if current is None:
            return not_ready()
        unit_id = str(request.path_params.get("unit") or current.root)
        if unit_id not in current.units:
            return _json({"error": f"election {current.election!r} has no reporting unit {unit_id!r}"}, 404)
        body = await asyncio.to_thread(reads.trend, unit_id, current.version)
        return cached(request, body, "/api/trend", started, current)

    async def alerts(request: Request) -> Response:
        started, current = time.perf_counter(), snapshot()
        if current is None:
            return not_ready()
        body = await asyncio.to_thread(reads.alerts, current.version)
        return cached(request, body, "/api/alerts", started, current)

    async def gateways(request: Request) -> Response:
        started, current = time.perf_counter(), snapshot()
        if current is None:
            return not_ready()
        body = await asyncio.to_thread(reads.gateways)
        return cached(request, body, "/api/gateways", started, current)

    async def audit(request: Request) -> Response:
        started, current = time.perf_counter(), snapshot()
        if current is None:
            return not_ready()
        try:
            body = await asyncio.to_thread(reads.audit, current.version)
        except CloudError as exc:
            return _json({"error": f"the audit failed: {exc}"}, 503)
        if body is None:
            return _json({"error": "no audit: start `cloud serve` with --keys DIR (the election's registry)"}, 404)
        return cached(request, body, "/api/audit", started, current)

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def results(request: Request) -> Response:
        current = snapshot()
        return unit_response(request, current.root if current is not None else "", "/api/results")

    async def unit(request: Request) -> Response:
        return unit_response(request, str(request.path_params["unit"]), "/api/units")

    async def version(_request: Request) -> Response:
        current = snapshot()
        if current is None:
            return _json({"error": "the results service has not read the database yet"}, 503)
        return _json({"election": current.election, "version": current.version, "at": format_datetime(current.at, usegmt=True)})

    async def events(request: Request) -> Response:
        queue = hub.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                current = snapshot()
                yield b"retry: %d\n" % config.retry_ms
                if current is not None:
                    yield b"id: %d\nevent: version\ndata: %s\n\n" % (current.version, orjson.dumps({"version": current.version}))
                while True:
                    try:
                        frame = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if frame is None:
                        return
                    yield frame
            finally:
                hub.unsubscribe(queue)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def metrics(_request: Request) -> Response:
        current = snapshot()
        root = orjson.loads(current.units[current.root]) if current is not None else {}
        lines = [
            "# TYPE edgetally_results_version gauge",
            f"edgetally_results_version {current.version if current is not None else 0}",
            "# TYPE edgetally_batches_committed gauge",
            f"edgetally_batches_committed {root.get('batches', 0)}",
            "# TYPE edgetally_duplicates gauge",
            f"edgetally_duplicates {root.get('duplicates', 0)}",
            "# TYPE edgetally_rejections gauge",
            f"edgetally_rejections {root.get('rejections', 0)}",
            "# TYPE edgetally_sse_clients gauge",
            f"edgetally_sse_clients {len(hub)}",
            "# TYPE edgetally_sse_dropped_total counter",
            f"edgetally_sse_dropped_total {hub.dropped}",
            "# TYPE edgetally_results_polls_total counter",
            f"edgetally_results_polls_total {poller.polls}",
            "# TYPE edgetally_results_reads_total counter",
            f"edgetally_results_reads_total {poller.reads}",
            "# TYPE edgetally_results_poll_errors_total counter",
            f"edgetally_results_poll_errors_total {stats.poll_errors}",
            "# TYPE edgetally_http_not_modified_total counter",
            f"edgetally_http_not_modified_total {stats.not_modified}",
            "# TYPE edgetally_http_requests_total counter",
            *(f'edgetally_http_requests_total{{route="{r}"}} {n}' for r, n in sorted(stats.requests.items())),
            "# TYPE edgetally_http_request_seconds summary",
            f"edgetally_http_request_seconds_sum {stats.latency_s:.6f}",
            f"edgetally_http_request_seconds_count {sum(stats.requests.values())}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    routes = [
        Route("/", page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/election", election),
        Route("/api/trend", trend),
        Route("/api/trend/{unit}", trend),
        Route("/api/alerts", alerts),
        Route("/api/gateways", gateways),
        Route("/api/audit", audit),
        Route("/api/results", results),
        Route("/api/units/{unit}", unit),
        Route("/api/version", version),
        Route("/events", events),
        Route("/metrics", metrics),
    ]
    if config.feed is not None:
        routes.append(Mount("/feed", StaticFiles(directory=config.feed, check_dir=False), name="feed"))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.end_streams = end_streams
    return app
