"""Every benchmark in one run, its ratios in one JSON file, so that a slowdown shows up as a
number in a diff.

    .venv/bin/python -m benchmarks.all [--quick] [--out FILE] [--only budget,pipeline,...]

Each benchmark (every ``benchmarks/*.py`` module: budget, gateway, pipeline, cloud, buffer,
engine, rules, fleet, fleet_pipeline, proxy, cli, results, cluster) runs as a child process,
``python -m benchmarks.NAME ARGS --json TMPFILE``, one after the other (so none slows another
down); with --quick at the small sizes of ``QUICK`` (the whole run in under 3 minutes on this
2-core machine when it is quiet), else at each benchmark's own defaults (an hour or more).
The budget runs first: its ceiling (2 cores / CPU per batch, benchmarks/budget.py) is handed to
the pipeline (``--ceiling``), so ``e2e.ceiling_ratio`` is the pipeline's end-to-end rate over the
ceiling of the same run, and ``e2e.fleet_ceiling_ratio`` the fleet-pipeline's over the same.

The file: ``{"machine": {...}, "ratios": {"cloud.ingest_ratio_1worker": 0.21, ...},
"seconds": {benchmark: wall seconds}, "failed": {benchmark: why}, "skipped": {benchmark: why}}``;
each ratio is against a baseline measured in the same run and named for what it compares. Exit
status 1, naming them, if a benchmark crashed or a ratio in ``EXPECTED`` is missing; never
for a figure's size (this is not a timing gate). A benchmark whose prerequisite is not installed
(nats-server for cluster) is skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.budget import machine
from edgetally.nats import nats_binary

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=max(Console().width, 110))

# Small sizes: a few seconds to ~25 s each.
QUICK: dict[str, list[str]] = {
    "budget": ["--quick"],
    "gateway": ["--messages", "2000", "--backlog", "4000", "--no-uncoalesced"],
    "pipeline": ["--batches-per-device", "20", "--baseline-messages", "3000", "--budget-batches", "1500"],
    "cloud": ["--messages", "2000", "--backends", "sqlite", "--workers", "1", "--shapes", "envelopes,bundles"],
    "buffer": ["--rows", "4000", "--repeat", "1"],
    "engine": ["--messages", "2000", "--repeat", "2"],
    "rules": ["--messages", "2000", "--repeat", "2"],
    "fleet": ["--devices", "200", "--batches-per-device", "100", "--connect-rate", "2000", "--ceiling-messages", "3000"],
    # --ceiling 0: the ratio to the budget's ceiling is taken below, from the budget's own run.
    "fleet_pipeline": ["--devices", "300", "--batches-per-device", "2", "--connect-rate", "1000", "--timeout", "120",
                       "--ceiling", "0"],
    "proxy": ["--messages", "2000", "--rounds", "1", "--small-window-messages", "300", "--bandwidth-messages", "800",
              "--connections", "100"],
    "cli": ["--runs", "2"],
    "results": ["--seconds", "1", "--clients", "200", "--synthetic-devices", "0"],
    "cluster": ["--forward", "600", "--backlog", "1200", "--loss", "0", "--workers", "1", "--brokers", "mosquitto,nats-r1"],
    "elections": ["--quick"],
}  # fmt: skip
BENCHMARKS = tuple(QUICK)

# The ratios each benchmark must give (more may come): one missing is a failure, named.
EXPECTED: dict[str, tuple[str, ...]] = {
    "budget": ("budget.run_rate_ceiling_ratio", "budget.share_cloud_worker", "budget.share_gateway",
               "budget.gateway_verify_of_process", "budget.cloud_verify_of_process"),
    "gateway": ("gateway.bridge_ratio", "gateway.ceiling_ratio", "gateway.ingest_ceiling_ratio",
                "gateway.drain_speed_bridge_ratio", "gateway.receipts_on_off_ratio", "gateway.tls_plain_ratio"),
    "pipeline": ("e2e.ceiling_ratio", "pipeline.e2e_raw_paho_ratio", "pipeline.verify_bare_ratio"),
    "cloud": ("cloud.ingest_ratio_1worker", "cloud.ingest_ratio_1worker_bundles", "cloud.rules_ingest_ratio_1worker"),
    "buffer": ("buffer.drain_ingest_ratio", "buffer.steady_ingest_ratio", "buffer.steady_usage_ingest_ratio"),
    "engine": ("engine.default_ledger_only_ratio",),
    "rules": ("rules.all_five_hand_written_ratio", "rules.all_five_decode_ratio"),
    "fleet": ("fleet.steady_ceiling_ratio", "fleet.receipts_on_off_ratio", "fleet.tls_plain_ratio"),
    "fleet_pipeline": ("fleet_pipeline.e2e_raw_paho_ratio", "e2e.fleet_ceiling_ratio"),
    "proxy": ("proxy.pass_direct_ratio", "proxy.latency_direct_ratio", "proxy.bandwidth_limit_ratio"),
    "cli": ("cli.help_python_ratio", "cli.gateway_buffer_stats_python_ratio", "cli.cloud_results_python_ratio"),
    "results": ("results.api_static_ratio",),
    "cluster": ("cluster.forward_1w_ratio_nats_r1", "cluster.ingest_1w_ratio_nats_r1", "cluster.drain_rate_ratio_nats_r1"),
    "elections": ("elections.many_vs_single_ratio",),
}  # fmt: skip


@dataclass
class Collected:
    ratios: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    ceiling: float = 0.0  # the budget's, batches/s


def ratios_of(name: str, data: Mapping[str, Any]) -> dict[str, float]:
    """The numeric ratios in one benchmark's JSON (nulls and non-numbers left out)."""
    if name == "rules":  # `rules --json` prints its own shape: µs per message by loop
        results = data.get("results", {})

        def us(key: str) -> float:
            return float(results.get(key, {}).get("us_per_message") or math.nan)

        found: Mapping[str, Any] = {
            "rules.all_five_hand_written_ratio": us("all five rules together") / us("hand-written per contest"),
            "rules.all_five_decode_ratio": us("all five rules together") / us("orjson.loads(body)"),
        }
    elif name == "cluster":  # a flat object of figures; the ratios are those named so
        found = {k: v for k, v in data.items() if "_ratio_" in k}
    else:
        found = data.get("ratios", {})
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float) and math.isfinite(v)}


def missing(expected: Mapping[str, Sequence[str]], collected: Collected) -> list[str]:
    """Expected ratios not collected, of benchmarks that ran (not those that failed or were
    skipped: they are reported as such)."""
    out = []
    for name, keys in expected.items():
        if name in collected.failed or name in collected.skipped or name not in collected.seconds:
            continue
        out += [f"{name}: {key}" for key in keys if key not in collected.ratios]
    return out


def problems(collected: Collected, expected: Mapping[str, Sequence[str]] = EXPECTED) -> list[str]:
    """Why the run failed: each crashed benchmark, each missing ratio, by name; [] if none."""
    out = [f"{name} failed: {why}" for name, why in collected.failed.items()]
    return out + [f"missing ratio {m}" for m in missing(expected, collected)]


def command(name: str, quick: bool, out: Path, ceiling: float) -> list[str]:
    args = list(QUICK[name]) if quick else []
    if name == "pipeline" and ceiling > 0:
        args += ["--ceiling", f"{ceiling:.1f}"]
    args += ["--json"] if name == "rules" else ["--json", str(out)]
    return [sys.executable, "-m", f"benchmarks.{name}", *args]


def run_one(name: str, quick: bool, work: Path, collected: Collected, timeout: float) -> None:
    out = work / f"{name}.json"
    log = work / f"{name}.log"
    argv = command(name, quick, out, collected.ceiling)
    started = time.monotonic()
    try:
        with log.open("wb") as sink:
            done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=sink, timeout=timeout)
        stdout = done.stdout.decode("utf-8", "replace")
        log.write_text(log.read_text(errors="replace") + stdout)
        code = done.returncode
    except subprocess.TimeoutExpired:
        code, stdout = -1, ""
        collected.failed[name] = f"timed out after {timeout:.0f} s"
    collected.seconds[name] = round(time.monotonic() - started, 1)
    if name in collected.failed:
        return
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    if code != 0:
        collected.failed[name] = f"exit {code}: {tail[-400:]}"
        return
    try:
        data = json.loads(stdout) if name == "rules" else json.loads(out.read_text())
    except (OSError, ValueError) as exc:
        collected.failed[name] = f"no JSON figures ({exc}): {tail[-300:]}"
        return
    collected.ratios |= ratios_of(name, data)
    if name == "budget":
        collected.ceiling = float(data.get("ceiling_batches_per_s") or 0.0)
    if name == "fleet_pipeline" and collected.ceiling > 0:
        rate = data.get("figures", {}).get("e2e_per_s")
        if isinstance(rate, int | float):
            collected.ratios["e2e.fleet_ceiling_ratio"] = rate / collected.ceiling


def report(collected: Collected, quick: bool) -> dict[str, Any]:
    return {
        "machine": machine() | {"quick": quick, "budget_ceiling_batches_per_s": round(collected.ceiling, 1)},
        "ratios": {k: round(v, 4) for k, v in sorted(collected.ratios.items())},
        "seconds": collected.seconds,
        "failed": collected.failed,
        "skipped": collected.skipped,
    }


def table(collected: Collected) -> Table:
    out = Table(title="benchmark ratios, each against a baseline of the same run")
    out.add_column("ratio")
    out.add_column("value", justify="right")
    for key, value in sorted(collected.ratios.items()):
        out.add_row(key, f"{value:.3f}")
    for name, seconds in collected.seconds.items():
        out.add_row(f"[dim]{name}: wall seconds[/]", f"[dim]{seconds:.1f}[/]")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under 3 minutes in all)")
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="the JSON file of ratios")
    parser.add_argument("--only", default="", help="comma-separated benchmarks (default: all)")
    parser.add_argument("--timeout", type=float, default=0.0, help="per benchmark, s (default 300 quick, 7200)")
    args = parser.parse_args(argv)
    names = [n.strip().replace("-", "_") for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    timeout = args.timeout or (300.0 if args.quick else 7200.0)
    collected = Collected()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgetally-bench-all-") as tmp:
        for name in names:
            if name == "cluster" and nats_binary() is None:
                collected.skipped[name] = "nats-server is not installed"
                continue
            with console.status(f"{name} ({time.monotonic() - started:.0f} s so far)"):
                run_one(name, args.quick, Path(tmp), collected, timeout)
            state = "FAILED" if name in collected.failed else "ok"
            console.print(f"  {name}: {state} in {collected.seconds[name]:.1f} s")
    expected = {n: keys for n, keys in EXPECTED.items() if n in names}
    if "budget" not in names:  # without the budget there is no ceiling to divide by
        expected = {n: tuple(k for k in keys if not k.startswith("e2e.fleet")) for n, keys in expected.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report(collected, args.quick), indent=2) + "\n")
    console.print(table(collected))
    console.print(f"{len(collected.ratios)} ratios from {len(collected.seconds)} benchmarks in {time.monotonic() - started:.0f} s -> {args.out}")
    for name, why in collected.skipped.items():
        console.print(f"[yellow]skipped {name}: {why}[/]")
    found = problems(collected, expected)
    for problem in found:
        console.print(f"[red]{problem}[/]")
    if found:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
