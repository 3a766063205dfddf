"""Fleet at scale: connections, memory per device and signed-batch rate, against raw paho, in one run.

    scripts/bench fleet [--devices 10000] [--batches-per-device 10] [--connect-rate 500] [--storm]
                        [--processes N] [--source-addresses N] [--receipts off] [--no-tls]

Scale (issue 17): the benchmark raises its open-files limit (RLIMIT_NOFILE, soft and hard as
root) to what the fleet and the broker need before it starts either (the broker and the fleet
inherit it); past 20,000 devices they connect from several source addresses of 127.0.0.0/8
(one address has only the ephemeral port range, ~28k ports, towards the broker's one port:
devices/limits.py), ``--source-addresses`` to choose. The fleet's memory is the RSS of every
process of it (the shards and their parent, with --processes); the broker's RSS is sampled
before the fleet connects and once every device is connected, per connection.

  (a) ceiling: one raw paho QoS 1 publisher (1000 in flight) -> Mosquitto -> counting subscriber
      (its own process), envelope-sized signed payloads.
  (b) `edgetally devices run` (its own process) with N devices of a synthetic election: every
      device its own connection, client id, persistent session and keepalive, opened at
      --connect-rate. Printed: connected count, time to connect all, the fleet's RSS after
      signing its batches and once every device is connected, per device.
  (c) with every device connected (--hold), all publish their pre-signed batches QoS 1, awaiting
      each PUBACK, while the same counting subscriber drains the broker: batches acked per second
      over the steady window (10%..90% of all batches), and its ratio to the ceiling.
  (c') --receipts on|off|both (default both): (c) again on a fresh broker with receipts on: the
      subscriber answers every batch as the cloud would, each device's receipt (highest
      contiguous seq, hash) published retained, QoS 1, through cloud.worker.receipts.ReceiptSender
      coalescing at --receipt-interval (default 0.25 s); the devices run with --confirm (and
      --resend-after 120, so that no resend muddies the rate), receive and apply the receipts,
      and end once confirmed. Printed: the steady rate on / off, receipts published and
      coalesced away, batches receipted, devices confirmed.
  (d) --storm: a second fleet run, paced (--storm-rate), during which the broker is SIGKILLed and
      restarted: reconnects, connect failures, time from the first loss to every device back.
Every wait is bounded; the benchmark stops by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks._json import ratio as _ratio
from benchmarks._json import write_json
from benchmarks._mqtt import Sink, bench_tls, bench_wire, proc_status_kib, raw_ceiling
from cloud.config import DEFAULT_RECEIPT_INTERVAL_S
from devices.keygen import provision_many
from devices.limits import raise_nofile, sources_for
from devices.shards import aggregate, sigterm_as_ctrl_c
from devices.synth import synth_election
from devices.tabulator import Tabulator
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess, BrokerTls, mosquitto_binary
from protocol import Registry, provision
from protocol.tls import ClientTls

ROOT = Path(__file__).resolve().parents[1]
CELL_SPARE_FDS = 2048  # open files a broker or fleet process needs besides its device sockets


def ceiling(work: Path, keys: Path, messages: int) -> tuple[float, int]:
    """Raw paho QoS 1 publisher -> Mosquitto -> counting subscriber: messages/s, payload size."""
    election = synth_election(20, 10, 1)
    provision(election, keys)
    payloads = [
        (b.payload, t.topic)
        for t in (Tabulator.load(election, keys, d, 1, 10) for d in election.devices)
        for b in t.batches
    ]
    envelopes = [
        (topic, payload)
        for payload, topic in (payloads[i % len(payloads)] for i in range(messages))
    ]
    rate = raw_ceiling(work, envelopes, timeout=120)
    return rate, sum(len(p) for p, _ in payloads) // len(payloads)


@dataclass
class FleetRun:
    summary: dict[str, Any]
    peak_rss_kib: int  # every process of the fleet, summed
    sink_rate: float | None
    receipts: int = 0  # receipts published to the devices (receipts on)
    superseded: int = 0  # receipts coalesced away
    connected_rss_kib: int = 0  # every process of the fleet, first sample with all connected
    broker_before_kib: int = 0  # the broker's RSS before the fleet started
    broker_connected_kib: int = 0  # ... and with every device connected


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, KiB (0 for those gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += proc_status_kib(p, "VmRSS")
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return total


def run_fleet(
    console: Console,
    brokers: list[BrokerProcess],
    keys: Path,
    work: Path,
    args: argparse.Namespace,
    *,
    label: str,
    extra: list[str],
    batches: int,
    storm: bool = False,
    receipts: float | None = None,
    tls: ClientTls | None = None,
) -> FleetRun:
    """One fleet run; with ``receipts`` (an interval, seconds) the subscriber answers with
    coalesced receipts and the devices wait to be confirmed.

    With several ``brokers`` (cells), cell k is broker k, fleet shard k of K (``devices run
    --shard k/K``, its own process) and a counting subscriber on broker k; the summaries are
    added up as ``devices run --processes`` adds its shards' up."""
    cells = len(brokers)
    shares = [len(range(k, args.devices, cells)) for k in range(cells)]
    files = [work / (f"{label}.json" if cells == 1 else f"{label}-{k}.json") for k in range(cells)]
    sinks = (
        [
            Sink(b.port, n * batches, client_id=f"{label}-sink", receipt_interval=receipts, keys=keys, tls=tls)
            for b, n in zip(brokers, shares, strict=True)
        ]
        if not storm
        else []
    )
    for sink in sinks:
        sink.start()
    confirm = ["--no-confirm"] if receipts is None else ["--confirm", "--resend-after", "120"]

    def command(k: int) -> list[str]:
        return [
            sys.executable, "-m", "edgetally", "--log-level", "WARNING", "devices", "run",
            "--broker", brokers[k].url, "--keys", str(keys), "--seed", "1", "--batches-per-device", str(batches),
            *confirm, "--connect-rate", str(args.connect_rate / cells), "--timeout", str(args.timeout),
            "--summary", str(files[k]), "--json", *extra,
            *(["--rate", str(float(extra[extra.index("--rate") + 1]) / cells)] if "--rate" in extra and cells > 1 else []),
            *(["--shard", f"{k}/{cells}"] if cells > 1 else []),
            *(["--processes", str(args.processes)] if args.processes > 1 else []),
            *(["--source-addresses", args.source_addresses] if args.source_addresses else []),
        ]  # fmt: skip

    logs = [open(work / f"{label}-{k}.log", "wb") for k in range(cells)]  # noqa: SIM115 - closed below
    procs = [
        subprocess.Popen(command(k), stdout=logs[k], stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        for k in range(cells)
    ]
    total = args.devices * batches
    peak = connected_rss = broker_connected = 0
    broker_before = sum(proc_status_kib(b.pid, "VmRSS") for b in brokers if b.pid)
    killed = False
    deadline = time.monotonic() + args.timeout + 120
    progress = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            connected = progress.add_task(f"{label}: connected", total=args.devices)
            acked = progress.add_task(f"{label}: acked by broker", total=total)
            while any(p.poll() is None for p in procs):
                if time.monotonic() > deadline:
                    for p in procs:
                        p.kill()
                    raise RuntimeError(f"{label}: the fleet did not finish in time")
                rss = sum(tree_rss_kib(p.pid) for p in procs)
                peak = max(peak, rss)
                snap = _merged(files)
                if not connected_rss and snap.get("max_connected", 0) >= args.devices:
                    connected_rss = rss
                    broker_connected = sum(proc_status_kib(b.pid, "VmRSS") for b in brokers if b.pid)
                progress.update(connected, completed=snap.get("connected", 0))
                progress.update(acked, completed=snap.get("acked", 0))
                if storm and not killed and snap.get("acked", 0) >= total * 0.3:
                    console.print(
                        f"[yellow]{label}: SIGKILL the broker(s) at {snap.get('acked')} acked, restart them[/]"
                    )
                    for b in brokers:
                        b.kill()
                    for b in brokers:
                        b.start()
                    killed = True
                time.sleep(0.25)  # a progress display's refresh, not synchronisation
    finally:
        for p in procs:  # stopped early (an error, Ctrl-C): no fleet left behind
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in logs:
            f.close()
    summary = _merged(files)
    bad = [k for k, p in enumerate(procs) if p.returncode not in (0, 1) or not _read(files[k])]
    if bad:
        raise RuntimeError(
            f"{label}: fleet {bad[0]} exited {procs[bad[0]].returncode}: {(work / f'{label}-{bad[0]}.log').read_text()[-2000:]}"
        )
    sink_rate = None
    if sinks:
        results = [sink.result(timeout=60) for sink in sinks]
        received = sum(r[0] for r in results)
        first, last = min(r[1] for r in results), max(r[2] for r in results)
        sink_rate = received / (last - first) if last > first else None
        if receipts is not None:
            sink = sinks[0]
            console.print(
                f"{label}: {sink.receipts:,} receipts published, {sink.superseded:,} coalesced"
                f" away, {sink.unconfirmed:,} unconfirmed; all acknowledged"
                f" {sink.drain_s:.1f}s after the last batch arrived"
            )
    return FleetRun(
        summary, peak, sink_rate, sum(x.receipts for x in sinks), sum(x.superseded for x in sinks),
        connected_rss, broker_before, broker_connected,
    )  # fmt: skip


def _merged(files: list[Path]) -> dict[str, Any]:
    """The fleet's summary: one file, or the cells' added up (devices/shards.py aggregate)."""
    if len(files) == 1:
        return _read(files[0])
    parts = [_read(f) for f in files]
    return aggregate(parts, confirm=False).to_mapping() if all(parts) else {}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--batches-per-device", type=int, default=10)
    parser.add_argument("--connect-rate", type=float, default=500.0)
    parser.add_argument("--ceiling-messages", type=int, default=30_000)
    parser.add_argument("--processes", type=int, default=1, help="each cell's fleet as N processes (devices run --processes)")
    parser.add_argument(
        "--cells",
        type=int,
        default=0,
        help="K brokers, each with its share of the fleet in its own process (default: 1, or as many as the"
        " open-files limit makes necessary: a broker holds one socket per device)",
    )
    parser.add_argument(
        "--source-addresses",
        default=None,
        help="devices run --source-addresses (default: one per 20,000 devices past 20,000, 127.0.0.2 on)",
    )
    parser.add_argument(
        "--storm", action="store_true", help="also kill and restart the broker under a paced fleet"
    )
    parser.add_argument(
        "--storm-rate", type=float, default=2000.0, help="fleet-wide batches/s during the storm run"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="each fleet run gives up after this many seconds",
    )
    parser.add_argument(
        "--receipts",
        choices=("on", "off", "both"),
        default="both",
        help="fleet run with receipts off, on, or both (default)",
    )
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the fleet (receipts off) over TLS with a certificate per device and ACLs (default: yes)",
    )
    parser.add_argument(
        "--receipt-interval",
        type=float,
        default=DEFAULT_RECEIPT_INTERVAL_S,
        help="receipts on: at most one per device per this many seconds (cloud run's default)",
    )
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    sigterm_as_ctrl_c()  # SIGTERM (a timeout, a supervisor) stops the brokers and fleets it started, as Ctrl-C
    if args.source_addresses is None and (sources := sources_for(args.devices)):
        args.source_addresses = str(len(sources))
    console = Console()
    # A socket per device in the fleet and in the broker (which inherits the limit), and spare.
    nofile = raise_nofile(2 * args.devices + 4096)
    if not args.cells:  # a broker (and a fleet process) holds a socket per device, and needs spare
        args.cells = max(1, math.ceil(args.devices / max(1, nofile - CELL_SPARE_FDS)))
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    version = subprocess.run([binary, "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {version}"
    )
    console.print(
        f"open files limit {nofile:,}; source addresses: {args.source_addresses or '127.0.0.1 (the kernel picks)'};"
        f" cells (a broker and its fleet process each): {args.cells}; fleet processes per cell: {args.processes}"
    )
    with tempfile.TemporaryDirectory(prefix="edgetally-bench-fleet-") as tmp:
        work = Path(tmp)
        with console.status("(a) ceiling: raw paho QoS 1 publisher -> Mosquitto -> subscriber"):
            ceiling_rate, size = ceiling(work, work / "ceiling-keys", args.ceiling_messages)
        console.print(f"ceiling: {ceiling_rate:,.0f} msg/s (payloads ~{size} B)")
        with console.status(f"provisioning {args.devices:,} device keys"):
            started = time.monotonic()
            provision_many(synth_election(args.devices, max(1, args.devices // 3), 1), work / "keys")
            provision_s = time.monotonic() - started
        console.print(f"provisioned {args.devices:,} keys in {provision_s:.1f}s")
        def cell_brokers(name: str, tls: BrokerTls | None = None) -> list[BrokerProcess]:
            made = [BrokerProcess(work / f"{name}-{k}", name=name, tls=tls) for k in range(args.cells)]
            for b in made:
                b.start()
            return made

        def kill(brokers: list[BrokerProcess]) -> None:
            for b in brokers:
                b.kill()

        broker = cell_brokers("fleet")
        off_run = on_run = storm_run = tls_run = None
        try:
            if args.receipts in ("off", "both"):
                off_run = run_fleet(
                    console,
                    broker,
                    work / "keys",
                    work,
                    args,
                    label="fleet",
                    extra=["--hold"],
                    batches=args.batches_per_device,
                )
            if args.receipts in ("on", "both"):
                # A fresh broker: the receipts stay retained, and would receipt a later run.
                receipts_broker = cell_brokers("fleet-receipts")
                try:
                    on_run = run_fleet(
                        console,
                        receipts_broker,
                        work / "keys",
                        work,
                        args,
                        label="receipts",
                        extra=["--hold"],
                        batches=args.batches_per_device,
                        receipts=args.receipt_interval,
                    )
                finally:
                    kill(receipts_broker)
            if args.tls:
                with console.status(f"issuing {args.devices:,} device certificates and the ACLs"):
                    started = time.monotonic()
                    wire = bench_wire(work, work / "keys", Registry.load(work / "keys"))
                console.print(f"issued {args.devices:,} device certificates in {time.monotonic() - started:.1f}s")
                tls_broker = cell_brokers("fleet-tls", wire.broker(BrokerKind.EDGE))
                try:
                    tls_run = run_fleet(
                        console, tls_broker, work / "keys", work, args, label="tls", extra=["--hold"],
                        batches=args.batches_per_device, tls=bench_tls(wire, "bench-sink"),
                    )  # fmt: skip
                finally:
                    kill(tls_broker)
            if args.storm:
                storm_run = run_fleet(
                    console, broker, work / "keys", work, args, label="storm",
                    extra=["--rate", str(args.storm_rate), "--reconnect-max", "10", "--resend-after", "30"],
                    batches=args.batches_per_device, storm=True,
                )  # fmt: skip
        finally:
            kill(broker)
    console.print(_table(args, ceiling_rate, size, provision_s, off_run, on_run, storm_run))
    if off_run is not None and tls_run is not None:
        console.print(_tls_table(args.devices, off_run, tls_run))
    steady = {name: (run.summary.get("steady_acked_per_s") or 0.0) if run else 0.0
              for name, run in (("off", off_run), ("on", on_run), ("tls", tls_run))}  # fmt: skip
    write_json(args.json, {
        "fleet.steady_ceiling_ratio": _ratio(steady["off"] or steady["on"], ceiling_rate),
        "fleet.receipts_on_off_ratio": _ratio(steady["on"], steady["off"]),
        "fleet.tls_plain_ratio": _ratio(steady["tls"], steady["off"]),
    }, {"ceiling_per_s": ceiling_rate, "steady_per_s": steady})  # fmt: skip


def _tls_table(devices: int, plain: FleetRun, tls: FleetRun) -> Table:
    """The fleet (receipts off) over plain TCP and over TLS: connect time, memory, rate."""
    table = Table(title=f"{devices:,} devices, plain MQTT vs TLS 1.3 with a certificate per device and ACLs")
    for column in ("measurement", "plain", "TLS", "TLS / plain", "TLS - plain"):
        table.add_column(column, justify="left" if column == "measurement" else "right")

    def row(name: str, key: str, unit: str, scale: float = 1.0) -> None:
        a = float(plain.summary.get(key) or 0.0) * scale
        b = float(tls.summary.get(key) or 0.0) * scale
        table.add_row(name, f"{a:,.1f} {unit}", f"{b:,.1f} {unit}", f"{b / a:.2f}" if a else "-", f"{b - a:+,.1f} {unit}")

    row("time to connect all", "all_connected_s", "s")
    row("RSS per device once connected (whole process / devices)", "rss_connected_kib", "KiB", 1 / devices)
    row("connection state per device", "connection_kib_per_device", "KiB")
    row("steady batches acked per second", "steady_acked_per_s", "/s")
    a, b = plain.connected_rss_kib / devices, tls.connected_rss_kib / devices
    table.add_row("every fleet process's RSS / devices", f"{a:,.1f} KiB", f"{b:,.1f} KiB", f"{b / a:.2f}" if a else "-", f"{b - a:+,.1f} KiB")
    a, b = ((r.broker_connected_kib - r.broker_before_kib) / devices for r in (plain, tls))
    table.add_row("broker RSS per connection", f"{a:,.1f} KiB", f"{b:,.1f} KiB", f"{b / a:.2f}" if a else "-", f"{b - a:+,.1f} KiB")
    return table


def _table(
    args: argparse.Namespace,
    ceiling_rate: float,
    size: int,
    provision_s: float,
    off: FleetRun | None,
    on: FleetRun | None,
    storm: FleetRun | None,
) -> Table:
    run = off or on
    assert run is not None
    s = run.summary
    devices = args.devices
    per_conn = s.get("connection_kib_per_device")
    steady = s.get("steady_acked_per_s") or 0.0
    table = Table(
        title=f"EdgeTally fleet: {devices:,} devices x {args.batches_per_device} signed batches (~{size} B), connect rate {args.connect_rate:,.0f}/s"
    )
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    rows = [
        ("ceiling: raw paho QoS 1 -> mosquitto -> subscriber", f"{ceiling_rate:,.0f} msg/s", ""),
        ("keys provisioned", f"{devices:,} in {provision_s:.1f}s", ""),
        ("devices connected at once", f"{s.get('max_connected', 0):,}", f">= {devices:,}"),
        (
            "time to connect all",
            f"{s.get('all_connected_s') or 0:.1f}s",
            f"~{devices / args.connect_rate:.1f}s at the rate",
        ),
        ("connect failures", f"{s.get('connect_failures', 0):,}", ""),
        (
            "fleet RSS after signing (before connecting)",
            f"{s.get('rss_prepared_kib', 0) / 1024:,.1f} MiB",
            "",
        ),
        (
            "fleet RSS with every device connected",
            f"{s.get('rss_connected_kib', 0) / 1024:,.1f} MiB",
            "",
        ),
        (
            "RSS per connection (connected - before) / devices",
            f"{per_conn} KiB" if per_conn is not None else "-",
            "",
        ),
        (
            "RSS per device, whole process / devices",
            f"{s.get('rss_connected_kib', 0) / devices:.1f} KiB",
            "<= 20 KiB (plain)",
        ),
        (
            "every fleet process's RSS, all connected (sampled) / devices",
            f"{run.connected_rss_kib / devices:.1f} KiB" if run.connected_rss_kib else "-",
            "<= 20 KiB (plain)",
        ),
        ("fleet peak RSS, every process (sampled) / devices", f"{run.peak_rss_kib / devices:.1f} KiB", ""),
        (
            "broker RSS before / with every device connected",
            f"{run.broker_before_kib / 1024:,.1f} / {run.broker_connected_kib / 1024:,.1f} MiB",
            "",
        ),
        (
            "broker RSS per connection",
            f"{(run.broker_connected_kib - run.broker_before_kib) / devices:.1f} KiB" if run.broker_connected_kib else "-",
            "",
        ),
        ("batches acked by broker", f"{s.get('acked', 0):,} / {s.get('batches', 0):,}", ""),
        (
            "fleet steady signed-batch rate (10%..90%)",
            f"{steady:,.0f} batches/s",
            f">= {0.5 * ceiling_rate:,.0f}",
        ),
        ("ratio to ceiling", f"{steady / ceiling_rate:.2f}", ">= 0.50"),
        (
            "subscriber arrival rate during the fleet run",
            f"{run.sink_rate:,.0f} msg/s" if run.sink_rate else "-",
            "",
        ),
        (
            "subscriber arrival rate / ceiling",
            f"{run.sink_rate / ceiling_rate:.2f}" if run.sink_rate else "-",
            "",
        ),
    ]
    if off is None:
        rows.append(("(the rows above: receipts on)", "", ""))
    if on is not None:
        r = on.summary
        rate = r.get("steady_acked_per_s") or 0.0
        off_rate = (off.summary.get("steady_acked_per_s") or 0.0) if off is not None else 0.0
        interval = args.receipt_interval
        rows += [
            (
                f"receipts on (<= 1/device/{interval:g} s): steady signed-batch rate",
                f"{rate:,.0f} batches/s",
                "",
            ),
            (
                "receipts on / off: steady rate",
                f"{rate / off_rate:.2f}" if rate and off_rate else "-",
                "",
            ),
            (
                "receipts on: published to devices / coalesced away",
                f"{on.receipts:,} / {on.superseded:,}",
                "",
            ),
            (
                "receipts on: batches receipted",
                f"{r.get('receipted', 0):,} / {r.get('batches', 0):,}",
                "all",
            ),
            (
                "receipts on: devices confirmed",
                f"{r.get('confirmed_devices', 0):,} / {r.get('devices', 0):,}",
                "all",
            ),
            ("receipts on: resends", f"{r.get('resends', 0):,}", "0"),
            (
                "receipts on: subscriber arrival rate",
                f"{on.sink_rate:,.0f} msg/s" if on.sink_rate else "-",
                "",
            ),
        ]
    if storm is not None:
        t = storm.summary
        rows += [
            ("storm: batches acked", f"{t.get('acked', 0):,} / {t.get('batches', 0):,}", "all"),
            ("storm: connections lost", f"{t.get('connections_lost', 0):,}", ""),
            ("storm: reconnects", f"{t.get('reconnects', 0):,}", ""),
            ("storm: connect failures", f"{t.get('connect_failures', 0):,}", ""),
            (
                "storm: first loss -> every device back",
                f"{t.get('full_reconnect_s') or 0:.1f}s",
                f"~{devices / args.connect_rate:.1f}s at the rate",
            ),
        ]
    for row in rows:
        table.add_row(*row)
    return table


if __name__ == "__main__":
    main()
