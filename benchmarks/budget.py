"""A CPU budget, measured: µs of CPU each stage of one batch's path costs on this machine,
their sum, and the ceiling it implies for 2 cores, batches/s = 2 cores / (sum of CPU per batch).
That ceiling is the physical limit the end-to-end figures are judged against.

    .venv/bin/python -m benchmarks.budget [--batches 6000] [--repeat 3] [--quick] [--no-tls] [--json FILE]

How each row is measured (chosen so that nothing is counted twice):
  * in-process rows (benchmarks/_budget_stages.py): the real functions (protocol.seal,
    gateway.verify.classify, cloud.ledger.ledger.Ledger.check, protocol.signed.open_receipt +
    Tabulator.apply_receipt) on the real signed envelopes, ``time.thread_time`` around a few
    thousand calls, medians of rounds;
  * process rows (benchmarks/_budget_run.py): the real processes (edge and cloud Mosquitto,
    ``edgetally gateway run``, ``edgetally cloud run``) run together through N batches, as the
    pipeline runs them (TLS + ACLs, receipts on, default rules), each one's utime + stime read
    from /proc before and after, / N; medians of ``--repeat`` runs. The devices' MQTT side is a
    paho publisher (this process's CPU while publishing) and a paho receipt subscriber on the
    edge broker (its process's CPU), each labelled;
  * the gateway and cloud worker rows are whole processes: their parse + verify is inside them
    and shown as an "of which" row, not added again. Device receipt handling is µs per receipt
    times the receipts per batch the run delivered (the cloud coalesces them per device).
The ceiling uses 2 cores (--cores) whatever ``os.cpu_count()`` says; both are printed.
Ratios (for ``scripts/bench all``): each stage's share of the sum, each verify's share of its
process, and the run's own rate (first publish to last receipt) / the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._budget_run import ProcessRun, run_processes
from benchmarks._budget_stages import InProcess, measure_in_process
from benchmarks.cloud import fleet_envelopes
from devices.election_file import load_election, sample_election_path
from edgetally.brokers import mosquitto_binary
from protocol import provision

console = Console(width=max(Console().width, 120))
CORES = 2


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    us: float
    counted: bool = True  # False: an "of which" row, inside a counted one


@dataclass(frozen=True)
class Budget:
    rows: tuple[Row, ...]
    cores: int
    receipts_per_batch: float
    run_rates: tuple[float, ...]  # batches/s of each process run, first publish to last receipt

    @property
    def total_us(self) -> float:
        return sum(r.us for r in self.rows if r.counted)

    @property
    def ceiling(self) -> float:
        return ceiling(self.total_us, self.cores)

    def ratios(self) -> dict[str, float]:
        """Same-run ratios: shares of the sum, verify within its process, run rate / ceiling."""
        us = {r.key: r.us for r in self.rows}
        out = {f"budget.share_{r.key}": r.us / self.total_us for r in self.rows if r.counted}
        out["budget.gateway_verify_of_process"] = us["gateway_verify"] / us["gateway"]
        out["budget.cloud_verify_of_process"] = us["cloud_verify"] / us["cloud_worker"]
        out["budget.run_rate_ceiling_ratio"] = statistics.median(self.run_rates) / self.ceiling
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": machine(),
            "cores": self.cores,
            "stages_us": {r.key: round(r.us, 2) for r in self.rows if r.counted},
            "of_which_us": {r.key: round(r.us, 2) for r in self.rows if not r.counted},
            "total_us": round(self.total_us, 2),
            "ceiling_batches_per_s": round(self.ceiling, 1),
            "receipts_per_batch": round(self.receipts_per_batch, 4),
            "run_rates": [round(r, 1) for r in self.run_rates],
            "ratios": {k: round(v, 4) for k, v in self.ratios().items()},
        }


def ceiling(total_us: float, cores: int = CORES) -> float:
    """Batches/s that ``cores`` fully busy cores allow at ``total_us`` µs of CPU per batch."""
    if total_us <= 0 or cores < 1:
        raise ValueError(f"a ceiling needs a positive CPU cost and cores, got {total_us} µs on {cores}")
    return cores * 1e6 / total_us


def machine() -> dict[str, Any]:
    mosquitto = mosquitto_binary()
    version = ""
    if mosquitto is not None:
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True).stdout.splitlines()
        version = out[0] if out else ""
    return {
        "arch": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "mosquitto": version,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def assemble(inproc: InProcess, runs: Sequence[ProcessRun], cores: int = CORES) -> Budget:
    """The rows from the in-process figures and the medians of the process runs."""

    def med(stage: str) -> float:
        return statistics.median(run.us_per_batch(stage) for run in runs)

    per_batch = statistics.median(run.receipts / run.batches for run in runs)
    rows = (
        Row("sign", "device: sign (seal + body hash), in-process", inproc.sign_us),
        Row("publisher", "device: MQTT publish QoS 1 (paho publisher, its process)", med("publisher")),
        Row("edge_broker", "edge Mosquitto: batches in + out, receipts in + out", med("edge_broker")),
        Row("gateway", "gateway process: parse + verify + SQLite commit + forward bundles + relay receipts", med("gateway")),
        Row("gateway_verify", "  of which parse + verify (gateway.verify.classify, in-process)", inproc.gateway_verify_us, counted=False),
        Row("cloud_broker", "cloud Mosquitto: bundles in + out, receipts in + out", med("cloud_broker")),
        Row("cloud_worker", "cloud worker process: parse + verify + ledger + tallies + rules + sign/publish receipts", med("cloud_worker")),
        Row("cloud_verify", "  of which unwrap bundle + parse + verify (Ledger.check, in-process)", inproc.cloud_verify_us, counted=False),
        Row("receipt_subscriber", "device: MQTT receive of receipts (paho subscriber, its process)", med("receipt_subscriber")),
        Row("receipt_handling", f"device: receipt handling (open_receipt + apply) x {per_batch:.3f} receipts/batch", inproc.receipt_us * per_batch),
    )  # fmt: skip
    return Budget(rows, cores, per_batch, tuple(run.batches / run.wall_s for run in runs))


def measure(
    work: Path, *, batches: int = 6000, repeat: int = 3, sample: int = 2000, rounds: int = 5, tls: bool = True, cores: int = CORES
) -> Budget:
    """The whole budget: ``sample`` envelopes for the in-process rows, ``repeat`` process runs
    of ``batches`` fresh batches each."""
    election = load_election(sample_election_path())
    keys = work / "keys"
    registry = provision(election, keys)
    with console.status("in-process stages (sign, verify, receipts)"):
        inproc = measure_in_process(election, keys, registry, fleet_envelopes(election, keys, sample, seed=11), rounds)
    runs = []
    for i in range(repeat):
        envelopes = fleet_envelopes(election, keys, batches, seed=21 + i)
        with console.status(f"process run {i + 1} of {repeat}: {batches:,} batches through the whole path"):
            run = run_processes(work / f"run-{i}", keys, registry, envelopes, tls=tls)
        runs.append(run)
        console.print(
            f"  run {i + 1}: {run.batches:,} batches in {run.wall_s:.1f} s ({run.batches / run.wall_s:,.0f}/s),"
            f" {run.receipts:,} receipts at the edge; CPU s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in run.cpu_s.items())
        )
    return assemble(inproc, runs, cores)


def table(budget: Budget) -> Table:
    out = Table(title=f"CPU budget per batch ({budget.cores} cores; os.cpu_count() = {os.cpu_count()})")
    out.add_column("stage")
    out.add_column("µs CPU per batch", justify="right")
    out.add_column("share of total", justify="right")
    for row in budget.rows:
        share = f"{row.us / budget.total_us:.1%}" if row.counted else "(inside the row above)"
        out.add_row(row.label, f"{row.us:,.1f}", share)
    out.add_row("sum", f"{budget.total_us:,.1f}", "100%")
    out.add_row(f"ceiling: {budget.cores} cores / sum, batches/s", f"{budget.ceiling:,.0f}", "")
    rate = statistics.median(budget.run_rates)
    out.add_row("the process runs' own rate, first publish to last receipt, batches/s", f"{rate:,.0f}", f"{rate / budget.ceiling:.2f} of ceiling")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=6000, help="batches per process run")
    parser.add_argument("--repeat", type=int, default=3, help="process runs (medians)")
    parser.add_argument("--sample", type=int, default=2000, help="envelopes for the in-process stages")
    parser.add_argument("--cores", type=int, default=CORES, help="cores the ceiling assumes")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True, help="TLS + ACLs as the pipeline (default: yes)")
    parser.add_argument("--quick", action="store_true", help="small sizes: --batches 2000 --repeat 1 --sample 600")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.repeat, args.sample = min(args.batches, 2000), 1, min(args.sample, 600)
    if mosquitto_binary() is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    info = machine()
    console.print(", ".join(f"{k}: {v}" for k, v in info.items()))
    work = Path(tempfile.mkdtemp(prefix="edgetally-budget-"))
    try:
        budget = measure(work, batches=args.batches, repeat=args.repeat, sample=args.sample, tls=args.tls, cores=args.cores)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(table(budget))
    if args.json is not None:
        args.json.write_text(json.dumps(budget.to_json(), indent=2) + "\n")
        console.print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
