"""A fleet of 10,000 devices through the whole pipeline, with exact totals at the end.

    scripts/bench fleet-pipeline [--devices 10000] [--batches-per-device 2] [--connect-rate 500]

A synthetic election of N devices (devices/synth.py), provisioned; then edge Mosquitto, the
gateway, cloud Mosquitto and one cloud worker (SQLite) on this machine, and ONE
`edgetally devices run` process with every device its own MQTT connection. The fleet exits when
every device's final batch is receipted by the cloud (or at --timeout). Printed: the time to
confirm every device, batches per second end to end, and the verdict (every batch in the ledger
exactly once, every total equal to what the devices sent, every device confirmed, buffer
drained). The baseline for the rate is one raw paho QoS 1 publisher -> Mosquitto -> subscriber
in the same run. Exit 0 only on a matching verdict. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from benchmarks._json import write_json
from benchmarks.pipeline import baseline_paho
from devices.synth import synth_mapping
from edgetally.brokers import BrokerProcess, mosquitto_binary
from edgetally.stack import Stack, StackConfig
from edgetally.verdict import compare, render

console = Console(width=max(Console().width, 110))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--batches-per-device", type=int, default=2)
    parser.add_argument("--connect-rate", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0, help="give the fleet this long to confirm all")
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    if mosquitto_binary() is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    console.print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
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
        election_file = work / "election.yaml"
        election_file.write_text(yaml.safe_dump(synth_mapping(args.devices, max(1, args.devices // 3), args.seed)))
        stack = Stack(
            StackConfig(
                workdir=work / "stack",
                election_file=election_file,
                seed=args.seed,
                batches_per_device=args.batches_per_device,
                resend_after=30.0,
                fleet_timeout=args.timeout,
                embedded_brokers=False,
                fleet_args=("--connect-rate", str(args.connect_rate)),
            )
        )
        try:
            with console.status(f"provisioning {args.devices:,} keys"):
                started = time.monotonic()
                stack.provision()
            console.print(f"  provisioned {args.devices:,} devices in {time.monotonic() - started:.1f} s")
            with console.status("starting brokers, cloud and gateway"):
                stack.start()
            expected = stack.expected()
            with console.status(f"{args.devices:,} devices sending {expected.batches:,} batches through the pipeline"):
                started = time.monotonic()
                stack.start_fleet()
                code = stack.fleet.wait(timeout=args.timeout + 60)
                elapsed = time.monotonic() - started
            deadline = time.monotonic() + 120
            results = stack.results()
            while int(results.get("batches", 0)) < expected.batches and time.monotonic() < deadline:
                time.sleep(0.5)
                results = stack.results()
            verdict = compare(stack.registry.election, expected, results, stack.fleet_summary(), stack.buffer_stats())
            summary = stack.fleet_summary() or {}
        finally:
            stack.stop()
        render(verdict, stack.registry.election, console)
        table = Table(title=f"{args.devices:,} devices through edge broker, gateway, cloud broker, cloud (SQLite)")
        for column in ("measurement", "value"):
            table.add_column(column, justify="right")
        table.add_row("fleet exit code", str(code))
        table.add_row("devices confirmed by receipt", f"{summary.get('confirmed_devices', '?')} / {args.devices:,}")
        table.add_row("batches", f"{expected.batches:,}")
        table.add_row("fleet start to every device confirmed", f"{elapsed:.1f} s")
        table.add_row("end to end, batches/s", f"{expected.batches / elapsed:,.0f}")
        table.add_row("raw paho ceiling, msg/s (same run)", f"{ceiling:,.0f}")
        table.add_row("end to end / ceiling", f"{expected.batches / elapsed / ceiling:.2f}")
        for key in ("connect_all_s", "reconnects", "connect_failures", "rss_connected_mib"):
            if key in summary:
                table.add_row(key, str(summary[key]))
        console.print(table)
        sys.stdout.flush()
        rate = expected.batches / elapsed
        write_json(args.json, {"fleet_pipeline.e2e_raw_paho_ratio": rate / ceiling},
                   {"e2e_per_s": rate, "batches": expected.batches, "seconds": elapsed, "raw_paho_per_s": ceiling})  # fmt: skip
        if not verdict.ok or code != 0:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
