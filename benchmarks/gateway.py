"""Gateway benchmark: forwarding throughput and backlog drain, against a Mosquitto bridge and
the raw QoS 1 ceiling, all measured in one run on this machine.

    .venv/bin/python benchmarks/gateway.py [--messages 20000] [--backlog 100000]

  (a) gateway forwarding: a QoS 1 publisher sends signed envelopes to the edge broker; the gateway
      verifies, commits, acks, forwards; a subscriber counts them on the cloud broker.
      --receipts on|off|both (default both): the same, receipts off (as above) and on: the
      subscriber answers every message as the cloud would, each device's receipt published
      retained, QoS 1, through cloud.worker.receipts.ReceiptSender coalescing at --receipt-interval
      (default 0.25 s), and with --uncoalesced (default) once more at interval 0; the gateway
      relays them to the edge broker, where a subscriber counts them (as the devices would).
  (b) gateway drain: with the cloud broker down, the backlog is published and committed (that
      phase gives the sustained verified-ingest rate); then the cloud broker returns and we time
      until the subscriber has every envelope.
  (c) the same two workloads through a Mosquitto QoS 1 bridge between the same two brokers.
  (d) the ceiling: one QoS 1 publisher through one Mosquitto to one subscriber.
Every publisher and subscriber is its own process; the gateway's peak RSS is read from /proc.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._json import ratio as _ratio
from benchmarks._json import write_json
from benchmarks._mqtt import (
    Counter,
    Envelope,
    Sink,
    bench_tls,
    bench_wire,
    bridge_config,
    peak_rss_kib,
    publish_all,
    raw_ceiling,
    register_session,
    signed_envelopes,
    wait_for,
)
from cloud.config import DEFAULT_RECEIPT_INTERVAL_S
from devices.election_file import load_election, sample_election_path
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess, BrokerSettings, mosquitto_binary
from edgetally.processes import Component
from edgetally.wire import Wire
from gateway._exceptions import GatewayError
from gateway.inspect.snapshot import buffer_stats
from protocol import RECEIPT_FILTER, Registry, provision

console = Console(width=max(Console().width, 120))


OFF, ON, UNCOALESCED = "off", "on", "on, not coalesced"


@dataclass
class Forward:
    """One forwarding run: its rate, and the receipts (if on) published, coalesced away,
    not acknowledged by the cloud broker at the end, and carried by the edge broker."""

    rate: float = 0.0
    interval: float | None = None
    receipts: int = 0
    superseded: int = 0
    unconfirmed: int = 0
    edge_receipts: int = 0


@dataclass
class Figures:
    forward: dict[str, Forward] = field(default_factory=dict)  # by receipt mode
    ingest_rate: float = 0.0
    drain_s: float = 0.0
    drain_from_restart_s: float = 0.0
    peak_rss_mib: float = 0.0



class Pair:
    """Edge and cloud brokers, with either a bridge (edge -> cloud) or our gateway between them."""

    def __init__(self, work: Path, *, bridge: bool, wire: Wire | None = None) -> None:
        self.work = work
        self.wire = wire
        tls = (None, None) if wire is None else (wire.broker(BrokerKind.EDGE), wire.broker(BrokerKind.CLOUD))
        self.cloud = BrokerProcess(work / "cloud-broker", name="cloud-broker", tls=tls[1])
        extra = bridge_config(self.cloud.port) if bridge else ""
        self.edge = BrokerProcess(
            work / "edge-broker", name="edge-broker", settings=BrokerSettings(extra=extra), tls=tls[0]
        )
        self.gateway: Component | None = None
        self.buffer = work / "buffer.db"

    def start_gateway(self, keys: Path, extra_args: Sequence[str]) -> Component:
        self.gateway = Component(
            "gateway",
            [
                "--log-level",
                "WARNING",
                "gateway",
                "run",
                "--edge",
                self.edge.url,
                "--cloud",
                self.cloud.url,
                "--buffer",
                str(self.buffer),
                "--keys",
                str(keys),
                *([] if self.wire is None else ["--pki", str(self.wire.pki)]),
                *extra_args,
            ],
            self.work,
        )
        self.gateway.start()
        self.gateway.wait_ready(60)
        return self.gateway

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        self.edge.stop()
        self.cloud.stop()


def _stored(buffer: Path) -> int:
    try:
        return int(buffer_stats(buffer).total)
    except GatewayError:  # the file may be mid-creation; keep polling
        return -1


def run_forward(
    work: Path,
    keys: Path,
    forward: Sequence[Envelope],
    *,
    bridge: bool,
    gateway_args: Sequence[str],
    mode: str = OFF,
    interval: float | None = None,
    wire: Wire | None = None,
) -> Forward:
    """(a) forwarding with the link up; with ``interval``, receipts answered at that interval;
    with ``wire``, over TLS with client certificates and ACLs."""
    label = "bridge" if bridge else "gateway"
    name = f"{label}-forward" + ("" if interval is None else f"-receipts-{interval:g}") + ("" if wire is None else "-tls")
    pair = Pair(work / name, bridge=bridge, wire=wire)
    pair.cloud.start()
    pair.edge.start()
    counter = None
    try:
        sink = Sink(
            pair.cloud.port,
            len(forward),
            client_id=f"{label}-fwd-sink",
            receipt_interval=interval,
            tls=bench_tls(wire, "bench-sink"),
            keys=keys,
        )
        sink.start()
        if interval is not None:
            counter = Counter(pair.edge.port, RECEIPT_FILTER).start()
        if not bridge:
            pair.start_gateway(keys, gateway_args)
        with console.status(f"{label}: forwarding {len(forward):,} envelopes, receipts {mode}"):
            started = publish_all(pair.edge.port, forward, tls=bench_tls(wire, "bench-pub"))
            received, _first, last = sink.result(600)
        if received < len(forward):
            raise RuntimeError(f"{label} forwarding lost messages: {received}/{len(forward)}")
        figures = Forward(len(forward) / (last - started), interval)
        if counter is not None:
            figures.receipts = sink.receipts
            figures.superseded = sink.superseded
            figures.unconfirmed = sink.unconfirmed
            with console.status("waiting for the edge broker's receipts"):
                figures.edge_receipts = counter.settle(sink.receipts, 30)
        return figures
    finally:
        if counter is not None:
            counter.stop()
        pair.stop()


def run_pair(
    work: Path,
    keys: Path,
    forward: Sequence[Envelope],
    backlog: Sequence[Envelope],
    *,
    bridge: bool,
    gateway_args: Sequence[str],
    receipt_modes: Sequence[tuple[str, float | None]] = ((OFF, None),),
) -> Figures:
    figures = Figures()
    label = "bridge" if bridge else "gateway"
    # (a) forwarding with the link up, one run per receipt mode, back to back
    for mode, interval in receipt_modes:
        figures.forward[mode] = run_forward(
            work,
            keys,
            forward,
            bridge=bridge,
            gateway_args=gateway_args,
            mode=mode,
            interval=interval,
        )

    # (b) backlog built during an outage, then drained
    pair = Pair(work / f"{label}-drain", bridge=bridge)
    pair.cloud.start()
    register_session(pair.cloud.port, f"{label}-drain-sink")
    pair.cloud.stop()
    pair.edge.start()
    try:
        if not bridge:
            gateway = pair.start_gateway(keys, gateway_args)
        with console.status(f"{label}: building a backlog of {len(backlog):,} during an outage"):
            started = time.time()
            publish_all(pair.edge.port, backlog)
            if not bridge:
                wait_for(
                    lambda: _stored(pair.buffer) >= len(backlog),
                    900,
                    "the backlog committed to the buffer",
                )
                figures.ingest_rate = len(backlog) / (time.time() - started)
        with console.status(f"{label}: draining {len(backlog):,}"):
            restart = time.time()
            pair.cloud.start()
            sink = Sink(pair.cloud.port, len(backlog), client_id=f"{label}-drain-sink")
            sink.start()
            received, first, last = sink.result(900)
        if received < len(backlog):
            raise RuntimeError(f"{label} drain lost messages: {received}/{len(backlog)}")
        figures.drain_s = last - first
        figures.drain_from_restart_s = last - restart
        if not bridge and gateway.pid is not None:
            figures.peak_rss_mib = peak_rss_kib(gateway.pid) / 1024
    finally:
        pair.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, default=20_000, help="envelopes for the forwarding runs"
    )
    parser.add_argument(
        "--backlog", type=int, default=100_000, help="envelopes buffered during the outage"
    )
    parser.add_argument(
        "--gateway-arg", action="append", default=[], help="extra `gateway run` option (repeatable)"
    )
    parser.add_argument("--skip-bridge", action="store_true")
    parser.add_argument(
        "--receipts",
        choices=("on", "off", "both"),
        default="both",
        help="forwarding with receipts off, on, or both (default)",
    )
    parser.add_argument(
        "--receipt-interval",
        type=float,
        default=DEFAULT_RECEIPT_INTERVAL_S,
        help="receipts on: at most one per device per this many seconds (cloud run's default)",
    )
    parser.add_argument(
        "--uncoalesced",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="receipts on: also measure interval 0, every receipt published (default: yes)",
    )
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also forward over TLS with client certificates and ACLs (receipts off), against plain (default: yes)",
    )
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    modes: list[tuple[str, float | None]] = []
    if args.receipts in ("off", "both"):
        modes.append((OFF, None))
    if args.receipts in ("on", "both"):
        modes.append((ON, args.receipt_interval))
        if args.uncoalesced and args.receipt_interval > 0:
            modes.append((UNCOALESCED, 0.0))
    if mosquitto_binary() is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    version = subprocess.run(
        [mosquitto_binary() or "mosquitto", "-h"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {version}"
    )
    work = Path(tempfile.mkdtemp(prefix="edgetally-gwbench-"))
    try:
        election = load_election(sample_election_path())
        keys = work / "keys"
        provision(election, keys)
        with console.status("signing envelopes"):
            backlog = signed_envelopes(election, keys, args.backlog, seed=1)
            forward = signed_envelopes(election, keys, args.messages, seed=2)
        size = sum(len(p) for _, p in forward) // len(forward)
        with console.status("ceiling: one QoS 1 publisher through one Mosquitto"):
            top = raw_ceiling(work, forward)
        gw = run_pair(
            work,
            keys,
            forward,
            backlog,
            bridge=False,
            gateway_args=args.gateway_arg,
            receipt_modes=modes,
        )
        tls_rate = 0.0
        if args.tls:
            wire = bench_wire(work, keys, Registry.load(keys))
            tls_rate = run_forward(
                work, keys, forward, bridge=False, gateway_args=args.gateway_arg, wire=wire
            ).rate
        br = (
            Figures()
            if args.skip_bridge
            else run_pair(work, keys, forward, backlog, bridge=True, gateway_args=[])
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(
        title=f"Gateway benchmark ({size} B envelopes; forward {args.messages:,}, backlog {args.backlog:,})"
    )
    table.add_column("measurement")
    table.add_column("gateway", justify="right")
    table.add_column("bridge (baseline)", justify="right")
    table.add_column("gateway / bridge", justify="right")
    table.add_column("gateway / ceiling", justify="right")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    off = gw.forward.get(OFF, Forward()).rate
    bridge_rate = br.forward.get(OFF, Forward()).rate
    if off:
        table.add_row(
            "(a) forwarding, batches/s (receipts off)",
            f"{off:,.0f}",
            f"{bridge_rate:,.0f}",
            ratio(off, bridge_rate),
            ratio(off, top),
        )
    table.add_row(
        "verified ingest during outage, batches/s",
        f"{gw.ingest_rate:,.0f}",
        "- (no verify)",
        "-",
        ratio(gw.ingest_rate, top),
    )
    table.add_row(
        "(b) drain of backlog, s (first to last arrival)",
        f"{gw.drain_s:.1f}",
        f"{br.drain_s:.1f}",
        ratio(br.drain_s, gw.drain_s) + " (speed)",
        "-",
    )
    table.add_row(
        "    drain from cloud broker restart, s",
        f"{gw.drain_from_restart_s:.1f}",
        f"{br.drain_from_restart_s:.1f}",
        "-",
        "-",
    )
    table.add_row(
        "(d) ceiling: 1 publisher -> 1 Mosquitto, msg/s", "", "", "", f"{top:,.0f} = 1.00"
    )
    table.add_row("gateway peak RSS, MiB", f"{gw.peak_rss_mib:.0f}", "", "", "")
    console.print(table)
    if tls_rate and off:
        tls_table = Table(title=f"(a) gateway forwarding of {args.messages:,} batches, plain vs TLS (receipts off)")
        for column in ("wire", "batches/s", "/ plain", "TLS cost"):
            tls_table.add_column(column, justify="right" if column != "wire" else "left")
        tls_table.add_row("plain MQTT over TCP, anonymous", f"{off:,.0f}", "1.00", "-")
        tls_table.add_row(
            "TLS 1.3, client certificates, ACLs", f"{tls_rate:,.0f}", ratio(tls_rate, off), f"{(1 - tls_rate / off) * 100:.0f} %"
        )
        console.print(tls_table)
    if any(mode != OFF for mode in gw.forward):
        console.print(_receipts_table(gw.forward, top, len(forward)))
    write_json(args.json, {
        "gateway.bridge_ratio": _ratio(off, bridge_rate), "gateway.ceiling_ratio": _ratio(off, top),
        "gateway.ingest_ceiling_ratio": _ratio(gw.ingest_rate, top),
        "gateway.drain_speed_bridge_ratio": _ratio(br.drain_s, gw.drain_s),
        "gateway.receipts_on_off_ratio": _ratio(gw.forward.get(ON, Forward()).rate, off),
        "gateway.receipts_uncoalesced_off_ratio": _ratio(gw.forward.get(UNCOALESCED, Forward()).rate, off),
        "gateway.tls_plain_ratio": _ratio(tls_rate, off),
    }, {"ceiling_per_s": top, "forward_per_s": off, "peak_rss_mib": gw.peak_rss_mib})  # fmt: skip


def _receipts_table(runs: dict[str, Forward], top: float, messages: int) -> Table:
    """(a) forwarding with receipts off and on: rates, ratios to off, receipts counted."""
    table = Table(
        title=f"(a) gateway forwarding of {messages:,} batches with receipts"
        " (cloud broker -> gateway relay -> edge broker; QoS 1, retained)"
    )
    table.add_column("receipts")
    table.add_column("batches/s", justify="right")
    table.add_column("/ receipts off", justify="right")
    table.add_column("/ ceiling", justify="right")
    table.add_column("published", justify="right")
    table.add_column("coalesced away", justify="right")
    table.add_column("at edge broker", justify="right")
    off = runs.get(OFF, Forward()).rate
    for mode, run in runs.items():
        if mode == OFF:
            name = "off"
        elif run.interval:
            name = f"on, coalesced ({run.interval:g} s)"
        else:
            name = "on, not coalesced (0 s)"
        on = mode != OFF
        table.add_row(
            name,
            f"{run.rate:,.0f}",
            f"{run.rate / off:.2f}" if off else "-",
            f"{run.rate / top:.2f}" if top else "-",
            f"{run.receipts:,}" if on else "-",
            f"{run.superseded:,}" if on else "-",
            f"{run.edge_receipts:,}" if on else "-",
        )
    return table


if __name__ == "__main__":
    main()
