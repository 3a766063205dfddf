"""The fault proxy: real sockets on 127.0.0.1, a real Mosquitto for the keepalive test, and
`edgetally proxy` as a process. The proxy runs on an asyncio loop in a background thread; the
tests block on plain sockets and paho, and wait with tests.helpers.wait_until."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest

from edgetally.brokers import BrokerProcess, free_port
from edgetally.proxy.connection import CHUNK
from edgetally.proxy.control import (
    CommandInvalid,
    ControlServer,
    ProxyControl,
    command_from_words,
)
from edgetally.proxy.link import LinkState, Mode
from edgetally.proxy.proxy import (
    FaultProxy,
    ProxyCommandError,
    ProxyError,
    ProxyNoAnswer,
)
from tests.conftest import unique_topic
from tests.helpers import run_cli, start_cli, wait_until

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="proxy-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> list[str]:
        """Stop the loop; the tasks that were still running after a bounded wait."""

        async def settle() -> list[str]:
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me]
            if others:
                await asyncio.wait(others, timeout=5)
            return [repr(t) for t in others if not t.done()]

        leftover = self.run(settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        return leftover


class TargetConn:
    def __init__(self) -> None:
        self.received = bytearray()
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, bytes received so far)
        self.eof = False
        self.closed = False


class Target:
    """A TCP server behind the proxy: records each connection's bytes and their arrival times,
    echoes them if ``echo``, sends ``greeting`` first, reads nothing until released if ``hold``."""

    def __init__(self, *, echo: bool = False, greeting: bytes = b"", hold: bool = False) -> None:
        self.echo = echo
        self.greeting = greeting
        self.hold = hold
        self.conns: list[TargetConn] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._release: asyncio.Event | None = None
        self.port = 0

    async def start(self) -> None:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def release(self) -> None:  # on the loop
        assert self._release is not None
        self._release.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._release is not None
        self._tasks.add(task)
        self._writers.append(writer)
        conn = TargetConn()
        self.conns.append(conn)
        try:
            if self.greeting:
                writer.write(self.greeting)
            if self.hold:
                await self._release.wait()
            while True:
                data = await reader.read(65536)
                if not data:
                    conn.eof = True
                    break
                conn.received += data
                conn.arrivals.append((time.monotonic(), len(conn.received)))
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            conn.closed = True
            writer.close()
            self._tasks.discard(task)

    def close_all(self) -> None:  # on the loop
        for writer in self._writers:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    leftover = lt.close()
    assert not leftover, f"tasks still running after stop(): {leftover}"


@pytest.fixture
def targets(loop_thread: LoopThread) -> Iterator[Callable[..., Target]]:
    made: list[Target] = []

    def make(**kwargs: Any) -> Target:
        target = Target(**kwargs)
        loop_thread.run(target.start())
        made.append(target)
        return target

    yield make
    for target in made:
        loop_thread.run(target.stop())


@pytest.fixture
def proxies(loop_thread: LoopThread) -> Iterator[Callable[..., FaultProxy]]:
    made: list[FaultProxy] = []

    def make(target_port: int, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(
            "127.0.0.1", 0, "127.0.0.1", target_port, name="test-link", seed=1, **kwargs
        )
        loop_thread.run(proxy.start())
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:  # stopped before the targets: fixtures tear down in reverse order
        loop_thread.run(proxy.stop())


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        part = sock.recv(min(1 << 20, n - len(data)))
        if not part:
            raise AssertionError(f"closed after {len(data)} of {n} bytes")
        data += part
    return bytes(data)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


def assert_closed(sock: socket.socket, timeout: float = 10.0) -> None:
    """The peer closes (EOF or reset) within ``timeout``, sending nothing first."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {timeout:.0f}s") from None
    assert data == b"", f"expected a closed connection, received {data!r}"


def assert_turned_away(port: int) -> None:
    """A new connection is accepted and closed at once: the reset may even beat connect()."""
    try:
        sock = connect(port)
    except ConnectionResetError:
        return
    with sock:
        assert_closed(sock)


def assert_open(sock: socket.socket) -> None:
    """Nothing to read and not closed: a short poll of a socket that should stay silent."""
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(1)


# --------------------------------------------------------------------------- state


def test_link_state_refuses_bad_values() -> None:
    for bad in (
        {"latency_ms": -1},
        {"jitter_ms": float("nan")},
        {"latency_ms": float("inf")},
        {"bandwidth_bps": 0},
        {"bandwidth_bps": 1.5},
        {"bandwidth_bps": True},
    ):
        with pytest.raises(ValueError):
            LinkState(Mode.PASS, **bad)
    assert LinkState(Mode.PASS, 200, 50, 20_000).describe() == (
        "pass, latency 200 ms ± 50 ms, bandwidth 20000 B/s"
    )


def test_constructor_does_no_io_and_setters_work_before_start() -> None:
    proxy = FaultProxy("127.0.0.1", 0, "127.0.0.1", 1, name="idle")
    proxy.latency(10, 5)
    proxy.bandwidth(1000)
    assert proxy.state == LinkState(Mode.PASS, 10, 5, 1000)
    assert proxy.stats()["open"] == 0
    with pytest.raises(ProxyError):
        proxy.drop_for(1)  # a drop needs the running proxy's clock
    with pytest.raises(ValueError):
        proxy.latency(-5)


# --------------------------------------------------------------------------- pass


def test_pass_forwards_bytes_both_ways_exactly_and_a_close(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    echo = targets(echo=True)
    proxy = proxies(echo.port)
    payload = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
    with connect(proxy.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(10)
        assert bytes(echo.conns[0].received) == payload
        sock.shutdown(socket.SHUT_WR)  # the half-close goes through, the target closes
        wait_until(lambda: echo.conns[0].eof, 10, "the target to see the client's EOF")
        assert_closed(sock)
    stats = wait_until(lambda: (s := proxy.stats())["open"] == 0 and s, 10, "the connection to end")
    assert stats["bytes_up"] == stats["bytes_down"] == len(payload)
    assert stats["accepted"] == 1 and stats["mode"] == "pass" and stats["discarded_bytes"] == 0


def test_target_down_resets_clients(proxies: Callable[..., FaultProxy]) -> None:
    proxy = proxies(free_port())  # nothing listens there
    assert_turned_away(proxy.port)
    assert proxy.stats()["target_failures"] == 1


# --------------------------------------------------------------------------- cut


def test_cut_closes_open_connections_and_new_ones_until_pass(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    echo = targets(echo=True)
    proxy = proxies(echo.port)
    with connect(proxy.port) as first, connect(proxy.port) as second:
        roundtrip(first)
        roundtrip(second)
        proxy.cut()
        assert_closed(first)
        assert_closed(second)
        wait_until(lambda: all(c.closed for c in echo.conns), 10, "the target's side to close too")
        for _ in range(3):
            assert_turned_away(proxy.port)
        stats = proxy.stats()
        assert stats["mode"] == "cut" and stats["open"] == 0
        assert stats["cuts"] == 1 and stats["cut_connections"] == 2 and stats["refused"] == 3
        proxy.pass_()
        with connect(proxy.port) as after:
            roundtrip(after, b"back")
    assert proxy.stats()["mode"] == "pass"


def test_drop_for_closes_during_and_restores_the_state_before(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    echo = targets(echo=True)
    proxy = proxies(echo.port)
    proxy.latency(20)
    with connect(proxy.port) as before:
        roundtrip(before)
        proxy.drop_for(3.0)
        stats = proxy.stats()
        assert stats["mode"] == "cut" and 0 < stats["drop_remaining_s"] <= 3.0
        assert stats["latency_ms"] == 20
        assert_closed(before)
    assert_turned_away(proxy.port)
    wait_until(lambda: proxy.stats()["mode"] == "pass", 15, "the drop to end")
    stats = proxy.stats()
    assert stats["latency_ms"] == 20 and stats["drop_remaining_s"] is None
    assert stats["cuts"] == 1 and stats["refused"] >= 1
    with connect(proxy.port) as after:
        roundtrip(after, b"again")


def test_shaping_during_a_drop_keeps_it_and_a_mode_change_ends_it(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    proxy = proxies(targets(echo=True).port)
    proxy.drop_for(60)
    proxy.latency(5)
    proxy.bandwidth(100_000)
    stats = proxy.stats()
    assert stats["mode"] == "cut" and stats["drop_remaining_s"] is not None
    proxy.drop_for(60)  # a second drop restarts the clock, still restores the first state
    proxy.blackhole()
    stats = proxy.stats()
    assert stats["mode"] == "blackhole" and stats["drop_remaining_s"] is None
    assert stats["latency_ms"] == 5 and stats["bandwidth_bps"] == 100_000
    proxy.pass_()
    assert proxy.state == LinkState(Mode.PASS)


# --------------------------------------------------------------------------- blackhole


def test_blackhole_holds_sockets_open_and_forwards_nothing(
    loop_thread: LoopThread, proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    echo = targets(echo=True)
    proxy = proxies(echo.port)
    with connect(proxy.port) as sock:
        roundtrip(sock)
        proxy.blackhole()
        sock.sendall(b"into the void")
        wait_until(lambda: proxy.stats()["discarded_bytes"] >= 13, 10, "the proxy to read and drop")
        assert_open(sock)
        assert bytes(echo.conns[0].received) == b"ping" and not echo.conns[0].closed
        loop_thread.call(echo.close_all)  # the target's close is swallowed too
        wait_until(lambda: proxy.stats()["swallowed_closes"] == 1, 10, "the target's close")
        assert_open(sock)
        with connect(proxy.port) as late:  # accepted, never connected through
            late.sendall(b"hello?")
            wait_until(lambda: proxy.stats()["discarded_bytes"] >= 19, 10, "the late bytes dropped")
            assert_open(late)
            assert len(echo.conns) == 1
            assert proxy.stats()["open"] == 2
            proxy.pass_()  # streams with holes are never resumed
            assert_closed(sock)
            assert_closed(late)
        with connect(proxy.port) as fresh:
            roundtrip(fresh, b"fresh")


def test_blackhole_then_pass_resumes_a_connection_that_lost_nothing(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    echo = targets(echo=True)
    proxy = proxies(echo.port)
    with connect(proxy.port) as sock:
        roundtrip(sock)
        proxy.blackhole()
        proxy.pass_()
        roundtrip(sock, b"still here")


@pytest.mark.integration
def test_blackhole_is_noticed_by_mqtt_keepalive_and_pass_brings_the_client_back(
    broker_factory: Callable[..., BrokerProcess], proxies: Callable[..., FaultProxy]
) -> None:
    # Plain: a test of the proxy's blackhole against paho's keepalive on a topic of its own;
    # TLS through the proxy is covered by tests/gateway/test_uplink_faults.py.
    broker = broker_factory("edge", plain=True)
    proxy = proxies(broker.port)
    topic = unique_topic()
    connects: list[float] = []
    disconnects: list[str] = []
    received: list[bytes] = []
    subscribed = threading.Event()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="via-proxy", protocol=mqtt.MQTTv311
    )
    client.reconnect_delay_set(1, 2)

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        connects.append(time.monotonic())
        c.subscribe(topic, 1)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, m: received.append(bytes(m.payload))
    client.on_disconnect = lambda _c, _u, _f, rc, _p: disconnects.append(str(rc))
    client.connect("127.0.0.1", proxy.port, keepalive=1)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        client.publish(topic, b"before", qos=1).wait_for_publish(10)
        wait_until(lambda: received == [b"before"], 10, "a message through the proxy")

        proxy.blackhole()
        started = time.monotonic()
        wait_until(lambda: disconnects, 15, "paho to notice the blackhole")
        # Keepalive, not a closed socket: the proxy held both sockets open and silent.
        assert disconnects[0] == "Keep alive timeout", disconnects
        assert time.monotonic() - started < 10

        subscribed.clear()
        proxy.pass_()
        wait_until(lambda: len(connects) >= 2 and subscribed.is_set(), 30, "paho to reconnect")
        client.publish(topic, b"after", qos=1).wait_for_publish(10)
        wait_until(lambda: b"after" in received, 10, "a message after the blackhole")
    finally:
        client.disconnect()
        client.loop_stop()


# --------------------------------------------------------------------------- latency


def test_latency_delays_both_directions(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    proxy = proxies(targets(echo=True).port)
    proxy.latency(150)
    with connect(proxy.port) as sock:
        started = time.monotonic()
        roundtrip(sock, b"slow")
        assert time.monotonic() - started >= 0.3  # 150 ms up, 150 ms down


def test_jitter_never_reorders_bytes(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    sink = targets()
    proxy = proxies(sink.port)
    latency_ms, jitter_ms = 100, 90
    proxy.latency(latency_ms, jitter_ms)
    chunks = [f"<{i:04d}>".encode() * 50 for i in range(60)]
    sent_at: list[float] = []
    total = 0

    def read_by_proxy() -> bool:
        stats = proxy.stats()
        return bool(stats["bytes_up"] + stats["queued_up"] >= total)

    with connect(proxy.port) as sock:
        for chunk in chunks:
            sent_at.append(time.monotonic())
            sock.sendall(chunk)
            total += len(chunk)
            # Each chunk is its own read in the proxy, so each gets its own jittered delay.
            wait_until(read_by_proxy, 10, "the proxy to read the chunk", interval=0.001)
        conn = wait_until(lambda: sink.conns[0] if sink.conns else None, 10, "the target")
        assert conn is not None
        wait_until(lambda: len(conn.received) == total, 15, "every chunk at the target")
    assert bytes(conn.received) == b"".join(chunks)  # in order, nothing lost
    end = 0
    for chunk, sent in zip(chunks, sent_at, strict=True):
        end += len(chunk)
        arrived = next(t for t, size in conn.arrivals if size >= end)
        assert arrived - sent >= (latency_ms - jitter_ms) / 1000 - 0.002


# --------------------------------------------------------------------------- bandwidth


def test_bandwidth_limits_each_direction(
    proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    size, bps = 100_000, 50_000
    down = random.Random(3).randbytes(size)
    sink = targets(greeting=down)
    proxy = proxies(sink.port)
    proxy.bandwidth(bps)
    up = random.Random(4).randbytes(size)
    with connect(proxy.port) as sock:
        started = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(up,))
        sender.start()
        assert recv_exactly(sock, size) == down
        conn = sink.conns[0]
        wait_until(lambda: len(conn.received) == size, 30, "the upload at the target")
        elapsed = time.monotonic() - started
        sender.join(10)
    assert bytes(conn.received) == up
    assert elapsed >= 0.8 * size / bps, elapsed  # a lower bound only
    assert proxy.stats()["bandwidth_bps"] == bps


def test_a_stalled_target_backpressures_with_bounded_memory_and_loses_nothing(
    loop_thread: LoopThread, proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> None:
    held = targets(hold=True)
    limit = 256 * 1024
    proxy = proxies(held.port, max_buffer=limit)
    payload = random.Random(5).randbytes(48 * 1024 * 1024)  # more than every socket buffer
    with connect(proxy.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        stats = wait_until(
            lambda: (s := proxy.stats())["queued_up"] >= limit and s,
            20,
            "the proxy's buffer to fill",
        )
        assert stats["queued_up"] <= limit + CHUNK
        assert sender.is_alive()  # sendall blocks: the proxy stopped reading
        loop_thread.call(held.release)
        conn = held.conns[0]
        wait_until(lambda: len(conn.received) == len(payload), 60, "every byte at the target")
        sender.join(10)
    assert bytes(conn.received) == payload


# --------------------------------------------------------------------------- control channel


@pytest.fixture
def controlled(
    loop_thread: LoopThread, proxies: Callable[..., FaultProxy], targets: Callable[..., Target]
) -> Iterator[tuple[FaultProxy, ProxyControl]]:
    proxy = proxies(targets(echo=True).port)
    server = ControlServer(proxy)
    loop_thread.run(server.start())
    yield proxy, ProxyControl(server.port, timeout=5)
    loop_thread.run(server.stop())


def test_control_channel_applies_each_command(controlled: tuple[FaultProxy, ProxyControl]) -> None:
    proxy, ctl = controlled
    reply = ctl.latency(100, 20)
    assert reply["ok"] and reply["mode"] == "pass"
    assert (reply["latency_ms"], reply["jitter_ms"]) == (100, 20)
    assert ctl.bandwidth(20_000)["bandwidth_bps"] == 20_000
    assert ctl.send({"cmd": "bandwidth", "bps": 0})["bandwidth_bps"] is None
    assert ctl.bandwidth(None)["bandwidth_bps"] is None
    assert ctl.blackhole()["mode"] == "blackhole"
    assert ctl.cut()["mode"] == "cut"
    reply = ctl.pass_()
    assert (reply["mode"], reply["latency_ms"], reply["bandwidth_bps"]) == ("pass", 0, None)
    reply = ctl.drop_for(30)
    assert reply["mode"] == "cut" and reply["drop_remaining_s"] > 0
    assert (
        ctl.set(LinkState(Mode.PASS, latency_ms=5, bandwidth_bps=1000))["drop_remaining_s"] is None
    )
    assert proxy.state == LinkState(Mode.PASS, latency_ms=5, bandwidth_bps=1000)
    stats = ctl.stats()
    for key in ("open", "accepted", "bytes_up", "bytes_down", "mode", "cuts", "name", "target"):
        assert key in stats
    assert stats["cuts"] == 2


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"cmd": "frobnicate"}, "unknown command 'frobnicate'"),
        ({"verb": "cut"}, "unknown command None"),
        ({"cmd": "latency"}, "latency: missing ms"),
        ({"cmd": "latency", "ms": -1}, "latency: ms must be a finite number >= 0"),
        ({"cmd": "latency", "ms": "200"}, "latency: ms must be"),
        ({"cmd": "latency", "ms": True}, "latency: ms must be"),
        ({"cmd": "latency", "ms": 10, "jitter": 5}, "latency: unexpected jitter"),
        ({"cmd": "bandwidth", "bps": 1.5}, "bandwidth: bps must be an integer"),
        ({"cmd": "bandwidth", "bps": -3}, "bandwidth: bps must be an integer"),
        ({"cmd": "drop", "seconds": 0}, "drop: seconds must be a finite number > 0"),
        ({"cmd": "cut", "now": True}, "cut: unexpected now"),
        ({"cmd": "set", "mode": "sideways"}, "set: mode must be one of pass, cut, blackhole"),
        ({"cmd": "set", "mode": "pass", "latency_ms": 1e400}, "set: latency_ms must be"),
    ],
)
def test_control_channel_refuses_bad_commands_and_changes_nothing(
    controlled: tuple[FaultProxy, ProxyControl], request_: dict[str, Any], error: str
) -> None:
    proxy, ctl = controlled
    reply = ctl.send(request_)
    assert reply["ok"] is False
    assert error in reply["error"], reply["error"]
    assert proxy.state == LinkState(Mode.PASS)
    with pytest.raises(ProxyCommandError) as raised:
        ctl.command(request_)
    assert raised.value.reply == reply


def test_control_channel_speaks_lines_and_survives_garbage(
    controlled: tuple[FaultProxy, ProxyControl],
) -> None:
    _proxy, ctl = controlled
    with socket.create_connection(("127.0.0.1", ctl.port), timeout=5) as sock:
        sock.sendall(b'not json\n[1, 2]\n\n{"cmd": "cut"}\n{"cmd": "stats"}')
        sock.shutdown(socket.SHUT_WR)  # the last request has no newline: still answered
        lines = sock.makefile("rb").read().splitlines()
    replies = [json.loads(line) for line in lines]
    assert [r["ok"] for r in replies] == [False, False, True, True]
    assert "not a JSON line" in replies[0]["error"]
    assert "JSON object" in replies[1]["error"]
    assert replies[3]["mode"] == "cut"


def test_control_client_raises_when_the_proxy_does_not_answer() -> None:
    with pytest.raises(ProxyNoAnswer) as refused:
        ProxyControl(free_port(), timeout=2).cut()
    assert isinstance(refused.value, ProxyError)
    with socket.socket() as mute:  # listens, never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        with pytest.raises(ProxyNoAnswer, match="did not answer 'stats'"):
            ProxyControl(mute.getsockname()[1], timeout=0.3).stats()


def test_proxy_ctl_words() -> None:
    assert command_from_words(["latency", "200", "50"]) == {
        "cmd": "latency",
        "ms": 200,
        "jitter_ms": 50,
    }
    assert command_from_words(["latency", "12.5"]) == {"cmd": "latency", "ms": 12.5}
    assert command_from_words(["bandwidth", "0"]) == {"cmd": "bandwidth", "bps": 0}
    assert command_from_words(["drop", "5"]) == {"cmd": "drop", "seconds": 5}
    assert command_from_words(["cut"]) == {"cmd": "cut"}
    assert command_from_words(['{"cmd": "set",', '"mode": "cut"}']) == {"cmd": "set", "mode": "cut"}
    for bad, message in (
        ([], "no command"),
        (["nope"], "unknown command 'nope'"),
        (["latency"], "usage: latency MS JITTER_MS"),
        (["latency", "fast"], "ms must be a number"),
        (["cut", "1"], "usage: cut"),
        (["[1]"], "unknown command"),
    ):
        with pytest.raises(CommandInvalid, match=message):
            command_from_words(bad)


# --------------------------------------------------------------------------- the CLI process


def _ready(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def test_cli_proxy_process_is_commanded_and_stops_on_sigterm(
    tmp_path: Path,
    targets: Callable[..., Target],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    echo = targets(echo=True)
    ready_file = tmp_path / "proxy.ready"
    log = tmp_path / "proxy.log"
    proc = start_cli(
        "proxy", "--listen", "0", "--target", f"127.0.0.1:{echo.port}", "--control", "0",
        "--name", "cli-link", "--ready-file", str(ready_file), log=log,
    )  # fmt: skip
    processes.append(proc)
    info = wait_until(lambda: _ready(ready_file) or proc.poll() is not None, 30, "the ready file")
    assert isinstance(info, dict), log.read_text()
    assert info["pid"] == proc.pid and info["listen_port"] > 0 and info["control_port"] > 0
    ctl = ProxyControl(info["control_port"])
    with connect(info["listen_port"]) as sock:
        roundtrip(sock)
        assert ctl.cut()["cut_connections"] == 1
        assert_closed(sock)

    out = run_cli("proxy-ctl", "--control", str(info["control_port"]), "latency", "20", "5")
    reply = json.loads(out.stdout)
    assert reply["ok"] and reply["mode"] == "cut" and reply["latency_ms"] == 20
    bad = run_cli("proxy-ctl", "--control", str(info["control_port"]), "frobnicate", check=False)
    assert bad.returncode != 0 and "unknown command 'frobnicate'" in bad.stderr
    refused = run_cli(
        "proxy-ctl",
        "--control",
        str(info["control_port"]),
        '{"cmd": "latency", "ms": -1}',
        check=False,
    )
    assert refused.returncode == 1 and "latency: ms must be" in refused.stderr
    assert ctl.pass_()["mode"] == "pass"
    with connect(info["listen_port"]) as sock:
        roundtrip(sock, b"back")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, log.read_text()
    assert not ready_file.exists()
    text = log.read_text()
    assert "proxy cli-link: cut (1 connection closed)" in text
    assert "proxy cli-link: stopped" in text
    with pytest.raises(ProxyNoAnswer):
        ctl.stats()
