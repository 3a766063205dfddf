"""Many elections at once: 100 concurrent synthetic elections through one gateway and one cloud
worker, against one election of as many devices and batches in the same run.

    .venv/bin/python -m benchmarks.elections [--elections 100] [--devices 20] [--batches 5]
                                             [--repeat 2] [--quick] [--json FILE]

Each round, for each shape, on fresh brokers, a fresh gateway buffer and a fresh SQLite database:
  1. the edge and cloud Mosquitto brokers, `cloud run` with every election's ``--keys`` and
     `gateway run` carrying every election (``--keys`` repeated) start and report ready;
  2. one paho publisher sends every signed batch to the edge broker (QoS 1, 1,000 in flight),
     the elections' devices interleaved one batch each in turn, so all elections run at once;
  3. the figure is batches / (the moment the ledger holds all of them - the first publish):
     the gateway's verify, buffer and forward, the cloud's verify, ledger, tallies and receipts.
  4. every election's totals are read back (`cloud results --election`) and compared with what
     its devices were generated to send: one difference and the benchmark fails.
Shapes: "many" is ``--elections`` elections of ``--devices`` devices (the synthetic elections share
their device ids: p00001-d01, ...; each election's are its own devices); "single" is one election
of elections x devices devices. Both send devices x batches x elections batches. Rounds
alternate the shapes, so that a drift of the machine's load falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._json import write_json
from benchmarks._mqtt import Envelope, publish_all
from benchmarks.cloud import Database, fleet_envelopes
from cloud.db import make_engine
from cloud.results.results import load_results
from devices.generator import expected_totals
from devices.keygen import provision_many
from devices.synth import synth_election
from edgetally.brokers import BrokerProcess, mosquitto_binary
from edgetally.processes import Component
from protocol import Election

console = Console(width=max(Console().width, 120))
SEED = 5  # ballots
TIMEOUT_S = 600


@dataclass(frozen=True)
class Shape:
    name: str
    elections: tuple[tuple[Election, Path], ...]
    envelopes: tuple[Envelope, ...]
    batches_per_device: int


def make_shape(name: str, work: Path, count: int, devices: int, batches: int) -> Shape:
    made = []
    streams: list[list[Envelope]] = []
    for i in range(count):
        election = synth_election(devices, max(1, devices // 10), 1000 + i if name == "many" else 1)
        keys = work / f"{name}-keys-{i}"
        provision_many(election, keys)
        made.append((election, keys))
        streams.append(fleet_envelopes(election, keys, devices * batches, seed=SEED))
    # Interleaved: one batch of each election in turn, each election's own order kept.
    mixed = [stream[i] for i in range(devices * batches) for stream in streams]
    return Shape(name, tuple(made), tuple(mixed), batches)


def run_shape(work: Path, shape: Shape) -> float:
    """Batches/s from the first publish until the ledger holds all; totals checked."""
    work.mkdir(parents=True)
    edge = BrokerProcess(work / "edge", name="edge-broker")
    cloud_broker = BrokerProcess(work / "cloud", name="cloud-broker")
    edge.start()
    cloud_broker.start()
    keys = [arg for _, k in shape.elections for arg in ("--keys", str(k))]
    try:
        with Database("sqlite", work, "") as db:
            worker = Component("worker", ["--log-level", "WARNING", "cloud", "run", "--broker", cloud_broker.url, "--db", db.url, *keys], work)
            gateway = Component(
                "gateway",
                ["--log-level", "WARNING", "gateway", "run", "--edge", edge.url, "--cloud", cloud_broker.url,
                 "--buffer", str(work / "gateway.db"), *keys],
                work,
            )  # fmt: skip
            worker.start()
            worker.wait_ready(120)
            gateway.start()
            gateway.wait_ready(120)
            try:
                started = publish_all(edge.port, shape.envelopes)
                total = len(shape.envelopes)
                deadline = time.monotonic() + TIMEOUT_S
                count = 0
                while count < total:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{shape.name}: only {count} of {total} in the ledger after {TIMEOUT_S}s")
                    for comp in (worker, gateway):
                        if not comp.running:
                            raise RuntimeError(f"{comp.name} exited: {comp.tail()}")
                    time.sleep(0.05)
                    count, _ = db.progress()
                rate = total / (time.time() - started)
            finally:
                gateway.stop()
                worker.stop()
            check_totals(db.url, shape)
    finally:
        edge.stop()
        cloud_broker.stop()
    return rate


def check_totals(db_url: str, shape: Shape) -> None:
    engine = make_engine(db_url, create=False, writer=False)
    try:
        for election, _ in shape.elections:
            shown = load_results(engine, election.id).to_mapping()
            expected = expected_totals(election, SEED, shape.batches_per_device).to_mapping()
            if {k: shown[k] for k in expected} != expected:
                raise RuntimeError(f"{shape.name}: election {election.id}'s totals are not what its devices sent")
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elections", type=int, default=100)
    parser.add_argument("--devices", type=int, default=20, help="devices per election")
    parser.add_argument("--batches", type=int, default=5, help="batches per device")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (each runs both shapes; medians shown)")
    parser.add_argument("--quick", action="store_true", help="20 elections x 10 devices x 5 batches, one round")
    parser.add_argument("--json", type=Path, help="also write the ratio to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.elections, args.devices, args.repeat = 20, 10, 1
    if mosquitto_binary() is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" load average {os.getloadavg()[0]:.2f} at start"
    )
    work = Path(tempfile.mkdtemp(prefix="edgetally-electionsbench-"))
    with console.status("provisioning and signing"):
        shapes = [
            make_shape("many", work, args.elections, args.devices, args.batches),
            make_shape("single", work, 1, args.elections * args.devices, args.batches),
        ]
    rates: dict[str, list[float]] = {s.name: [] for s in shapes}
    for r in range(args.repeat):
        for shape in shapes if r % 2 == 0 else reversed(shapes):
            with console.status(f"round {r + 1}: {shape.name}"):
                rates[shape.name].append(run_shape(work / f"{shape.name}-{r}", shape))
            console.print(f"  round {r + 1} {shape.name}: {rates[shape.name][-1]:,.0f} batches/s, totals exact")
    many, single = (statistics.median(rates[n]) for n in ("many", "single"))
    table = Table(title=f"{len(shapes[0].envelopes):,} batches through one gateway and one cloud worker (SQLite), median of {args.repeat}")
    for column in ("shape", "elections", "devices", "batches/s", "vs single"):
        table.add_column(column, justify="left" if column == "shape" else "right")
    table.add_row("single election", "1", f"{args.elections * args.devices:,}", f"{single:,.0f}", "1.00")
    table.add_row("many elections", str(args.elections), f"{args.devices} each", f"{many:,.0f}", f"{many / single:.2f}")
    console.print(table)
    console.print(f"every election's totals exact in every round; target: many >= 0.9 x single ({many / single:.2f})")
    if args.json is not None:
        write_json(args.json, {"elections.many_vs_single_ratio": many / single}, {"many_rate": many, "single_rate": single})


if __name__ == "__main__":
    main()
