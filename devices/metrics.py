"""`devices run --metrics-port P`: the fleet's figures in Prometheus text format on GET /metrics.

:func:`exposition` renders a :class:`~devices.snapshot.FleetSnapshot` in the text exposition
format 0.0.4 (counters end in ``_total``; no client library needed for a dozen series).
:class:`MetricsServer` is a tiny asyncio HTTP/1.0-style server on 127.0.0.1 running in its own
thread and loop, so a busy fleet loop never delays a scrape and the server can keep serving
the final figures after the fleet's loop has ended (``--metrics-linger``). It reads only the
monitor's latest snapshot (immutable, published by one assignment): no lock is needed.

Bounds: a request head larger than ``MAX_REQUEST_BYTES`` or slower than ``REQUEST_TIMEOUT_S``
is dropped; every response closes its connection. With ``--processes N`` each shard serves
its own port ``P + k`` (the CLI passes it down); nothing is aggregated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

from devices._exceptions import MetricsError
from devices.snapshot import FleetSnapshot

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
PREFIX = "edgetally_fleet_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterator[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {PREFIX}{name} {help_text}")
        self.lines.append(f"# TYPE {PREFIX}{name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            series = f"{PREFIX}{name}{{{rendered}}}" if rendered else f"{PREFIX}{name}"
            self.lines.append(f"{series} {_number(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, iter([({}, value)]))


def exposition(snap: FleetSnapshot | None) -> str:
    """The snapshot as Prometheus text; only ``up``-style figures before the first snapshot."""
    out = _Writer()
    out.single("snapshot_available", "gauge", "1 once the fleet has been observed.", 1 if snap else 0)
    if snap is None:
        return "\n".join(out.lines) + "\n"
    out.single("running", "gauge", "1 while the fleet runs, 0 once it has finished.", 1 if snap.running else 0)
    out.single("elapsed_seconds", "gauge", "Seconds since the fleet started.", round(snap.elapsed_s, 3))
    out.family(
        "devices",
        "gauge",
        "Devices by state (connected, connecting, offline = lost and not back, finished).",
        iter(
            [
                ({"state": "connected"}, snap.connected),
                ({"state": "connecting"}, snap.connecting),
                ({"state": "offline"}, snap.offline),
                ({"state": "finished"}, snap.finished),
            ]
        ),
    )
    out.single("batches_planned", "gauge", "Batches the fleet has to send in all.", snap.batches)
    out.family(
        "batches_total",
        "counter",
        "Distinct batches by stage: sent to the broker, acked by the broker, receipted by the cloud.",
        iter(
            [
                ({"stage": "sent"}, snap.sent),
                ({"stage": "acked"}, snap.acked),
                ({"stage": "receipted"}, snap.receipted),
            ]
        ),
    )
    out.single("pending", "gauge", "Batches sent and not yet receipted (held in device spools).", snap.pending)
    out.single("publishes_total", "counter", "Publishes acked by the broker, resends included.", snap.publishes)
    out.single("resends_total", "counter", "Batches resent for want of a receipt.", snap.resends)
    out.single("reconnects_total", "counter", "Connections made after a device's first.", snap.reconnects)
    out.single("connect_failures_total", "counter", "Connection attempts that failed.", snap.connect_failures)
    out.single("connections_lost_total", "counter", "Established connections that were lost.", snap.connections_lost)
    out.family(
        "behaviours_total",
        "counter",
        "Misbehaviours injected, by behaviour.",
        iter([({"behaviour": name}, count) for name, count in snap.behaviours.items()]),
    )
    out.family(
        "ignored_total",
        "counter",
        "Receipts and repair requests ignored (not signed by the cloud for the device), by word and reason.",
        iter([({"word": word, "reason": reason}, count) for (word, reason), count in snap.ignored.items()]),
    )
    return "\n".join(out.lines) + "\n"


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class MetricsServer:
    """Serves ``exposition(source())`` on http://127.0.0.1:PORT/metrics from its own thread.

    ``port`` 0 takes a free port; :attr:`port` holds the bound one after :meth:`start`.
    """

    def __init__(self, port: int, source: Callable[[], FleetSnapshot | None], host: str = HOST) -> None:
        self.host = host
        self.port = port
        self._source = source
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self._main, name="metrics-server", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise MetricsError(f"metrics server on {self.host}:{self.port} did not start in {START_TIMEOUT_S:.0f}s")
        if self._error is not None:
            raise MetricsError(f"cannot serve metrics on {self.host}:{self.port}: {self._error}") from self._error
        log.info("metrics on %s", self.url)
        return self

    def close(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES)
        except OSError as exc:
            self._error = exc
            self._started.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                reply = _response("400 Bad Request", b"bad request\n")
            elif parts[0] not in ("GET", "HEAD"):
                reply = _response("405 Method Not Allowed", b"GET /metrics only\n")
            elif parts[1].split("?", 1)[0] != "/metrics":
                reply = _response("404 Not Found", b"try /metrics\n")
            else:
                body = exposition(self._source()).encode("utf-8")
                reply = _response("200 OK", body, CONTENT_TYPE)
                if parts[0] == "HEAD":
                    reply = reply[: len(reply) - len(body)]
            writer.write(reply)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            log.debug("metrics request dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def linger(seconds: float) -> None:
    """Block up to ``seconds`` (the final figures stay scrapeable); SIGTERM or SIGINT ends it early."""
    if seconds <= 0:
        return
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
