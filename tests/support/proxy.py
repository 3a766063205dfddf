"""A TCP proxy with link faults, for tests: sits between a client (the gateway) and a broker.

Modes, switchable at any time from the test's thread:

    pass       forward bytes both ways (new connections get a fresh upstream connection)
    blackhole  every connection, existing and new, stays open but bytes are silently dropped
               both ways: TCP is up, nothing is answered (a firewall eating packets)
    halfopen   existing connections go silent like a blackhole; new ones are reset at once
               (the peer vanished without a FIN: the kernel of a dead host refuses)
    cut        every connection is reset now and new ones are reset at once

While a connection is silent, nothing of the broker side reaches the client, not even its
close. Switching back to ``pass`` resets the connections that went silent (their byte streams
lost data, so they cannot carry MQTT any more); the client notices and reconnects.

It runs an asyncio loop in a daemon thread; :meth:`FaultProxy.set_mode` returns once the
loop has applied the mode, so a test knows exactly when the fault began.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

CHUNK = 65536
T = TypeVar("T")


class Mode(StrEnum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    HALFOPEN = "halfopen"
    CUT = "cut"


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    silent: bool = False


def _close(writer: asyncio.StreamWriter | None, *, reset: bool) -> None:
    """Close gracefully (buffered bytes first, then FIN) or with RST, as a vanished peer would."""
    if writer is None or writer.is_closing():
        return
    if not reset:
        writer.close()
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, tls: bool = False) -> None:
        """``tls``: the target speaks TLS (the bytes pass through as they are); the URL says mqtts://."""
        self.target = (target_host, target_port)
        self.tls = tls
        self.port = 0
        self.mode = Mode.PASS
        self.accepted = 0
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start_server())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def set_mode(self, mode: Mode) -> None:
        """Apply ``mode`` now; returns once applied."""
        self._call(self._apply(mode))

    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return self._call(self._count())

    # -- on the loop -----------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _count(self) -> int:
        return len(self._pairs)

    async def _start_server(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            self._drop(pair, reset=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _apply(self, mode: Mode) -> None:
        self.mode = mode
        for pair in list(self._pairs):
            if mode is Mode.CUT or (mode is Mode.PASS and pair.silent):
                self._drop(pair, reset=True)
            elif mode in (Mode.BLACKHOLE, Mode.HALFOPEN):
                pair.silent = True

    def _drop(self, pair: _Pair, *, reset: bool) -> None:
        self._pairs.discard(pair)
        _close(pair.client, reset=reset)
        _close(pair.upstream, reset=reset)

    def _track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode in (Mode.HALFOPEN, Mode.CUT):
            _close(writer, reset=True)
            return
        pair = _Pair(writer, silent=self.mode is Mode.BLACKHOLE)
        self._pairs.add(pair)
        if not pair.silent:
            try:
                up_reader, pair.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                self._drop(pair, reset=True)
                return
            if pair not in self._pairs:  # cut while connecting
                _close(pair.upstream, reset=True)
                return
            self._track(self._pump(up_reader, writer, pair, from_client=False))
        await self._track(self._pump(reader, pair.upstream, pair, from_client=True))

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        pair: _Pair,
        *,
        from_client: bool,
    ) -> None:
        """Copy ``reader`` to ``writer`` until it ends; while the pair is silent, read and drop."""
        try:
            while data := await reader.read(CHUNK):
                if pair.silent or writer is None:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        # The client left, or a passing link ended: end both sides. A broker closing a silent
        # connection is not passed on: the client must not learn anything through a blackhole.
        if pair in self._pairs and (from_client or not pair.silent):
            self._drop(pair, reset=pair.silent)
