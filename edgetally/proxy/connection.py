"""One proxied connection of the fault proxy: :class:`_Connection` (a client connection and its
connection to the target) and its two :class:`_Pipe` directions, which hold chunks with due
times and write them in order, paced by the proxy's latency and bandwidth, or discard them in a
blackhole. What they read of their proxy is :class:`_Proxy`
(:class:`edgetally.proxy.proxy.FaultProxy` is one); the proxy's behaviour is described in
:mod:`edgetally.proxy.proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from edgetally.proxy.link import LinkState

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
BURST_S = 0.05  # a token bucket holds at most this many seconds of bandwidth
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


class _Proxy(Protocol):
    """What a connection reads and counts of its proxy: target, state, buffer bound, its
    counters and its set of open connections."""

    name: str
    target_host: str
    target_port: int
    max_buffer: int
    _rng: random.Random
    _conns: set[_Connection]
    _discarded: int
    _swallowed_closes: int
    _bytes: dict[str, int]

    @property
    def state(self) -> LinkState: ...
    @property
    def blackholed(self) -> bool: ...
    def _target_failed(self, exc: BaseException) -> None: ...
    def _target_ok(self) -> None: ...


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0), dropping whatever is unsent."""
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class _Pipe:
    """One direction of a connection: read from ``src``, hold chunks with due times, write to
    ``dst`` in order, paced by the proxy's latency and bandwidth."""

    def __init__(
        self,
        conn: _Connection,
        direction: str,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        src_side: str,
    ) -> None:
        self.conn = conn
        self.proxy = conn.proxy
        self.direction = direction  # "up" (client -> target) or "down"
        self.src = src
        self.dst = dst
        self.src_side = src_side
        self.queue: deque[tuple[float, bytes]] = deque()  # b"" is the source's EOF
        self.queued = 0  # bytes read and not yet written or discarded
        self.last_due = 0.0
        self.wake = asyncio.Event()  # the writer has something to look at
        self.room = asyncio.Event()  # the reader may go on
        self.tokens = 0.0
        self.token_time: float | None = None

    def discard_queue(self) -> None:
        """Entering the blackhole: what is held is lost, and the stream has a hole."""
        dropped = sum(len(chunk) for _, chunk in self.queue)
        eof = any(not chunk for _, chunk in self.queue)
        if self.queue:
            self.conn.hole = True
        self.queue.clear()
        self.queued -= dropped
        self.proxy._discarded += dropped
        self.wake.set()
        self.room.set()
        if eof:
            self.conn.side_ended(self.src_side)

    async def read_loop(self) -> None:
        proxy = self.proxy
        while True:
            try:
                data = await self.src.read(CHUNK)
            except OSError as exc:
                if proxy.blackholed:
                    self.conn.side_ended(self.src_side)
                else:
                    self.conn.close(reset=True, why=f"{self.src_side} reset ({exc})")
                return
            while data and self.queued >= proxy.max_buffer and not proxy.blackholed:
                self.room.clear()
                await self.room.wait()  # backpressure: the source's socket fills up
            if proxy.blackholed:
                if not data:
                    self.conn.side_ended(self.src_side)
                    return
                self.conn.hole = True
                proxy._discarded += len(data)
                continue
            self._enqueue(data)
            if not data:
                return

    def _enqueue(self, data: bytes) -> None:
        state = self.proxy.state
        delay = state.latency_ms
        if state.jitter_ms:
            delay += self.proxy._rng.uniform(-state.jitter_ms, state.jitter_ms)
        now = asyncio.get_running_loop().time()
        due = max(now + max(0.0, delay) / 1000.0, self.last_due)  # jitter never reorders
        self.last_due = due
        if not self.queue:
            self.wake.set()
        self.queue.append((due, data))
        self.queued += len(data)

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            due, chunk = self.queue[0]
            delay = due - loop.time()
            if delay > 0:
                self.wake.clear()  # set again if the queue is discarded meanwhile
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
                continue
            self.queue.popleft()
            if not chunk:
                self._forward_eof()
                return
            try:
                await self._write(chunk)
            except OSError as exc:
                self.conn.close(reset=True, why=f"writing {self.direction} failed ({exc})")
                return
            finally:
                self.queued -= len(chunk)
                self.room.set()

    async def _write(self, chunk: bytes) -> None:
        sent = 0
        while sent < len(chunk):
            if self.proxy.blackholed:
                self.conn.hole = True
                self.proxy._discarded += len(chunk) - sent
                return
            n = await self._allowance(len(chunk) - sent)
            if self.proxy.blackholed:
                continue
            self.dst.write(chunk[sent : sent + n])
            await self.dst.drain()
            sent += n
            self.proxy._bytes[self.direction] += n

    async def _allowance(self, want: int) -> int:
        """How many bytes may go now: all of them, or what the token bucket allows."""
        loop = asyncio.get_running_loop()
        while True:
            bps = self.proxy.state.bandwidth_bps
            if bps is None:
                self.token_time = None
                return want
            now = loop.time()
            if self.token_time is None:
                self.tokens, self.token_time = 0.0, now
            cap = max(1.0, bps * BURST_S)
            self.tokens = min(cap, self.tokens + (now - self.token_time) * bps)
            self.token_time = now
            need = max(1, min(want, int(cap)))
            if self.tokens >= need:
                self.tokens -= need
                return need
            await asyncio.sleep(min(0.25, (need - self.tokens) / bps))

    def _forward_eof(self) -> None:
        try:
            if self.dst.can_write_eof():
                self.dst.write_eof()
        except (OSError, RuntimeError) as exc:
            self.conn.close(reset=True, why=f"forwarding EOF {self.direction} failed ({exc})")
            return
        self.conn.pipe_finished()


class _Connection:
    """A client connection and (unless it arrived in a blackhole) its connection to the target."""

    def __init__(
        self, proxy: _Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client_r, self.client_w = reader, writer
        self.upstream_w: asyncio.StreamWriter | None = None
        self.pipes: list[_Pipe] = []
        self.tasks: list[asyncio.Future[Any]] = []
        self.hole = False  # bytes (or a close) were discarded, or never connected through
        self.ended: set[str] = set()  # sides whose close the blackhole swallowed
        self.finished = 0
        self.closed = False
        self.done = asyncio.Event()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._task_done)
        self.tasks.append(task)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("proxy %s: connection task failed", self.proxy.name, exc_info=task.exception())
        self.close(reset=True, why="internal error")

    async def run(self) -> None:
        proxy = self.proxy
        if proxy.blackholed:
            self.hole = True  # accepted, never connected through
            self._spawn(self._discard_client())
        else:
            connect = asyncio.ensure_future(
                asyncio.wait_for(
                    asyncio.open_connection(proxy.target_host, proxy.target_port),
                    CONNECT_TIMEOUT_S,
                )
            )
            self.tasks.append(connect)  # close() cancels it
            await asyncio.wait([connect])
            if connect.cancelled():
                return
            exc = connect.exception()
            if exc is not None:
                proxy._target_failed(exc)
                return
            up_r, up_w = connect.result()
            if self.closed:
                _reset(up_w)
                return
            proxy._target_ok()
            self.upstream_w = up_w
            up = _Pipe(self, "up", self.client_r, up_w, "client")
            down = _Pipe(self, "down", up_r, self.client_w, "target")
            self.pipes = [up, down]
            for pipe in self.pipes:
                self._spawn(pipe.read_loop())
                self._spawn(pipe.write_loop())
        await self.done.wait()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _discard_client(self) -> None:
        while True:
            try:
                data = await self.client_r.read(CHUNK)
            except OSError:
                data = b""
            if not data:
                self.side_ended("client")
                return
            self.proxy._discarded += len(data)

    def side_ended(self, side: str) -> None:
        """In the blackhole a side closed: close our end of it, tell nobody."""
        self.hole = True
        if side not in self.ended:
            self.proxy._swallowed_closes += 1
        self.ended.add(side)
        writer = self.client_w if side == "client" else self.upstream_w
        if writer is not None:
            writer.transport.abort()
        if self.upstream_w is None or len(self.ended) == 2:
            self.close(reset=True, why="both sides closed in the blackhole")

    def pipe_finished(self) -> None:
        self.finished += 1
        if self.finished == 2:
            self.close(reset=False, why="closed by both sides")

    def close(self, *, reset: bool, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.debug("proxy %s: connection closed: %s", self.proxy.name, why)
        for writer in (self.client_w, self.upstream_w):
            if writer is None:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()
        for task in self.tasks:
            task.cancel()
        self.proxy._conns.discard(self)
        self.done.set()
