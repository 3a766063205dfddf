"""A TCP fault proxy for any link of the pipeline (devices, gateway, cloud <-> their brokers).

``FaultProxy`` listens on one port and forwards every connection to a target. On command the
link passes, is cut, is blackholed, gets latency and jitter, is limited in bandwidth, or is
dropped for a while. The state (:class:`LinkState`) applies at once to open connections and
to new ones:

* ``PASS``: bytes flow both ways, delayed by ``latency_ms`` ± uniform ``jitter_ms`` per chunk and
  paced by a token bucket of ``bandwidth_bps`` bytes per second, each direction on its own. Order
  is kept: a chunk is never due before the one read before it. Nothing is ever dropped; when a
  direction holds ``max_buffer`` bytes the proxy stops reading from its source (TCP backpressure).
* ``CUT``: every open connection is closed on both sides with a reset, and new connections are
  accepted and reset at once, so clients see a dead link and reconnect with their own backoff.
* ``BLACKHOLE``: sockets stay open, and whatever arrives from either side is read and discarded
  (a close too), so only keepalives can notice. New connections are accepted and never
  connected through. A connection whose stream lost bytes (or was never connected through) is
  reset when the link leaves the blackhole: a stream with a hole in it is never resumed.

``drop_for(seconds)`` cuts now, keeps refusing for that long, then restores the state before it.
:class:`FaultProxy` runs on asyncio; its setters may also be called from another thread (they
then wait until the proxy's loop has applied them). The line-oriented JSON control channel for
a proxy running as a process (``edgetally proxy``) is in :mod:`edgetally.proxy.control`; the
link model (:class:`~edgetally.proxy.link.LinkState`, :class:`~edgetally.proxy.link.Mode`) is in
:mod:`edgetally.proxy.link`, and one proxied connection with its two directions in
:mod:`edgetally.proxy.connection`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

from edgetally.proxy.connection import _Connection, _reset
from edgetally.proxy.link import PASS, LinkState, Mode, _non_negative

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BUFFER = 4 * 1024 * 1024  # per connection and direction
LISTEN_BACKLOG = 4096


class ProxyError(Exception):
    """Base of the fault proxy's errors."""


class ProxyNoAnswer(ProxyError):
    """A proxy's control channel gave no answer: refused, timed out, closed, or not JSON."""


class ProxyCommandError(ProxyError):
    """The proxy answered a control command with ``ok: false``; ``reply`` is its answer."""

    def __init__(self, message: str, reply: dict[str, Any]) -> None:
        super().__init__(message)
        self.reply = reply



def _connections(n: int) -> str:
    return f"{n} connection" if n == 1 else f"{n} connections"


class FaultProxy:
    """A TCP proxy with faults on command (see the module doc). Constructing it does no I/O."""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        *,
        name: str = "proxy",
        seed: int | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        self.listen_host = listen_host
        self.target_host = target_host
        self.target_port = target_port
        self.name = name
        self.max_buffer = max_buffer
        self._port = listen_port
        self._rng = random.Random(seed)
        self._state = PASS
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._drop_timer: asyncio.TimerHandle | None = None
        self._drop_previous: LinkState | None = None
        self._target_down = False
        self._target_failures = 0
        self._accepted = self._refused = self._cuts = self._cut_connections = 0
        self._discarded = 0
        self._swallowed_closes = 0  # a side's close the blackhole did not pass on
        self._bytes = {"up": 0, "down": 0}

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The listening port (the one picked once started, if ``listen_port`` was 0)."""
        return self._port

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def blackholed(self) -> bool:
        return self._state.mode is Mode.BLACKHOLE

    async def start(self) -> None:
        if self._server is not None:
            raise ProxyError(f"proxy {self.name} is already started")
        self._loop = asyncio.get_running_loop()
        # A reconnect storm arrives all at once: asyncio's default backlog (100) overflowed by
        # thousands and left clients waiting for SYN retransmits (scripts/bench proxy).
        self._server = await asyncio.start_server(self._accept, self.listen_host, self._port, backlog=LISTEN_BACKLOG)
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "proxy %s: listening on %s:%d -> %s:%d (%s)",
            self.name,
            self.listen_host,
            self._port,
            self.target_host,
            self.target_port,
            self._state.describe(),
        )

    async def stop(self) -> None:
        """Close the listener and every connection; every task of the proxy ends."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._cancel_drop()
        for conn in list(self._conns):
            conn.close(reset=True, why="proxy stopped")
        await server.wait_closed()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        log.info("proxy %s: stopped (%s)", self.name, self._summary())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        if self._state.mode is Mode.CUT or self._server is None:
            self._refused += 1
            _reset(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Connection(self, reader, writer)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            conn.close(reset=True, why="handler ended")
            self._handlers.discard(task)

    def _target_failed(self, exc: BaseException) -> None:
        self._target_failures += 1
        if not self._target_down:
            self._target_down = True
            log.warning(
                "proxy %s: target %s:%d unreachable (%s); resetting clients until it answers",
                self.name,
                self.target_host,
                self.target_port,
                exc or type(exc).__name__,
            )

    def _target_ok(self) -> None:
        if self._target_down:
            self._target_down = False
            log.info(
                "proxy %s: target %s:%d answers again",
                self.name,
                self.target_host,
                self.target_port,
            )

    # ------------------------------------------------------------------ faults

    def set(self, state: LinkState) -> None:
        """Apply ``state`` to open and new connections; ends a ``drop_for`` early."""
        if not isinstance(state, LinkState):
            raise TypeError(f"expected a LinkState, got {state!r}")

        def apply() -> None:
            self._cancel_drop()
            self._apply(state)

        self._on_loop(apply)

    def pass_(self) -> None:
        """A clean link: pass, no latency, no bandwidth limit."""
        self.set(PASS)

    def cut(self) -> None:
        """Reset every connection and every new one (latency and bandwidth settings kept)."""
        self._on_loop(lambda: self._set_mode(Mode.CUT))

    def blackhole(self) -> None:
        """Hold every connection open and forward nothing (latency and bandwidth kept)."""
        self._on_loop(lambda: self._set_mode(Mode.BLACKHOLE))

    def latency(self, ms: float, jitter_ms: float = 0) -> None:
        """Delay each chunk by ``ms`` ± uniform ``jitter_ms``; mode and bandwidth kept, and
        during a ``drop_for`` also the state it restores."""
        LinkState(Mode.PASS, latency_ms=ms, jitter_ms=jitter_ms)  # validate in the caller
        self._on_loop(lambda: self._shape(latency_ms=ms, jitter_ms=jitter_ms))

    def bandwidth(self, bps: int | None) -> None:
        """Limit each direction to ``bps`` bytes per second, None = unlimited; mode kept, and
        during a ``drop_for`` also the state it restores."""
        LinkState(Mode.PASS, bandwidth_bps=bps)
        self._on_loop(lambda: self._shape(bandwidth_bps=bps))

    def drop_for(self, seconds: float) -> None:
        """Cut now, refuse new connections for ``seconds``, then restore the state before
        (a second drop while one runs restarts the clock and restores the same state)."""
        _non_negative("seconds", seconds)
        if seconds <= 0:
            raise ValueError("seconds must be > 0")

        def apply() -> None:
            loop = self._loop
            if loop is None or self._server is None:
                raise ProxyError(f"proxy {self.name} is not running")
            if self._drop_timer is None:
                self._drop_previous = self._state
            else:
                self._drop_timer.cancel()
            self._drop_timer = loop.call_later(seconds, self._end_drop, seconds)
            cut = dataclasses.replace(self._state, mode=Mode.CUT)
            self._apply(cut, what=f"drop for {seconds:g} s")

        self._on_loop(apply)

    def _set_mode(self, mode: Mode) -> None:
        self._cancel_drop()
        self._apply(dataclasses.replace(self._state, mode=mode))

    def _shape(self, **changes: Any) -> None:
        if self._drop_previous is not None:
            self._drop_previous = dataclasses.replace(self._drop_previous, **changes)
        self._apply(dataclasses.replace(self._state, **changes))

    def _end_drop(self, seconds: float) -> None:
        previous = self._drop_previous or PASS
        self._drop_timer = self._drop_previous = None
        self._apply(previous, what=f"drop of {seconds:g} s over")

    def _cancel_drop(self) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
        self._drop_timer = self._drop_previous = None

    def _apply(self, state: LinkState, what: str | None = None) -> int:
        old, self._state = self._state, state
        closed = 0
        detail = ""
        if state.mode is Mode.CUT:
            if old.mode is not Mode.CUT:
                self._cuts += 1
            for conn in list(self._conns):
                conn.close(reset=True, why="cut")
                closed += 1
            self._cut_connections += closed
            detail = f" ({_connections(closed)} closed)"
        elif state.mode is Mode.BLACKHOLE:
            for conn in self._conns:
                for pipe in conn.pipes:
                    pipe.discard_queue()
            if old.mode is not Mode.BLACKHOLE:
                detail = f" ({_connections(len(self._conns))} held open, nothing forwarded)"
        else:
            for conn in list(self._conns):
                if conn.hole:
                    conn.close(reset=True, why="its stream lost bytes in the blackhole")
                    closed += 1
            if closed:
                detail = f" ({_connections(closed)} with bytes lost in the blackhole reset)"
        for conn in self._conns:
            for pipe in conn.pipes:
                pipe.wake.set()
        prefix = f"{what}: " if what else ""
        log.info("proxy %s: %s%s%s", self.name, prefix, state.describe(), detail)
        return closed

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop: at once from it (or before start), else wait for it."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or not loop.is_running():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the calling thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return future.result(timeout=30)

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        return self._on_loop(self._stats)

    def _stats(self) -> dict[str, Any]:
        state = self._state
        loop = self._loop
        timer = self._drop_timer
        queued = {"up": 0, "down": 0}
        for conn in self._conns:
            for pipe in conn.pipes:
                queued[pipe.direction] += pipe.queued
        return {
            "name": self.name,
            "listen": f"{self.listen_host}:{self._port}",
            "target": f"{self.target_host}:{self.target_port}",
            "mode": state.mode.value,
            "latency_ms": state.latency_ms,
            "jitter_ms": state.jitter_ms,
            "bandwidth_bps": state.bandwidth_bps,
            "drop_remaining_s": (
                round(max(0.0, timer.when() - loop.time()), 3)
                if timer is not None and loop is not None
                else None
            ),
            "open": len(self._conns),
            "accepted": self._accepted,
            "refused": self._refused,
            "cuts": self._cuts,
            "cut_connections": self._cut_connections,
            "bytes_up": self._bytes["up"],
            "bytes_down": self._bytes["down"],
            "queued_up": queued["up"],
            "queued_down": queued["down"],
            "discarded_bytes": self._discarded,
            "swallowed_closes": self._swallowed_closes,
            "target_failures": self._target_failures,
        }

    def _summary(self) -> str:
        return (
            f"{self._accepted} accepted, {self._refused} refused, {self._cuts} cuts, "
            f"{self._bytes['up']} B up, {self._bytes['down']} B down, "
            f"{self._discarded} B discarded"
        )
