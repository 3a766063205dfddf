"""The results service and the static feed, against baselines measured in the same run.

    scripts/bench results [--seconds 5] [--clients 1000,5000] [--synthetic-devices 10000]

1. Unit JSON: requests/s of ``GET /api/units/{root}`` from ``cloud serve`` against the same bytes
   as a static file (``--feed``, the same server, the same client): target >= 0.5.
2. SSE fan-out: N clients subscribed to ``/events``; one commit of a group of batches (the
   cloud's own ledger); the time from the commit's return to the first and to the last client
   receiving the change; the server's CPU seconds and RSS. Target: 5,000 clients within 1 s.
3. ``cloud publish``: the time to read and write one version for the sample election and for a
   synthetic one of ``--synthetic-devices`` devices (every unit's file plus the exports).

The client is raw asyncio (keep-alive HTTP/1.1, ``--concurrency`` connections) in this process;
the server is a real ``edgetally cloud serve`` child on the same two cores. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._json import write_json
from benchmarks.cloud import fleet_envelopes
from cloud.db import make_engine, upgrade
from cloud.ledger.ledger import Inbound, Ledger
from cloud.serve.feed import publish
from cloud.serve.snapshot import Poller
from devices.election_file import load_election
from devices.synth import synth_election
from protocol import Election, provision

SAMPLE = Path(__file__).resolve().parents[1] / "elections" / "sample.yaml"
TIMEOUT_S = 60.0
GROUP = 500
console = Console(width=max(Console().width, 130))


def _inbound(envelopes: Sequence[tuple[str, bytes]]) -> list[Inbound]:
    now = datetime.now(UTC)
    return [Inbound(topic, payload, now) for topic, payload in envelopes]


def _prepared(work: Path, election: Election, name: str) -> tuple[str, Ledger, Path]:
    keys = work / f"{name}-keys"
    registry = provision(election, keys)
    url = f"sqlite:///{work / f'{name}.db'}"
    engine = make_engine(url)
    upgrade(engine)
    ledger = Ledger(engine, registry, max_payload_bytes=64 * 1024)
    ledger.prepare()
    return url, ledger, keys


def _serve(url: str, feed: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = work / "serve.ready"
    cmd = [sys.executable, "-m", "edgetally", "--log-level", "WARNING", "cloud", "serve", "--db", url, "--port", "0",
           "--feed", str(feed), "--poll", "0.1", "--ready-file", str(ready)]  # fmt: skip
    with open(work / "serve.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"cloud serve did not start: see {work / 'serve.log'}")
        time.sleep(0.05)
    return proc, int(json.loads(ready.read_text())["port"])


async def _get_loop(port: int, path: str, until: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    done = 0
    try:
        while time.monotonic() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"{path}: {head.splitlines()[0].decode()}")
            done += 1
    finally:
        writer.close()
    return done


async def _rate(port: int, path: str, seconds: float, concurrency: int) -> float:
    until = time.monotonic() + seconds
    counts = await asyncio.gather(*(_get_loop(port, path, until) for _ in range(concurrency)))
    return sum(counts) / seconds


def _cpu_rss(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident KiB of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
    return cpu, rss


async def _subscriber(port: int, subscribed: asyncio.Event, ready: list[int], got: list[float], total: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: version"):
                ready.append(1)
                if len(ready) == total:
                    subscribed.set()
            elif line.startswith(b"event: change"):
                got.append(time.monotonic())
                return
    finally:
        writer.close()


async def _fan_out(port: int, clients: int, ledger: Ledger, group: list[Inbound], pid: int) -> dict[str, float]:
    subscribed, ready, got = asyncio.Event(), [], []
    tasks = []
    for start in range(0, clients, 250):  # connect in waves: the listen backlog is finite
        tasks += [asyncio.create_task(_subscriber(port, subscribed, ready, got, clients)) for _ in range(min(250, clients - start))]
        await asyncio.sleep(0.05)
    await asyncio.wait_for(subscribed.wait(), TIMEOUT_S)
    cpu0, _ = _cpu_rss(pid)
    await asyncio.to_thread(ledger.record, group)
    committed = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)
    cpu1, rss = _cpu_rss(pid)
    got.sort()
    return {"first": got[0] - committed, "p50": got[len(got) // 2] - committed, "last": got[-1] - committed,
            "received": len(got), "cpu": cpu1 - cpu0, "rss_mib": rss / 1024}  # fmt: skip


def _publish_time(url: str, work: Path, runs: int = 3) -> tuple[float, int]:
    """Seconds to read the figures and write one whole version (median of ``runs``), and files."""
    engine = make_engine(url, create=False, writer=False)
    times, files = [], 0
    for n in range(runs):
        started = time.perf_counter()
        poller = Poller(engine)
        poller.poll()
        assert poller.current is not None
        out = work / f"feed-{n}"
        publish(poller.current, out)
        times.append(time.perf_counter() - started)
        files = sum(1 for _ in out.rglob("*") if _.is_file())
    engine.dispose()
    return sorted(times)[len(times) // 2], files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="each request-rate run")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections of the rate runs")
    parser.add_argument("--clients", default="1000,5000", help="SSE subscriber counts")
    parser.add_argument("--synthetic-devices", type=int, default=10_000, help="0: skip the synthetic publish")
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    console.print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; open files {soft} -> {hard}")
    with tempfile.TemporaryDirectory(prefix="edgetally-bench-results-") as tmp:
        work = Path(tmp)
        election = load_election(SAMPLE)
        url, ledger, keys = _prepared(work, election, "sample")
        envelopes = _inbound(fleet_envelopes(election, keys, len(election.devices) * 4, seed=3))
        clients = [int(c) for c in args.clients.split(",") if c]
        cut = len(envelopes) - 50 * (len(clients) + 1)
        for start in range(0, cut, GROUP):
            ledger.record(envelopes[start : min(cut, start + GROUP)])
        feed = work / "feed"
        engine = make_engine(url, create=False, writer=False)
        poller = Poller(engine)
        poller.poll()
        assert poller.current is not None
        publish(poller.current, feed)
        version, root = poller.current.version, poller.current.root
        engine.dispose()
        proc, port = _serve(url, feed, work)
        try:
            api = asyncio.run(_rate(port, f"/api/units/{root}", args.seconds, args.concurrency))
            static = asyncio.run(_rate(port, f"/feed/v/{version}/units/{root}.json", args.seconds, args.concurrency))
            fans = []
            for i, n in enumerate(clients):
                group = envelopes[cut + 50 * i : cut + 50 * (i + 1)]
                fans.append((n, asyncio.run(_fan_out(port, n, ledger, group, proc.pid))))
        finally:
            proc.terminate()
            proc.wait(TIMEOUT_S)
        sample_publish = _publish_time(url, work)
        synthetic = None
        if args.synthetic_devices:
            synth = synth_election(args.synthetic_devices, max(1, args.synthetic_devices // 5), seed=1)
            with console.status(f"provisioning {args.synthetic_devices:,} devices for the synthetic publish"):
                s_url, s_ledger, s_keys = _prepared(work, synth, "synthetic")
                batches = _inbound(fleet_envelopes(synth, s_keys, len(synth.devices), seed=3))
                for start in range(0, len(batches), GROUP):  # groups the size the worker commits
                    s_ledger.record(batches[start : start + GROUP])
            synthetic = (synth, _publish_time(s_url, work / "synth"))

    table = Table(title="results service: cloud serve on this machine, client in the same run")
    for col in ("measurement", "value", "baseline", "ratio", "target"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    table.add_row(f"GET /api/units/{root} (JSON, ETag)", f"{api:,.0f} req/s", f"{static:,.0f} req/s static file", f"{api / static:.2f}", ">= 0.5")
    for n, fan in fans:
        table.add_row(
            f"SSE: {n:,} clients, commit -> last client", f"{fan['last'] * 1000:,.0f} ms",
            f"first {fan['first'] * 1000:,.0f} ms, p50 {fan['p50'] * 1000:,.0f} ms", f"{int(fan['received']):,}/{n:,} got it",
            "<= 1,000 ms" if n >= 5000 else "",
        )  # fmt: skip
        table.add_row(f"SSE: {n:,} clients, server CPU / RSS", f"{fan['cpu']:.2f} s CPU", f"{fan['rss_mib']:,.0f} MiB RSS", "", "")
    seconds, files = sample_publish
    table.add_row(f"cloud publish, sample ({len(election.units)} units)", f"{seconds * 1000:,.0f} ms/version", f"{files} files", "", "")
    if synthetic is not None:
        synth, (seconds, files) = synthetic
        table.add_row(f"cloud publish, {len(synth.devices):,} devices ({len(synth.units):,} units)", f"{seconds * 1000:,.0f} ms/version", f"{files:,} files", "", "")
    console.print(table)
    ratios = {"results.api_static_ratio": api / static}
    ratios |= {f"results.sse_{n}_received_ratio": fan["received"] / n for n, fan in fans}
    write_json(args.json, ratios, {"api_per_s": api, "static_per_s": static, "sse_last_s": {n: fan["last"] for n, fan in fans}})


if __name__ == "__main__":
    main()
