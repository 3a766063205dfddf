"""A fleet of 10,000 (or 100,000) devices through the whole pipeline, with exact totals at the end.

    scripts/bench fleet-pipeline [--devices 10000] [--batches-per-device 2] [--connect-rate 500]
                                 [--sites K] [--plain] [--ceiling BATCHES_PER_S]

A synthetic election of N devices (devices/synth.py), provisioned (devices/keygen.py); then edge
Mosquitto, the gateway, cloud Mosquitto and one cloud worker (SQLite) on this machine, and
`edgetally devices run` with every device its own MQTT connection. The fleet exits when every
device's final batch is receipted by the cloud (or at --timeout). Printed: the time to confirm
every device, batches per second end to end, and the verdict (every batch in the ledger exactly
once, every total equal to what the devices sent, every device confirmed, buffer drained). The
baseline for the rate is one raw paho QoS 1 publisher -> Mosquitto -> subscriber in the same
run; the rate is also given against the CPU budget's ceiling (benchmarks/budget.py, measured in
the same run unless --ceiling gives it; --ceiling 0 leaves it out). Exit 0 only on a matching
verdict. Every wait is bounded.

Sites (issue 17): a broker holds a socket per connection, so past the open-files limit
(RLIMIT_NOFILE, raised as far as it goes: devices/limits.py) one edge broker cannot hold every
device. The devices are then split over K sites, each an edge Mosquitto, its gateway and its
share of the fleet (``devices run --shard k/K``, its own process), all forwarding to the one
cloud broker and cloud worker; the verdict adds the sites' fleet summaries and gateway buffers
up. Several sites run plain MQTT (``--plain``; the TLS wire has one gateway identity).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from benchmarks import budget as cpu_budget
from benchmarks._json import write_json
from benchmarks.pipeline import baseline_paho
from devices.keygen import provision_many
from devices.limits import raise_nofile, sources_for
from devices.shards import aggregate, read_summary, sigterm_as_ctrl_c
from devices.synth import synth_mapping
from edgetally.brokers import BrokerProcess, mosquitto_binary
from edgetally.processes import Component
from edgetally.stack import Stack, StackConfig
from edgetally.verdict import compare, render
from protocol import Election

console = Console(width=max(Console().width, 110))
SPARE_FDS = 2048  # what a broker or fleet process needs open besides its device sockets


class Site:
    """Site k > 0: an edge broker, its gateway (to the stack's cloud broker) and fleet shard k."""

    def __init__(self, stack: Stack, k: int, sites: int, args: argparse.Namespace, extra: list[str]) -> None:
        work = stack.config.workdir / f"site{k}"
        work.mkdir(parents=True, exist_ok=True)
        self.edge = BrokerProcess(work / "edge-broker", name=f"edge-broker{k}", embedded=False)
        self.buffer = work / "gateway-buffer.db"
        self.summary = work / "fleet-summary.json"
        self.gateway = Component(
            f"gateway{k}",
            ["gateway", "run", "--edge", self.edge.url, "--cloud", stack.cloud_url, "--buffer", str(self.buffer),
             "--keys", str(stack.keys), "--id", f"gw{k + 1}"],
            work,
        )  # fmt: skip
        self.fleet = Component(
            f"fleet{k}",
            ["devices", "run", "--broker", self.edge.url, "--keys", str(stack.keys), "--seed", str(args.seed),
             "--batches-per-device", str(args.batches_per_device), "--resend-after", "30",
             "--timeout", str(args.timeout), "--summary", str(self.summary), "--shard", f"{k}/{sites}", *extra],
            work,
            ready=False,
        )  # fmt: skip

    def start(self) -> None:
        self.edge.start()
        self.gateway.start()
        self.gateway.wait_ready(60)

    def stop(self) -> None:
        self.fleet.stop()
        self.gateway.stop()
        self.edge.stop()


def _buffers(stack: Stack, sites: list[Site]) -> dict[str, Any]:
    """Every gateway's buffer states, added up (what the verdict's drained check reads)."""
    states: dict[str, int] = {}
    for stats in [stack.buffer_stats(), *(stack._cli_json("gateway", "buffer", "stats", "--buffer", str(s.buffer)) for s in sites)]:
        for state, count in (stats.get("states") or {}).items():
            states[state] = states.get(state, 0) + int(count)
    return {"states": states}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--batches-per-device", type=int, default=2)
    parser.add_argument("--connect-rate", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0, help="give the fleet this long to confirm all")
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    parser.add_argument("--sites", type=int, default=0, help="K sites (default: as the open-files limit needs)")
    parser.add_argument("--plain", action="store_true", help="plain MQTT (implied by more than one site)")
    parser.add_argument(
        "--ceiling", type=float, default=None,
        help="the CPU budget's ceiling, batches/s (default: measure it first, in this run; 0: leave it out)",
    )  # fmt: skip
    args = parser.parse_args()
    sigterm_as_ctrl_c()  # SIGTERM (a timeout, a supervisor) stops the brokers and fleets it started, as Ctrl-C
    if mosquitto_binary() is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    nofile = raise_nofile(2 * args.devices + 4096)  # the brokers and fleets started below inherit it
    sites = args.sites or max(1, math.ceil(args.devices / max(1, nofile - SPARE_FDS)))
    plain = args.plain or sites > 1
    sources = sources_for(math.ceil(args.devices / sites))
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()};"
        f" open files limit {nofile:,}; {sites} site(s); {'plain MQTT' if plain else 'TLS'};"
        f" source addresses: {len(sources) or '127.0.0.1'}"
    )
    work = Path(tempfile.mkdtemp(prefix="edgetally-fleetpipe-"))
    try:
        with console.status("baseline: raw paho QoS 1 publisher -> Mosquitto -> subscriber"):
            broker = BrokerProcess(work / "baseline", name="baseline-broker")
            broker.start()
            try:
                ceiling = baseline_paho(broker.port, b"x" * 570, 20_000)
            finally:
                broker.stop()
        console.print(f"  raw paho ceiling {ceiling:,.0f} msg/s")
        budget_ceiling = args.ceiling
        if budget_ceiling is None:
            with console.status("the CPU budget's ceiling (6,000 batches through every process)"):
                budget_ceiling = cpu_budget.measure(work / "budget", batches=6000, repeat=1).ceiling
            console.print(f"  CPU budget ceiling {budget_ceiling:,.0f} batches/s")
        mapping = synth_mapping(args.devices, max(1, args.devices // 3), args.seed)
        election_file = work / "election.yaml"
        election_file.write_text(yaml.safe_dump(mapping))
        extra = ["--connect-rate", str(args.connect_rate / sites)]
        extra += ["--source-addresses", str(len(sources))] if sources else []
        stack = Stack(
            StackConfig(
                workdir=work / "stack",
                election_file=election_file,
                seed=args.seed,
                batches_per_device=args.batches_per_device,
                resend_after=30.0,
                fleet_timeout=args.timeout,
                embedded_brokers=False,
                plain=plain,
                fleet_args=(*extra, *(["--shard", f"0/{sites}"] if sites > 1 else [])),
            )
        )
        others = [Site(stack, k, sites, args, extra) for k in range(1, sites)]
        phases: dict[str, float] = {}
        try:
            with console.status(f"provisioning {args.devices:,} keys"):
                started = time.monotonic()
                provision_many(Election.from_mapping(mapping), stack.keys)
                stack.provision()  # the registry as the stack keeps it (the keys are there)
            phases["provisioning"] = time.monotonic() - started
            console.print(f"  provisioned {args.devices:,} devices in {phases['provisioning']:.1f} s")
            with console.status(f"starting brokers, cloud and {sites} gateway(s)"):
                started = time.monotonic()
                stack.start()
                for site in others:
                    site.start()
            phases["start brokers, cloud, gateways"] = time.monotonic() - started
            expected = stack.expected()
            summaries = [stack.summary_path, *(s.summary for s in others)]
            with console.status(f"{args.devices:,} devices sending {expected.batches:,} batches through the pipeline"):
                started = time.monotonic()
                stack.start_fleet()
                for site in others:
                    site.summary.unlink(missing_ok=True)
                    site.fleet.start()
                codes = [stack.fleet.wait(timeout=args.timeout + 60)]
                codes += [site.fleet.wait(timeout=max(1.0, started + args.timeout + 60 - time.monotonic())) for site in others]
                elapsed = time.monotonic() - started
            deadline = time.monotonic() + 120
            results = stack.results()
            while int(results.get("batches", 0)) < expected.batches and time.monotonic() < deadline:
                time.sleep(0.5)
                results = stack.results()
            parts = [read_summary(p) for p in summaries]
            summary = parts[0] if sites == 1 else aggregate(parts, confirm=True).to_mapping()
            verdict = compare(stack.registry.election, expected, results, summary, _buffers(stack, others))
        finally:
            for site in others:
                site.stop()
            stack.stop()
        render(verdict, stack.registry.election, console)
        code = max(codes)
        table = Table(title=f"{args.devices:,} devices through {sites} edge broker(s) and gateway(s), cloud broker, cloud (SQLite)")
        for column in ("measurement", "value"):
            table.add_column(column, justify="right")
        table.add_row("fleet exit code (worst of the sites)", str(code))
        table.add_row("devices confirmed by receipt", f"{summary.get('confirmed_devices', '?')} / {args.devices:,}")
        table.add_row("batches", f"{expected.batches:,}")
        for name, seconds in phases.items():
            table.add_row(name, f"{seconds:.1f} s")
        table.add_row("fleet start to every device confirmed", f"{elapsed:.1f} s")
        table.add_row("end to end, batches/s", f"{expected.batches / elapsed:,.0f}")
        table.add_row("raw paho ceiling, msg/s (same run)", f"{ceiling:,.0f}")
        table.add_row("end to end / raw paho ceiling", f"{expected.batches / elapsed / ceiling:.2f}")
        if budget_ceiling:
            table.add_row("CPU budget ceiling, batches/s (same run or --ceiling)", f"{budget_ceiling:,.0f}")
            table.add_row("end to end / CPU budget ceiling", f"{expected.batches / elapsed / budget_ceiling:.2f}")
        for key in ("all_connected_s", "reconnects", "connect_failures", "connect_failure_causes", "resends", "rss_connected_kib"):
            if key in summary:
                table.add_row(key, str(summary[key]))
        console.print(table)
        sys.stdout.flush()
        rate = expected.batches / elapsed
        ratios = {"fleet_pipeline.e2e_raw_paho_ratio": rate / ceiling}
        if budget_ceiling:
            ratios["e2e.fleet_ceiling_ratio"] = rate / budget_ceiling
        write_json(args.json, ratios,
                   {"e2e_per_s": rate, "batches": expected.batches, "seconds": elapsed, "raw_paho_per_s": ceiling,
                    "ceiling_per_s": budget_ceiling or None})  # fmt: skip
        if not verdict.ok or code != 0:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
