"""Cloud broker benchmark: gateway -> cloud broker -> cloud workers on Mosquitto (one node), NATS
JetStream (one node, R1) and a 3-node NATS JetStream cluster (R3), in one run on one machine.

    scripts/bench cluster [--forward 5000] [--backlog 20000] [--loss 5000] [--workers 1,2]
                          [--brokers mosquitto,nats-r1,nats-r3] [--json FILE]
    scripts/bench cluster --backlog 100000       # the issue's backlog

Everything is locked down (TLS, client certificates, ACLs / NATS permissions) and a real
process: edge Mosquitto, `edgetally gateway run`, the cloud broker, `edgetally cloud run`
workers on one SQLite ledger. One publisher (paho, QoS 1, 1,000 in flight) stands in for the
devices on the edge broker; the gateway verifies, buffers and forwards in bundles of 64. One
ledger and one buffer per broker, each phase sending batches the earlier ones did not, so every
count below is exact (checked: a wrong count stops the benchmark):

  1. forwarding + live ingest, per worker count: the workers run while the gateway forwards.
     Forwarding = batches / (first publish -> the gateway's buffer has them all delivered, i.e.
     acknowledged by the cloud broker); ingest = batches / (earliest ``received_at`` in the
     ledger -> the moment the ledger holds them all, polled every 50 ms). On Mosquitto the workers share a subscription (--share); on NATS they pull
     from JetStream's durable consumers.
  2. backlog: no worker runs (Mosquitto: the worker's persistent session; NATS: the durable
     consumers keep every message); the gateway forwards the backlog into the cloud broker
     (a second forwarding figure), then one worker starts: time to all in the ledger.
  3. node loss: the same with a smaller backlog, then SIGKILL of Mosquitto, or of the NATS node
     leading ``$MQTT_msgs``; restart it; start the worker. Resume = restart -> first commit;
     lost = batches the gateway had handed over (and deleted from its queue at PUBACK) that never
     reach the ledger: devices would have to resend them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks._cluster import KINDS, CloudBroker, Edge, Ledger, watch
from benchmarks._mqtt import Envelope, bench_tls, bench_wire, peak_rss_kib, publish_all
from benchmarks.cloud import fleet_envelopes
from devices.election_file import load_election, sample_election_path
from edgetally.brokers import mosquitto_binary
from edgetally.nats import nats_binary
from edgetally.processes import Component
from edgetally.wire import Wire
from protocol import Registry, provision

console = Console(width=max(Console().width, 120))
CLOUDS = ("cloud1", "cloud2")
TIMEOUT = 600.0  # any one wait


@dataclass
class Result:
    kind: str
    forward_live: dict[int, float] = field(default_factory=dict)  # by workers: batches/s acked
    ingest: dict[int, float] = field(default_factory=dict)  # by workers: batches/s committed
    forward_queue: float = 0.0  # forwarding into the broker, no worker running
    drain_s: float = 0.0  # worker start -> backlog all in the ledger
    drain_rate: float = 0.0  # backlog, first arrival -> all committed
    killed: str = ""
    resume_s: float | None = None  # restart -> first commit
    lost: int = 0
    loss_queued: int = 0
    worker_rss_mib: float = 0.0


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)  # fmt: skip


class Run:
    """One broker kind's deployment and the phases on it."""

    def __init__(self, kind: str, work: Path, wire: Wire, registry: Registry, keys: Path) -> None:
        self.kind, self.work, self.wire, self.keys = kind, work, wire, keys
        self.cloud = CloudBroker(kind, work, wire, registry)
        self.edge = Edge(work, wire, keys, self.cloud.urls)
        self.ledger = Ledger(work / "cloud.db")
        self.expected = 0  # batches handed to the gateway so far
        self.result = Result(kind)

    def worker(self, i: int, *, share: bool) -> Component:
        args = ["--log-level", "WARNING", "cloud", "run", *self.cloud.worker_args(share=share), "--db", self.ledger.url,
                "--keys", str(self.keys), "--pki", str(self.wire.pki), "--id", CLOUDS[i]]  # fmt: skip
        return Component(f"{self.kind}-worker{i + 1}", args, self.work)

    def start_workers(self, count: int, *, share: bool) -> list[Component]:
        workers = [self.worker(i, share=share) for i in range(count)]
        workers[0].start()
        workers[0].wait_ready(60)  # it migrates the schema; the others find it done
        for w in workers[1:]:
            w.start()
        for w in workers[1:]:
            w.wait_ready(60)
        return workers

    def stop_workers(self, workers: list[Component]) -> None:
        for w in workers:
            if w.pid is not None:
                self.result.worker_rss_mib = max(self.result.worker_rss_mib, peak_rss_kib(w.pid) / 1024)
            if w.stop() != 0:
                raise RuntimeError(f"{w.name} did not stop cleanly: {w.tail()}")

    def forward(self, progress: Progress, batch: list[Envelope], what: str) -> float:
        """Publish ``batch`` on the edge broker; batches/s until the cloud broker acked them all."""
        before = self.edge.delivered()
        self.expected += len(batch)
        started = publish_all(self.edge.broker.port, batch, tls=bench_tls(self.wire, "bench-pub"))
        _, done = watch(progress, f"{KINDS[self.kind]}: {what}, acked by the cloud broker",
                        lambda: self.edge.delivered() - before, len(batch), TIMEOUT, alive=self._gateway_alive)  # fmt: skip
        return len(batch) / (done - started)

    def _gateway_alive(self) -> None:
        if not self.edge.gateway.running:
            raise RuntimeError(f"the gateway exited: {self.edge.gateway.tail()}")

    def committed(self, progress: Progress, label: str, *, quiet: float | None = None) -> tuple[int, float]:
        return watch(progress, f"{KINDS[self.kind]}: {label}", self.ledger.count, self.expected, TIMEOUT, quiet=quiet)

    def check(self, what: str) -> None:
        count = self.ledger.count()
        if count != self.expected:
            raise RuntimeError(f"{KINDS[self.kind]} {what}: {count:,} ledger rows, expected {self.expected:,}")

    def live(self, progress: Progress, batch: list[Envelope], workers: int) -> None:
        running = self.start_workers(workers, share=True)
        mark = self.ledger.last_rowid()
        self.result.forward_live[workers] = self.forward(progress, batch, f"forwarding {len(batch):,}, {workers} worker(s) live")
        _, done = self.committed(progress, f"{workers} worker(s) committing")
        count, first, _ = self.ledger.span(mark)
        self.check(f"live ingest with {workers} worker(s)")
        assert first is not None and count == len(batch)
        self.result.ingest[workers] = count / max(done - first, 1e-3)
        self.stop_workers(running)

    def backlog(self, progress: Progress, batch: list[Envelope]) -> None:
        if self.cloud.mosquitto is not None:  # the persistent session that queues while it is down
            self.stop_workers(self.start_workers(1, share=False))
        self.result.forward_queue = self.forward(progress, batch, f"backlog of {len(batch):,}, no worker")
        mark = self.ledger.last_rowid()
        started = time.time()
        running = self.start_workers(1, share=False)
        _, done = self.committed(progress, f"draining {len(batch):,}")
        self.check("backlog drain")
        count, first, _ = self.ledger.span(mark)
        assert first is not None
        self.result.drain_s = done - started
        self.result.drain_rate = count / max(done - first, 1e-3)
        self.stop_workers(running)

    def node_loss(self, progress: Progress, batch: list[Envelope]) -> None:
        self.forward(progress, batch, f"backlog of {len(batch):,} before the node loss")
        self.result.loss_queued = len(batch)
        mark = self.ledger.last_rowid()
        self.result.killed = self.cloud.kill_leader()
        restarted = time.time()
        self.cloud.restart(self.result.killed)
        running = self.start_workers(1, share=False)
        count, _ = self.committed(progress, "after SIGKILL and restart", quiet=15.0)
        _, first, _ = self.ledger.span(mark)
        self.result.resume_s = None if first is None else first - restarted
        self.result.lost = self.expected - count
        if count > self.expected:
            raise RuntimeError(f"{KINDS[self.kind]}: {count:,} ledger rows, more than the {self.expected:,} sent")
        self.stop_workers(running)


def run_kind(kind: str, work: Path, wire: Wire, registry: Registry, keys: Path,
             slices: dict[str, list[list[Envelope]]], workers: list[int]) -> Result:  # fmt: skip
    run = Run(kind, work / kind, wire, registry, keys)
    run.cloud.start()
    try:
        run.edge.start()
        with progress_bar() as progress:
            for n, batch in zip(workers, slices["live"], strict=True):
                run.live(progress, batch, n)
            run.backlog(progress, slices["backlog"][0])
            if slices["loss"][0]:  # --loss 0 (scripts/bench all --quick): no node-loss phase
                run.node_loss(progress, slices["loss"][0])
        return run.result
    finally:
        run.edge.stop()
        run.cloud.stop()


def _version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).strip().splitlines()[0]


def machine_line() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return (f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()},"
            f" {_version([mosquitto_binary() or 'mosquitto', '-h'])}, {_version([nats_binary() or 'nats-server', '--version'])},"
            f" load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward", type=int, default=5_000, help="batches per live forwarding + ingest run")
    parser.add_argument("--backlog", type=int, default=20_000, help="batches queued in the cloud broker, then drained")
    parser.add_argument("--loss", type=int, default=5_000, help="batches queued when the node is SIGKILLed (0: no node loss)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts of the live runs (1 or 2)")
    parser.add_argument("--brokers", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    if set(kinds) - set(KINDS) or not set(workers) <= {1, 2}:
        raise SystemExit(f"--brokers takes {', '.join(KINDS)}; --workers 1 and/or 2")
    if mosquitto_binary() is None or nats_binary() is None:
        raise SystemExit("the benchmark needs mosquitto and nats-server (apt-get install mosquitto nats-server)")
    console.print(machine_line())
    work = Path(tempfile.mkdtemp(prefix="edgetally-clusterbench-"))
    results: dict[str, Result] = {}
    started = time.monotonic()
    try:
        election = load_election(sample_election_path())
        keys = work / "keys"
        registry = provision(election, keys)
        wire = bench_wire(work, keys, registry, clouds=CLOUDS)
        sizes = [("live", args.forward)] * len(workers) + [("backlog", args.backlog), ("loss", args.loss)]
        with console.status(f"signing {sum(n for _, n in sizes):,} envelopes"):
            envelopes = fleet_envelopes(election, keys, sum(n for _, n in sizes), seed=4)
        slices: dict[str, list[list[Envelope]]] = {"live": [], "backlog": [], "loss": []}
        at = 0
        for name, n in sizes:  # each device's seqs in order, phase after phase
            slices[name].append(envelopes[at : at + n])
            at += n
        for kind in kinds:
            results[kind] = r = run_kind(kind, work, wire, registry, keys, slices, workers)
            console.print(f"  {KINDS[kind]}: done at {time.monotonic() - started:.0f} s; {asdict(r)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args, workers, time.monotonic() - started)


def report(results: dict[str, Result], args: argparse.Namespace, workers: list[int], wall: float) -> None:
    base = results.get("mosquitto")
    rows: list[tuple[str, str, dict[str, float | None], bool]] = []  # label, key, by kind, higher is better
    for n in workers:
        rows.append((f"forwarding, {n} worker(s) live, batches/s", f"forward_{n}w",
                     {k: r.forward_live[n] for k, r in results.items()}, True))  # fmt: skip
    rows.append(("forwarding into a queue, no worker, batches/s", "forward_queue",
                 {k: r.forward_queue for k, r in results.items()}, True))  # fmt: skip
    for n in workers:
        rows.append((f"cloud ingest, {n} worker(s) live, batches/s", f"ingest_{n}w",
                     {k: r.ingest[n] for k, r in results.items()}, True))  # fmt: skip
    rows.append(("backlog drain, worker start -> all in ledger, s", "drain_s",
                 {k: r.drain_s for k, r in results.items()}, False))  # fmt: skip
    rows.append(("backlog drain, batches/s from the first commit", "drain_rate", {k: r.drain_rate for k, r in results.items()}, True))
    rows.append(("node loss: restart -> first commit, s", "resume_s", {k: r.resume_s for k, r in results.items()}, False))
    rows.append((f"node loss: batches lost of {args.loss:,} (devices resend)", "lost",
                 {k: float(r.lost) for k, r in results.items()}, False))  # fmt: skip
    table = Table(title=f"gateway -> cloud broker -> cloud workers, SQLite ledger, locked TLS (forward {args.forward:,}"
                        f" per run, backlog {args.backlog:,}, node loss {args.loss:,}; whole run {wall:.0f} s)")
    table.add_column("measurement")
    for kind in results:
        table.add_column(KINDS[kind], justify="right")
        if kind != "mosquitto" and base is not None:
            table.add_column("/ Mosquitto", justify="right")
    figures: dict[str, float | None] = {}
    for label, key, by_kind, _higher in rows:
        cells = []
        for kind, value in by_kind.items():
            cells.append("-" if value is None else f"{value:,.0f}" if value >= 100 or key == "lost" else f"{value:.1f}")
            figures[f"cluster.{key}_{kind.replace('-', '_')}"] = value
            if kind != "mosquitto" and base is not None:
                ref = by_kind["mosquitto"]
                ratio = value / ref if value is not None and ref and key != "lost" else None
                cells.append("-" if ratio is None else f"{ratio:.2f}")
                figures[f"cluster.{key}_ratio_{kind.replace('-', '_')}"] = ratio
        table.add_row(label, *cells)
    table.add_row("node killed", *[c for k, r in results.items() for c in ([r.killed] + ([""] if k != "mosquitto" and base else []))])
    console.print(table)
    if base is not None:
        for kind in results:
            if kind != "mosquitto":
                tag = kind.replace("-", "_")
                said = [f"{key} {ratio:.2f}" for _l, key, _b, _h in rows
                        if (ratio := figures.get(f"cluster.{key}_ratio_{tag}")) is not None]  # fmt: skip
                console.print(f"{KINDS[kind]} / Mosquitto (times longer for *_s): " + ", ".join(said))
    console.print(
        "On three machines: R3 here pays raft replication between 3 nats-server processes sharing the same 2 cores"
        " (and one disk) with the gateway, the workers and the edge broker; on three machines each node has its own"
        " cores and disk, and a store costs a network round trip to a quorum instead (one follower ack: ~0.1-1 ms"
        " in one data centre). SIGKILL here is a process loss: the R1 store is on disk, so it survives it too;"
        " losing the machine (or its disk) is what only R3 survives. Mosquitto keeps its queues in memory and writes"
        " them to its persistence file every 5 s (autosave_interval): what it lost depends on when the last save fell."
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"figures written to {args.json}")
    lost_on_nats = {k: r.lost for k, r in results.items() if k != "mosquitto" and r.lost}
    if lost_on_nats:
        raise SystemExit(f"NATS lost batches on a node loss: {lost_on_nats}")


if __name__ == "__main__":
    main()
