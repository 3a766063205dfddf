"""Running the results service: a socket bound first (so ``--port 0`` works and the ready file
can name the port), then uvicorn on it until SIGTERM or Ctrl-C: open SSE streams are ended
first (clients see the stream close and reconnect elsewhere), connections get a second to
finish, and the command exits 0 (uvicorn's own handlers would re-raise the signal)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from cloud._exceptions import ConfigError
from cloud.db import make_engine
from cloud.serve.app import ServeConfig, create_app
from protocol import Registry

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket. Made with ``IPPROTO_TCP`` named, not 0: asyncio turns Nagle off
    (``TCP_NODELAY``) only on connections whose socket says TCP, and with Nagle on, a response's
    headers and body (two writes) meet the client's delayed ACK: 40 ms per keep-alive request."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGTERM/SIGINT without re-raising the signal afterwards,
    and ending the SSE streams as soon as it is told to stop."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._on_exit()


def serve(
    db_url: str, host: str, port: int, config: ServeConfig, ready_file: Path | None = None, registry: Registry | None = None
) -> None:
    """Serve until stopped. :class:`ConfigError` for a port that cannot be bound; a database
    that cannot be read keeps the unit routes at 503 (and is logged) until it can."""
    engine = make_engine(db_url, create=False, writer=False)
    sock = bind(host, port)
    bound = sock.getsockname()[1]

    def ready() -> None:
        log.info("results service on http://%s:%d/", host, bound)
        if ready_file is not None:
            ready_file.write_text(json.dumps({"pid": os.getpid(), "port": bound}) + "\n", encoding="utf-8")

    app = create_app(engine, config, on_ready=ready, registry=registry)
    server = _Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1),
        app.state.end_streams,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        engine.dispose()
