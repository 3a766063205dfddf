"""The fault proxy's control channel, and the proxy as a process (``edgetally proxy``).

Protocol: TCP on 127.0.0.1, one JSON object per line each way. Every request gets exactly one
reply line: ``{"ok": true, ...stats}`` after the command is applied (the stats are those of
:meth:`FaultProxy.stats`), or ``{"ok": false, "error": "..."}`` naming the problem, and then
nothing has changed. Several requests may share one connection.

=====================================================  =========================================
request                                                effect
=====================================================  =========================================
``{"cmd": "pass"}``                                    a clean link (no latency, no bandwidth limit)
``{"cmd": "cut"}``                                     reset every connection and each new one
``{"cmd": "blackhole"}``                               hold connections open, forward nothing
``{"cmd": "latency", "ms": 200, "jitter_ms": 50}``     delay per chunk, order kept (jitter_ms optional)
``{"cmd": "bandwidth", "bps": 20000}``                 bytes/s per direction; 0 or null: unlimited
``{"cmd": "drop", "seconds": 5}``                      cut for that long, then the state before
``{"cmd": "set", "mode": "pass", "latency_ms": 0,      the whole state at once (all but mode optional,
"jitter_ms": 0, "bandwidth_bps": null}``               default 0 / null)
``{"cmd": "stats"}``                                   nothing; the stats
=====================================================  =========================================

Unknown commands, unknown fields, missing fields and bad values are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgetally.proxy.link import LinkState, Mode
from edgetally.proxy.proxy import (
    FaultProxy,
    ProxyCommandError,
    ProxyError,
    ProxyNoAnswer,
)

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
DEFAULT_TIMEOUT_S = 5.0

# command -> (required fields, optional fields)
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pass": ((), ()),
    "cut": ((), ()),
    "blackhole": ((), ()),
    "latency": (("ms",), ("jitter_ms",)),
    "bandwidth": (("bps",), ()),
    "drop": (("seconds",), ()),
    "set": (("mode",), ("latency_ms", "jitter_ms", "bandwidth_bps")),
    "stats": ((), ()),
}


class CommandInvalid(ValueError):
    """A control request that cannot be applied; the message says why."""


def _number(cmd: str, field: str, value: object, *, positive: bool = False) -> float:
    bound = "> 0" if positive else ">= 0"
    problem = CommandInvalid(f"{cmd}: {field} must be a finite number {bound}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise problem
    try:
        number = float(value)
    except OverflowError:
        raise problem from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise problem
    return number


def _bps(cmd: str, field: str, value: object) -> int | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CommandInvalid(
            f"{cmd}: {field} must be an integer >= 0 (bytes per second; 0 or null: unlimited),"
            f" got {value!r}"
        )
    return value


def apply_command(proxy: FaultProxy, request: object) -> dict[str, Any]:
    """Apply one decoded request to ``proxy``; the reply. Bad requests change nothing."""
    try:
        _apply(proxy, request)
    except (ValueError, ProxyError) as exc:  # CommandInvalid is a ValueError
        return {"ok": False, "error": str(exc)}
    return {"ok": True, **proxy.stats()}


def _apply(proxy: FaultProxy, request: object) -> None:
    if not isinstance(request, dict):
        raise CommandInvalid(f'a request is a JSON object like {{"cmd": "stats"}}, got {request!r}')
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        known = ", ".join(COMMANDS)
        raise CommandInvalid(f"unknown command {cmd!r} (known: {known})")
    required, optional = COMMANDS[cmd]
    missing = [field for field in required if field not in request]
    if missing:
        raise CommandInvalid(f"{cmd}: missing {', '.join(missing)}")
    unexpected = sorted(set(request) - {"cmd", *required, *optional})
    if unexpected:
        allowed = ", ".join((*required, *optional)) or "none"
        raise CommandInvalid(f"{cmd}: unexpected {', '.join(unexpected)} (fields: {allowed})")
    if cmd == "pass":
        proxy.pass_()
    elif cmd == "cut":
        proxy.cut()
    elif cmd == "blackhole":
        proxy.blackhole()
    elif cmd == "latency":
        ms = _number(cmd, "ms", request["ms"])
        proxy.latency(ms, _number(cmd, "jitter_ms", request.get("jitter_ms", 0)))
    elif cmd == "bandwidth":
        proxy.bandwidth(_bps(cmd, "bps", request["bps"]))
    elif cmd == "drop":
        proxy.drop_for(_number(cmd, "seconds", request["seconds"], positive=True))
    elif cmd == "set":
        modes = [mode.value for mode in Mode]
        if request["mode"] not in modes:
            raise CommandInvalid(
                f"set: mode must be one of {', '.join(modes)}, got {request['mode']!r}"
            )
        proxy.set(
            LinkState(
                Mode(request["mode"]),
                latency_ms=_number(cmd, "latency_ms", request.get("latency_ms", 0)),
                jitter_ms=_number(cmd, "jitter_ms", request.get("jitter_ms", 0)),
                bandwidth_bps=_bps(cmd, "bandwidth_bps", request.get("bandwidth_bps")),
            )
        )


def _decode(line: bytes) -> object:
    try:
        return json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandInvalid(f"not a JSON line: {exc}") from None


class ControlServer:
    """The control channel of one proxy on ``host:port`` (0 = a free port). No I/O until start."""

    def __init__(self, proxy: FaultProxy, host: str = "127.0.0.1", port: int = 0) -> None:
        self.proxy = proxy
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=MAX_LINE
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("proxy %s: control channel on %s:%d", self.proxy.name, self.host, self._port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._clients):
            writer.transport.abort()
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    line = exc.partial  # a last request without a newline still counts
                    if not line.strip():
                        return
                except asyncio.LimitOverrunError:
                    await self._reply(
                        writer, {"ok": False, "error": f"line longer than {MAX_LINE} bytes"}
                    )
                    return
                if not line.strip():
                    continue
                try:
                    reply = apply_command(self.proxy, _decode(line))
                except CommandInvalid as exc:
                    reply = {"ok": False, "error": str(exc)}
                if not reply["ok"]:
                    log.warning(
                        "proxy %s: control request refused: %s", self.proxy.name, reply["error"]
                    )
                await self._reply(writer, reply)
        except OSError:
            return
        finally:
            self._clients.discard(writer)
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: Mapping[str, Any]) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()


class ProxyControl:
    """A synchronous client of a proxy's control channel, one connection per request.

    :meth:`send` returns the reply as it is; the helpers (:meth:`cut`, :meth:`pass_`, ...)
    raise :class:`ProxyCommandError` when it says ``ok: false``. Every method raises
    :class:`ProxyNoAnswer` when no well-formed reply comes within ``timeout`` seconds.
    """

    def __init__(
        self, port: int, host: str = "127.0.0.1", *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    def send(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        request = json.dumps(dict(cmd)).encode() + b"\n"
        where = f"fault proxy control {self.host}:{self.port}"
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(request)
                data = b""
                while not data.endswith(b"\n") and len(data) <= MAX_LINE:
                    part = sock.recv(MAX_LINE)
                    if not part:
                        break
                    data += part
        except OSError as exc:
            raise ProxyNoAnswer(f"{where} did not answer {cmd.get('cmd')!r}: {exc}") from exc
        if not data.endswith(b"\n"):
            raise ProxyNoAnswer(f"{where} closed without a full reply to {cmd.get('cmd')!r}")
        try:
            reply = json.loads(data)
        except ValueError as exc:
            raise ProxyNoAnswer(
                f"{where} answered with something not JSON: {data[:200]!r}"
            ) from exc
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise ProxyNoAnswer(f"{where} answered without ok: {data[:200]!r}")
        return reply

    def command(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`send`, raising :class:`ProxyCommandError` when the proxy refuses."""
        reply = self.send(cmd)
        if not reply["ok"]:
            raise ProxyCommandError(f"proxy refused {dict(cmd)}: {reply.get('error')}", reply)
        return reply

    def stats(self) -> dict[str, Any]:
        return self.command({"cmd": "stats"})

    def pass_(self) -> dict[str, Any]:
        return self.command({"cmd": "pass"})

    def cut(self) -> dict[str, Any]:
        return self.command({"cmd": "cut"})

    def blackhole(self) -> dict[str, Any]:
        return self.command({"cmd": "blackhole"})

    def latency(self, ms: float, jitter_ms: float = 0) -> dict[str, Any]:
        return self.command({"cmd": "latency", "ms": ms, "jitter_ms": jitter_ms})

    def bandwidth(self, bps: int | None) -> dict[str, Any]:
        return self.command({"cmd": "bandwidth", "bps": bps})

    def drop_for(self, seconds: float) -> dict[str, Any]:
        return self.command({"cmd": "drop", "seconds": seconds})

    def set(self, state: LinkState) -> dict[str, Any]:
        return self.command(
            {
                "cmd": "set",
                "mode": state.mode.value,
                "latency_ms": state.latency_ms,
                "jitter_ms": state.jitter_ms,
                "bandwidth_bps": state.bandwidth_bps,
            }
        )


def command_from_words(words: list[str]) -> dict[str, Any]:
    """``proxy-ctl`` words to a request: ``latency 200 50``, ``bandwidth 0``, ``drop 5``, a JSON
    object, ...; raises :class:`CommandInvalid`."""
    if not words:
        raise CommandInvalid("no command given")
    if words[0].lstrip().startswith("{"):
        decoded = _decode(" ".join(words).encode())
        if not isinstance(decoded, dict):
            raise CommandInvalid("a JSON request must be an object")
        return decoded
    name, args = words[0], words[1:]
    fields = {"latency": ("ms", "jitter_ms"), "bandwidth": ("bps",), "drop": ("seconds",)}.get(
        name, ()
    )
    if name not in COMMANDS:
        raise CommandInvalid(
            f"unknown command {name!r} (known: {', '.join(c for c in COMMANDS if c != 'set')})"
        )
    if len(args) > len(fields) or (fields and not args):
        usage = " ".join([name, *(f.upper() for f in fields)])
        raise CommandInvalid(f"usage: {usage}")
    request: dict[str, Any] = {"cmd": name}
    for field, arg in zip(fields, args, strict=False):
        try:
            request[field] = int(arg) if arg.lstrip("-").isdigit() else float(arg)
        except ValueError:
            raise CommandInvalid(f"{name}: {field} must be a number, got {arg!r}") from None
    return request


def _write_ready(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(data)) + "\n")
    os.replace(tmp, path)


async def serve(
    proxy: FaultProxy,
    *,
    control_port: int | None,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run ``proxy`` (and its control channel on 127.0.0.1 unless ``control_port`` is None)
    until ``stop`` is set or SIGINT/SIGTERM; the ready file is written once both listen."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    control = ControlServer(proxy, port=control_port) if control_port is not None else None
    handled: list[signal.Signals] = []
    try:
        await proxy.start()
        if control is not None:
            await control.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        if ready_file is not None:
            _write_ready(
                ready_file,
                {
                    "name": proxy.name,
                    "pid": os.getpid(),
                    "listen_host": proxy.listen_host,
                    "listen_port": proxy.port,
                    "target": f"{proxy.target_host}:{proxy.target_port}",
                    "control_port": control.port if control is not None else None,
                },
            )
            log.info("proxy %s: ready (ready file %s)", proxy.name, ready_file)
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if control is not None:
            await control.stop()
        await proxy.stop()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
