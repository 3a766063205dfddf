"""Fault proxy benchmark: what a proxied link costs, against the same link direct, in one run.

    scripts/bench proxy [--messages 20000] [--rounds 5] [--connections 2000]

The proxy is a real `python -m edgetally proxy` process (its own CPU, as in a scenario), steered
through its control channel (edgetally.proxy.control.ProxyControl).

  (a) throughput: one raw paho QoS 1 publisher (1000 in flight) -> Mosquitto -> a counting
      subscriber (its own process), signed envelopes, from the first publish to the last
      arrival. Direct (the baseline) and with the publisher connecting through the proxy in
      pass mode, alternated --rounds times on the same broker; the medians are compared. The
      proxy's CPU (from /proc) during the pass rounds is printed per message.
  (b) the same through the proxy with latency 5 ms ± 0 (each direction, order kept): what a
      windowed QoS 1 publisher loses to a slower link; and with --small-window in flight
      (--small-window-messages envelopes), direct and through the 5 ms link, against the bound
      of window / round trip.
  (c) the same with the proxy's bandwidth limited to --bandwidth bytes/s (default 1,000,000)
      for --bandwidth-messages envelopes: messages/s and the bytes/s achieved, payload and on
      the wire (the proxy's own byte count), which must stay at or under the limit.
  (d) connections: --connections idle MQTT 3.1.1 clients (devices/connection.py, --concurrency
      connecting at a time) opened directly (baseline) and through a fresh proxy: time to
      connect all, the proxy's RSS growth per connection, then a cut of all of them: time until
      the proxy reports open == 0 and until every client has seen its connection die. Then
      all of them connecting at once (a reconnect storm), directly and through the proxy, with
      the kernel's listen-queue overflows counted meanwhile (/proc/net/netstat, host-wide).
Every wait is bounded; the benchmark stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._json import write_json
from benchmarks._mqtt import (
    Envelope,
    Sink,
    proc_status_kib,
    publish_all,
    signed_envelopes,
    wait_for,
)
from devices._exceptions import ConnectionFailed
from devices.connection import ConnectOptions, KeepaliveWheel, MqttConnection, connect
from devices.election_file import load_election, sample_election_path
from edgetally.brokers import BrokerProcess, mosquitto_binary
from edgetally.processes import Component
from edgetally.proxy.control import ProxyControl
from protocol import provision

console = Console(width=max(Console().width, 120))

LATENCY_MS = 5.0
PUBLISH_WINDOW = 1000  # publish_all's in-flight window



def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ProxyProcess:
    """`python -m edgetally proxy` towards ``target_port``, with its control channel."""

    def __init__(self, work: Path, name: str, target_port: int) -> None:
        self.component = Component(
            name,
            [
                "--log-level", "WARNING", "proxy",
                "--listen", "127.0.0.1:0",
                "--target", f"127.0.0.1:{target_port}",
                "--control", "0",
                "--name", name,
            ],
            work,
        )  # fmt: skip
        self.port = 0
        self.control = ProxyControl(0)

    def start(self) -> ProxyProcess:
        self.component.start()
        self.component.wait_ready(30)
        assert self.component.ready_file is not None
        ready = json.loads(self.component.ready_file.read_text())
        self.port = int(ready["listen_port"])
        self.control = ProxyControl(int(ready["control_port"]))
        return self

    @property
    def pid(self) -> int:
        pid = self.component.pid
        assert pid is not None
        return pid

    def stop(self) -> tuple[int | None, float]:
        """Stop it (SIGTERM); its exit code and how long it took."""
        started = time.monotonic()
        code = self.component.stop(timeout=15)
        return code, time.monotonic() - started


@dataclass
class Rate:
    rate: float  # envelopes/s, first publish to last arrival
    seconds: float
    bytes_up: int = 0  # bytes the proxy forwarded towards the broker (0 direct)
    proxy_cpu_s: float = 0.0


def run_rate(
    broker: BrokerProcess,
    envelopes: Sequence[Envelope],
    label: str,
    proxy: ProxyProcess | None,
    timeout: float,
    window: int = PUBLISH_WINDOW,
) -> Rate:
    """One publisher (direct, or through ``proxy``) -> ``broker`` -> one counting subscriber."""
    sink = Sink(broker.port, len(envelopes), client_id=f"{label}-sink")
    sink.start()
    before = proxy.control.stats() if proxy is not None else {}
    cpu_before = cpu_seconds(proxy.pid) if proxy is not None else 0.0
    started = publish_all(proxy.port if proxy is not None else broker.port, envelopes, window)
    received, _first, last = sink.result(timeout)
    cpu_after = cpu_seconds(proxy.pid) if proxy is not None else 0.0
    after = proxy.control.stats() if proxy is not None else {}
    if received < len(envelopes):
        raise RuntimeError(f"{label}: the subscriber got {received} of {len(envelopes)}")
    seconds = last - started
    return Rate(
        len(envelopes) / seconds,
        seconds,
        int(after.get("bytes_up", 0)) - int(before.get("bytes_up", 0)),
        cpu_after - cpu_before,
    )


# ---------------------------------------------------------------------------- connections


@dataclass
class Held:
    conns: list[MqttConnection] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def connect_all(
    port: int, count: int, concurrency: int, prefix: str, wheel: KeepaliveWheel
) -> Held:
    """``count`` idle MQTT clients (clean session, keepalive 120 s), ``concurrency`` at a time."""
    held = Held()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        options = ConnectOptions(
            "127.0.0.1", port, f"{prefix}-{i}", keepalive=120, clean_session=True, timeout=15
        )
        async with gate:
            try:
                held.conns.append(await connect(options, wheel))
            except ConnectionFailed as exc:
                held.failures.append(str(exc))

    started = time.monotonic()
    async with asyncio.timeout(180), asyncio.TaskGroup() as group:
        for i in range(count):
            group.create_task(one(i))
    held.seconds = time.monotonic() - started
    return held


async def close_all(held: Held, timeout: float = 30) -> None:
    """DISCONNECT every connection still up, bounded."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(c.disconnect() for c in held.conns), return_exceptions=True)
    for conn in held.conns:
        conn.abort()


@dataclass
class Connections:
    count: int
    direct_s: float = 0.0
    proxied_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    warm_rss_kib: int = 0  # the proxy's RSS after a warm-up, every connection closed
    held_rss_kib: int = 0  # with every connection open
    after_cut_rss_kib: int = 0
    open_reported: int = 0
    cut_reply_s: float = 0.0  # the cut command answered (its reply carries the stats)
    cut_to_open_zero_s: float = 0.0
    cut_to_clients_lost_s: float = 0.0  # the last client saw its connection die
    first_lost_s: float = 0.0
    next_stats_s: float = 0.0  # the proxy's next stats answer, once every client saw the cut
    clients_lost: int = 0
    cut_reply: dict[str, object] = field(default_factory=dict)
    stop_code: int | None = None
    stop_s: float = 0.0
    storm_direct_s: float = 0.0  # every client connecting at once
    storm_direct_overflows: int = 0  # the kernel's listen-queue overflows meanwhile
    storm_proxied_s: float = 0.0
    storm_proxied_overflows: int = 0


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (this network
    namespace, every socket: read it around a step that runs alone)."""
    try:
        text = Path("/proc/net/netstat").read_text()
        lines = [line.split() for line in text.splitlines() if line.startswith("TcpExt:")]
        return int(lines[1][lines[0].index("ListenOverflows")])
    except (OSError, ValueError, IndexError):
        return 0


async def _connections(
    broker: BrokerProcess, work: Path, count: int, concurrency: int
) -> Connections:
    out = Connections(count)
    wheel = KeepaliveWheel()
    try:
        direct = await connect_all(broker.port, count, concurrency, "direct", wheel)
        out.direct_s = direct.seconds
        out.failures += [f"direct: {f}" for f in direct.failures]
        await close_all(direct)
        await asyncio.sleep(1)  # let Mosquitto forget them
        overflows = listen_overflows()
        storm = await connect_all(broker.port, count, count, "direct-storm", wheel)
        out.storm_direct_s, out.storm_direct_overflows = (
            storm.seconds,
            listen_overflows() - overflows,
        )
        out.failures += [f"direct, all at once: {f}" for f in storm.failures]
        await close_all(storm)
        await asyncio.sleep(1)

        proxy = ProxyProcess(work, "proxy-conns", broker.port).start()
        try:
            # warm up (first connections allocate the proxy's code paths), then the baseline
            warm = await connect_all(proxy.port, min(50, count), concurrency, "warm", wheel)
            await close_all(warm)
            await asyncio.to_thread(
                wait_for, lambda: proxy.control.stats()["open"] == 0, 30, "warm-up closed", 0.005
            )
            out.warm_rss_kib = proc_status_kib(proxy.pid, "VmRSS")

            proxied = await connect_all(proxy.port, count, concurrency, "proxied", wheel)
            out.proxied_s = proxied.seconds
            out.failures += [f"proxied: {f}" for f in proxied.failures]
            await asyncio.sleep(0.5)
            out.held_rss_kib = proc_status_kib(proxy.pid, "VmRSS")
            out.open_reported = int(proxy.control.stats()["open"])

            # cut: until the proxy reports none open, and until each client saw its reset
            lost_at: list[float] = []
            for conn in proxied.conns:
                conn.lost.add_done_callback(lambda _f: lost_at.append(time.monotonic()))
            cut_at = time.monotonic()
            out.cut_reply = await asyncio.to_thread(proxy.control.cut)
            out.cut_reply_s = time.monotonic() - cut_at

            def none_open() -> bool:
                return int(proxy.control.stats()["open"]) == 0

            if out.cut_reply.get("open") != 0:
                await asyncio.to_thread(wait_for, none_open, 30, "the proxy to report open == 0", 0.005)
            out.cut_to_open_zero_s = time.monotonic() - cut_at
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await asyncio.gather(
                        *(asyncio.shield(c.lost) for c in proxied.conns), return_exceptions=True
                    )
            out.clients_lost = len(lost_at)
            if lost_at:
                out.first_lost_s = min(lost_at) - cut_at
                out.cut_to_clients_lost_s = max(lost_at) - cut_at
            started = time.monotonic()
            await asyncio.to_thread(proxy.control.stats)
            out.next_stats_s = time.monotonic() - started
            await asyncio.sleep(0.5)
            out.after_cut_rss_kib = proc_status_kib(proxy.pid, "VmRSS")
            for conn in proxied.conns:
                conn.abort()

            # all at once (a reconnect storm after a cut): the proxy's accept queue
            await asyncio.to_thread(proxy.control.pass_)
            await asyncio.sleep(1)
            overflows = listen_overflows()
            storm = await connect_all(proxy.port, count, count, "proxied-storm", wheel)
            out.storm_proxied_s = storm.seconds
            out.storm_proxied_overflows = listen_overflows() - overflows
            out.failures += [f"proxied, all at once: {f}" for f in storm.failures]
            await close_all(storm)
        finally:
            out.stop_code, out.stop_s = proxy.stop()
    finally:
        wheel.close()
    return out


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="signed envelopes per run")
    parser.add_argument(
        "--rounds", type=int, default=5, help="direct and pass runs, alternated; medians compared"
    )
    parser.add_argument(
        "--small-window", type=int, default=10, help="in flight in the small-window runs"
    )
    parser.add_argument(
        "--small-window-messages", type=int, default=2_000, help="envelopes of those runs"
    )
    parser.add_argument(
        "--bandwidth", type=int, default=1_000_000, help="bytes/s of the limited run"
    )
    parser.add_argument(
        "--bandwidth-messages", type=int, default=5_000, help="envelopes of the limited run"
    )
    parser.add_argument("--connections", type=int, default=2_000, help="idle MQTT clients")
    parser.add_argument("--concurrency", type=int, default=100, help="clients connecting at a time")
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    version = subprocess.run([binary, "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {version}"
    console.print(f"machine: {machine}")
    work = Path(tempfile.mkdtemp(prefix="edgetally-bench-proxy-"))
    broker = BrokerProcess(work / "broker", name="broker")
    proxy: ProxyProcess | None = None
    timeout = 120.0
    try:
        election = load_election(sample_election_path())
        keys = work / "keys"
        provision(election, keys)
        with console.status(f"signing {args.messages:,} envelopes"):
            envelopes = signed_envelopes(election, keys, args.messages, seed=1)
        size = sum(len(p) for _, p in envelopes) // len(envelopes)
        limited = envelopes[: args.bandwidth_messages]
        broker.start()
        proxy = ProxyProcess(work, "proxy", broker.port).start()

        direct: list[Rate] = []
        passed: list[Rate] = []
        for n in range(1, args.rounds + 1):
            with console.status(f"round {n}: direct"):
                direct.append(run_rate(broker, envelopes, f"direct{n}", None, timeout))
            with console.status(f"round {n}: through the proxy, pass"):
                passed.append(run_rate(broker, envelopes, f"pass{n}", proxy, timeout))
            console.print(
                f"round {n}: direct {direct[-1].rate:,.0f} msg/s, through the proxy"
                f" {passed[-1].rate:,.0f} msg/s"
            )
        with console.status(f"through the proxy, latency {LATENCY_MS:g} ms ± 0"):
            proxy.control.latency(LATENCY_MS, 0)
            latency = run_rate(broker, envelopes, "latency", proxy, timeout)
            proxy.control.pass_()
        console.print(f"latency {LATENCY_MS:g} ms: {latency.rate:,.0f} msg/s")
        few = envelopes[: args.small_window_messages]
        with console.status(
            f"{args.small_window} in flight: direct, then latency {LATENCY_MS:g} ms"
        ):
            small_direct = run_rate(broker, few, "small-direct", None, timeout, args.small_window)
            proxy.control.latency(LATENCY_MS, 0)
            small_latency = run_rate(
                broker, few, "small-latency", proxy, timeout, args.small_window
            )
            proxy.control.pass_()
        bound = args.small_window / (2 * LATENCY_MS / 1000)
        console.print(
            f"{args.small_window} in flight: direct {small_direct.rate:,.0f} msg/s, latency"
            f" {LATENCY_MS:g} ms {small_latency.rate:,.0f} msg/s (bound {bound:,.0f})"
        )
        with console.status(f"through the proxy, bandwidth {args.bandwidth:,} B/s"):
            proxy.control.bandwidth(args.bandwidth)
            bw = run_rate(broker, limited, "bandwidth", proxy, timeout)
            proxy.control.pass_()
        console.print(
            f"bandwidth {args.bandwidth:,} B/s: {bw.rate:,.0f} msg/s,"
            f" {bw.bytes_up / bw.seconds:,.0f} B/s on the wire"
        )
        proxy_stop = proxy.stop()
        proxy = None

        with console.status(f"{args.connections:,} idle connections, direct and proxied"):
            conns = asyncio.run(_connections(broker, work, args.connections, args.concurrency))
    finally:
        if proxy is not None:
            proxy.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    d = statistics.median(r.rate for r in direct)
    p = statistics.median(r.rate for r in passed)
    cpu = sum(r.proxy_cpu_s for r in passed)
    busy = sum(r.seconds for r in passed)
    per_msg_us = cpu / (len(envelopes) * len(passed)) * 1e6
    wire_bps = bw.bytes_up / bw.seconds
    payload_bps = bw.rate * size

    table = Table(
        title=f"Fault proxy benchmark ({size} B signed envelopes, QoS 1)",
        caption=f"machine: {machine}",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("baseline", justify="left")
    base = "direct, same run"
    table.add_row(
        f"(a) direct: publisher -> Mosquitto -> subscriber, {len(envelopes):,} msgs"
        f" (median of {len(direct)})",
        f"{d:,.0f} msg/s",
        "1.00",
        "(baseline)",
    )
    table.add_row("    publisher through the proxy, pass", f"{p:,.0f} msg/s", f"{p / d:.2f}", base)
    table.add_row(
        "    proxy CPU during the pass runs",
        f"{per_msg_us:.0f} µs/msg ({cpu / busy:.0%} of a core)",
        "",
        "",
    )
    table.add_row(
        f"(b) through the proxy, latency {LATENCY_MS:g} ms ± 0 each way, {PUBLISH_WINDOW} in flight",
        f"{latency.rate:,.0f} msg/s",
        f"{latency.rate / d:.2f}",
        base,
    )
    table.add_row(
        f"    {args.small_window} in flight, {len(few):,} msgs: direct (baseline)",
        f"{small_direct.rate:,.0f} msg/s",
        "1.00",
        "(baseline)",
    )
    table.add_row(
        f"    {args.small_window} in flight, through the proxy, latency {LATENCY_MS:g} ms",
        f"{small_latency.rate:,.0f} msg/s",
        f"{small_latency.rate / small_direct.rate:.2f}",
        f"{args.small_window} in flight direct",
    )
    table.add_row(
        f"    bound: {args.small_window} in flight / {2 * LATENCY_MS:g} ms round trip",
        f"{bound:,.0f} msg/s",
        f"{small_latency.rate / bound:.2f}",
        "the bound",
    )
    table.add_row(
        f"(c) through the proxy, bandwidth {args.bandwidth:,} B/s, {len(limited):,} msgs",
        f"{bw.rate:,.0f} msg/s",
        f"{bw.rate / d:.2f}",
        base,
    )
    table.add_row(
        "    bytes/s achieved: on the wire up (payload only)",
        f"{wire_bps:,.0f} ({payload_bps:,.0f})",
        f"{wire_bps / args.bandwidth:.2f}",
        "the limit",
    )
    k = conns.count
    table.add_row(
        f"(d) connect {k:,} idle MQTT clients directly ({args.concurrency} at a time)",
        f"{conns.direct_s:.2f} s ({k / conns.direct_s:,.0f}/s)",
        "1.00",
        "(baseline)",
    )
    table.add_row(
        f"    connect {k:,} through the proxy",
        f"{conns.proxied_s:.2f} s ({k / conns.proxied_s:,.0f}/s)",
        f"{conns.proxied_s / conns.direct_s:.2f} (time)",
        base,
    )
    table.add_row(
        f"    connect {k:,} all at once, directly (listen-queue overflows)",
        f"{conns.storm_direct_s:.2f} s ({conns.storm_direct_overflows:,})",
        "1.00",
        "(baseline)",
    )
    table.add_row(
        f"    connect {k:,} all at once, through the proxy (listen-queue overflows)",
        f"{conns.storm_proxied_s:.2f} s ({conns.storm_proxied_overflows:,})",
        f"{conns.storm_proxied_s / conns.storm_direct_s:.2f} (time)",
        "all at once direct",
    )
    grown = conns.held_rss_kib - conns.warm_rss_kib
    table.add_row(
        "    proxy RSS per connection",
        f"{grown / k:.1f} KiB ({conns.warm_rss_kib / 1024:.1f} -> {conns.held_rss_kib / 1024:.1f} MiB)",
        "",
        "",
    )
    table.add_row(
        f"    cut all {conns.open_reported:,}: until the proxy reports open == 0",
        f"{conns.cut_to_open_zero_s * 1000:.0f} ms",
        "",
        "(the cut's own reply)" if conns.cut_reply.get("open") == 0 else "(polled)",
    )
    table.add_row(
        f"    cut: until every client saw its connection reset ({conns.clients_lost:,})",
        f"{conns.cut_to_clients_lost_s * 1000:.0f} ms (first {conns.first_lost_s * 1000:.0f} ms)",
        "",
        "",
    )
    table.add_row(
        "    then the proxy's next stats answer",
        f"{conns.next_stats_s * 1000:.0f} ms",
        "",
        "",
    )
    table.add_row(
        "    proxy RSS after the cut", f"{conns.after_cut_rss_kib / 1024:.1f} MiB", "", ""
    )
    console.print(table)
    write_json(args.json, {
        "proxy.pass_direct_ratio": p / d, "proxy.latency_direct_ratio": latency.rate / d,
        "proxy.small_window_bound_ratio": small_latency.rate / bound, "proxy.bandwidth_limit_ratio": wire_bps / args.bandwidth,
        "proxy.connect_time_direct_ratio": conns.proxied_s / conns.direct_s,
    }, {"direct_per_s": d, "pass_per_s": p, "proxy_cpu_us_per_msg": per_msg_us})  # fmt: skip
    problems = []
    if conns.failures:
        problems.append(f"{len(conns.failures)} connect failures, first: {conns.failures[0]}")
    if conns.open_reported != k:
        problems.append(f"the proxy reported {conns.open_reported} open, expected {k}")
    if conns.clients_lost != k - sum(1 for f in conns.failures if f.startswith("proxied")):
        problems.append(f"only {conns.clients_lost} clients saw the cut")
    if small_latency.rate > bound * 1.05:
        problems.append(f"{small_latency.rate:,.0f} msg/s is over the latency bound {bound:,.0f}")
    if wire_bps > args.bandwidth * 1.05:
        problems.append(f"the limited run went {wire_bps:,.0f} B/s, over {args.bandwidth:,}")
    for label, (code, secs) in (
        ("throughput", proxy_stop),
        ("connections", (conns.stop_code, conns.stop_s)),
    ):
        if code != 0 or secs > 5:
            problems.append(f"the {label} proxy stopped with exit code {code} after {secs:.1f} s")
    for problem in problems:
        console.print(f"[red]{problem}[/]")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
