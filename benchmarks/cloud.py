"""Cloud ingest benchmark: a pre-filled cloud broker drained into the ledger, against the raw
paho-mqtt QoS 1 rate of one subscriber draining the same pre-filled queue, in one run.

    .venv/bin/python -m benchmarks.cloud [--messages 20000] [--backends sqlite,postgresql]
                                         [--workers 1,3] [--shapes envelopes,bundles] [--repeat 1]

For each database and worker count:
  1. a fresh Mosquitto and a fresh database (SQLite file; or a PostgreSQL database created on
     the server at 127.0.0.1:5432 and dropped afterwards, --pg-admin-url to change);
  2. the workers (`edgetally cloud run`; with several, `--share bench --session persistent`) start
     once, so that their persistent sessions and subscriptions exist, and stop (SIGTERM);
  3. N signed envelopes are published while no worker runs: the broker queues them in the
     workers' sessions (round robin across a shared group's members);
  4. the workers start again and drain their sessions: verify, ledger, tallies, receipts, ack.
     The figure is N / (moment the ledger holds all N - earliest ``received_at`` in the ledger),
     so process start-up is not counted; peak RSS of each worker is read from /proc.
The baseline: one paho subscriber (persistent session, QoS 1, automatic acks, counting only)
draining N envelopes pre-filled the same way, first arrival to last.

Shapes (--shapes): "envelopes" pre-fills one MQTT message per signed batch, as devices
publishing straight to the cloud broker would; "bundles" pre-fills what the cloud broker carries
behind an EdgeTally gateway: the same envelopes framed 64 to a message (protocol/bundle.py,
the gateway's default --bundle-max), on the gateway's bundle topic. Rates are batches/s either
way; the baselines are MQTT messages/s of one raw subscriber on envelope-sized messages.

Rules: "ingest" runs the workers with a rules file holding only the ledger rule (verify, ledger,
tallies, windows, receipts: no anomaly rule); "with default rules" drains the same envelopes
again, on a fresh broker and database, with the rules shipped with EdgeTally (no --rules).
The pre-filled drain is a flood (~220 batches per device in a few seconds), so with one worker
the default rate-spike rule raises one alert per device (91): their writes are in the figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from benchmarks._json import write_json
from benchmarks._mqtt import (
    Envelope,
    Sink,
    peak_rss_kib,
    publish_all,
    raw_ceiling,
    register_session,
)
from cloud import models
from cloud.db import make_engine
from devices.election_file import load_election, sample_election_path
from devices.generator import iter_batches
from edgetally.brokers import BrokerProcess, mosquitto_binary
from edgetally.pgdb import ThrowawayDatabase
from edgetally.processes import Component
from protocol import Election, batch_topic, gateway_bundle_topic, load_signing_key, provision, seal
from protocol import bundle as bundles

console = Console(width=max(Console().width, 120))
LEDGER_ONLY_RULES = """rules:
  - name: ledger
    sql: SELECT seq FROM 'edgetally/v1/+/+/batch'
    actions: [{ledger: {}}]
"""
PG_ADMIN_URL = os.environ.get("EDGETALLY_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


BUNDLE_MAX = 64  # the gateway's default --bundle-max


@dataclass
class Run:
    backend: str
    workers: int
    shape: str = "envelopes"
    rate: float = 0.0
    raw_rate: float = 0.0
    live_rate: float = 0.0
    rules_rate: float = 0.0  # the same drain with the default rules
    rss_mib: list[float] = field(default_factory=list)


def fleet_envelopes(election: Election, keys: Path, total: int, seed: int) -> list[Envelope]:
    """``total`` signed envelopes as a fleet sends them: each device's batches in seq order,
    the devices interleaved one batch each in turn."""
    per_device = -(-total // len(election.devices))
    streams = []
    for device in election.devices:
        key = load_signing_key(keys, device)
        topic = batch_topic(election.id, device)
        streams.append([(topic, seal(b, key).to_bytes()) for b in iter_batches(election, seed, device, per_device)])
    return [stream[i] for i in range(per_device) for stream in streams][:total]


def as_bundles(envelopes: Sequence[Envelope]) -> list[Envelope]:
    """The envelopes in order, ``BUNDLE_MAX`` to a message, as a gateway forwards them."""
    topic = gateway_bundle_topic("bench-gw")
    return [
        (topic, bundles.encode(envelopes[i : i + BUNDLE_MAX]))
        for i in range(0, len(envelopes), BUNDLE_MAX)
    ]


def raw_drain(work: Path, envelopes: Sequence[Envelope]) -> float:
    """Messages/s of one counting paho subscriber draining a pre-filled persistent session."""
    broker = BrokerProcess(work, name="raw-broker")
    broker.start()
    try:
        register_session(broker.port, "raw-sink")
        publish_all(broker.port, envelopes)
        sink = Sink(broker.port, len(envelopes), client_id="raw-sink")
        sink.start()
        received, first, last = sink.result(600)
    finally:
        broker.stop()
    if received < len(envelopes):
        raise RuntimeError(f"the raw subscriber got {received} of {len(envelopes)}")
    return len(envelopes) / (last - first)


class Database:
    """A fresh database for one run: a SQLite file, or a PostgreSQL database dropped at the end."""

    def __init__(self, backend: str, work: Path, admin_url: str) -> None:
        self.backend = backend
        self._pg = ThrowawayDatabase(admin_url, "edgetally_bench") if backend != "sqlite" else None
        self.url = self._pg.url if self._pg is not None else f"sqlite:///{work / 'cloud.db'}"

    def __enter__(self) -> Database:
        if self._pg is not None:
            self._pg.create()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.drop()

    def progress(self) -> tuple[int, float | None]:
        """Ledger rows, and the earliest received_at as a POSIX time (None while empty)."""
        engine = make_engine(self.url, create=False, writer=False)
        try:
            with engine.connect() as conn:
                count, first = conn.execute(
                    select(func.count(), func.min(models.ledger.c.received_at))
                ).one()
        finally:
            engine.dispose()
        return int(count), None if first is None else first.timestamp()


def cloud_drain(
    work: Path, keys: Path, messages: Sequence[Envelope], batches: int, backend: str, workers: int,
    admin_url: str, rules: Path | None = None,
) -> Run:  # fmt: skip
    """Pre-fill ``messages`` (envelopes or bundles holding ``batches`` batches), then drain."""
    run = Run(backend, workers)
    work.mkdir(parents=True)
    broker = BrokerProcess(work / "broker", name="cloud-broker")
    broker.start()
    try:
        with Database(backend, work, admin_url) as db:
            comps = []
            for i in range(1, workers + 1):
                args = ["--log-level", "WARNING", "cloud", "run", "--broker", broker.url, "--db", db.url,
                        "--keys", str(keys), "--id", f"bench-w{i}"]  # fmt: skip
                if workers > 1:
                    args += ["--share", "bench", "--session", "persistent"]
                if rules is not None:
                    args += ["--rules", str(rules)]
                comps.append(Component(f"worker{i}", args, work))
            # 1-2: sessions and schema exist; nothing runs while the broker queues
            for comp in comps:
                comp.start()
            for comp in comps:
                comp.wait_ready(60)
            for comp in comps:
                if comp.stop() != 0:
                    raise RuntimeError(f"{comp.name} did not stop cleanly: {comp.tail()}")
            # 3: pre-fill
            publish_all(broker.port, messages)
            # 4: drain
            for comp in comps:
                comp.start()
            deadline = time.monotonic() + 900
            count, first = 0, None
            while count < batches:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {count} of {batches} in the ledger")
                for comp in comps:
                    if not comp.running:
                        raise RuntimeError(f"{comp.name} exited: {comp.tail()}")
                time.sleep(0.05)
                count, first = db.progress()
            done = time.time()
            assert first is not None
            run.rate = batches / (done - first)
            run.rss_mib = [peak_rss_kib(c.pid) / 1024 for c in comps if c.pid is not None]
            for comp in comps:
                comp.stop()
    finally:
        broker.stop()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="envelopes pre-filled per run")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--workers", default="1,3", help="comma-separated worker counts")
    parser.add_argument("--shapes", default="envelopes,bundles", help="comma-separated: envelopes, bundles")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration (medians shown)")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="PostgreSQL URL to create databases with")
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    if mosquitto_binary() is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not shapes or set(shapes) - {"envelopes", "bundles"}:
        raise SystemExit(f"--shapes takes envelopes and/or bundles, not {args.shapes!r}")
    version = subprocess.run([mosquitto_binary() or "mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {version},"
        f" load average {os.getloadavg()[0]:.2f} at start"
    )
    work = Path(tempfile.mkdtemp(prefix="edgetally-cloudbench-"))
    runs: list[Run] = []
    drains: list[float] = []
    lives: list[float] = []
    try:
        election = load_election(sample_election_path())
        keys = work / "keys"
        provision(election, keys)
        with console.status("signing envelopes"):
            envelopes = fleet_envelopes(election, keys, args.messages, seed=3)
        size = sum(len(p) for _, p in envelopes) // len(envelopes)
        ledger_only = work / "ledger-only.yaml"
        ledger_only.write_text(LEDGER_ONLY_RULES)
        for r in range(args.repeat):
            with console.status(f"run {r + 1}: raw subscriber baselines"):
                drains.append(raw_drain(work / f"raw-drain-{r}", envelopes))
                lives.append(raw_ceiling(work / f"raw-live-{r}", envelopes, "live"))
            console.print(f"  run {r + 1} raw subscriber: drain {drains[-1]:,.0f}/s, live {lives[-1]:,.0f}/s")
            for shape in shapes:
                messages = envelopes if shape == "envelopes" else as_bundles(envelopes)
                for backend in backends:
                    for workers in counts:
                        what = f"run {r + 1}: {shape}, {backend}, {workers} worker(s)"
                        with console.status(f"{what}, {len(envelopes):,} batches"):
                            run = cloud_drain(work / f"cloud-{r}-{shape}-{backend}-{workers}", keys, messages,
                                              len(envelopes), backend, workers, args.pg_admin_url, ledger_only)  # fmt: skip
                        with console.status(f"{what}, default rules"):
                            ruled = cloud_drain(work / f"rules-{r}-{shape}-{backend}-{workers}", keys, messages,
                                                len(envelopes), backend, workers, args.pg_admin_url)  # fmt: skip
                        run.shape = shape
                        run.rules_rate = ruled.rate
                        run.rss_mib += ruled.rss_mib
                        run.raw_rate = drains[-1]
                        run.live_rate = lives[-1]
                        runs.append(run)
                        console.print(
                            f"  run {r + 1} {shape:9} {backend:10} {workers} worker(s): {run.rate:,.0f}/s"
                            f" = {run.rate / run.raw_rate:.2f} x drain, {run.rate / run.live_rate:.2f} x live;"
                            f" default rules {run.rules_rate:,.0f}/s = {run.rules_rate / run.rate:.2f} x ingest;"
                            f" peak RSS {', '.join(f'{m:.0f}' for m in run.rss_mib)} MiB"
                        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"Cloud ingest ({args.messages:,} pre-filled {size} B envelopes, medians of {args.repeat})")
    for column in ("shape", "database", "workers", "ingest batches/s", "/ raw drain", "/ raw live",
                   "with default rules, batches/s", "peak RSS per worker, MiB"):  # fmt: skip
        table.add_column(column, justify="right")
    for shape, backend, workers in ((s, b, w) for s in shapes for b in backends for w in counts):
            same = [r for r in runs if (r.shape, r.backend, r.workers) == (shape, backend, workers)]
            rate = statistics.median(r.rate for r in same)
            to_drain = statistics.median(r.rate / r.raw_rate for r in same)
            to_live = statistics.median(r.rate / r.live_rate for r in same)
            rss = max(m for r in same for m in r.rss_mib)
            ruled = statistics.median(r.rules_rate for r in same)
            table.add_row(shape, backend, str(workers), f"{rate:,.0f}", f"{to_drain:.2f}", f"{to_live:.2f}",
                          f"{ruled:,.0f}", f"{rss:.0f}")  # fmt: skip
    table.add_row("", "raw paho drain", "1 subscriber", f"{statistics.median(drains):,.0f}", "1.00", "", "", "")
    table.add_row("", "raw paho live", "1 pub + 1 sub", f"{statistics.median(lives):,.0f}", "", "1.00", "", "")
    console.print(table)
    ratios: dict[str, float | None] = {}
    for r in runs:  # one per configuration unless --repeat; the last run's ratio then
        tag = f"{r.workers}worker" + ("" if r.shape == "envelopes" else f"_{r.shape}") + ("" if r.backend == "sqlite" else f"_{r.backend}")
        ratios[f"cloud.ingest_ratio_{tag}"] = r.rate / r.raw_rate
        ratios[f"cloud.ingest_live_ratio_{tag}"] = r.rate / r.live_rate
        ratios[f"cloud.rules_ingest_ratio_{tag}"] = r.rules_rate / r.rate
    write_json(args.json, ratios, {"raw_drain_per_s": drains, "raw_live_per_s": lives})
    console.print(
        "raw drain: one paho subscriber (QoS 1, automatic acks, counting only) draining the same"
        " pre-filled queue; raw live: one QoS 1 publisher (1000 in flight) -> Mosquitto -> that"
        " subscriber, publisher running."
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
