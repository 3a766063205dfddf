"""Throughput of the EdgeTally pipeline against a raw paho-mqtt baseline, measured in one run.

    .venv/bin/python -m benchmarks.pipeline [--batches-per-device 1000] [--baseline-messages 20000]
                                            [--ceiling BATCHES_PER_S] [--json FILE]

Prints, as a table, with the machine noted:
  * raw paho QoS 1 publisher -> Mosquitto -> paho subscriber (separate processes), envelope-sized
    payloads: the ceiling any MQTT pipeline on this machine works under;
  * ``protocol.verify`` per second against a bare Ed25519 verify of the same bytes;
  * EdgeTally end to end: fleet -> edge broker -> gateway (verify, SQLite commit, manual ack) ->
    cloud broker -> cloud (verify, ledger + tallies in one transaction) -> receipts back to the
    devices, from fleet start until every device is confirmed (receipts on: a device is
    confirmed by its receipt), 1000 batches per device by default (91,000: about 40 s on a
    quiet 2-core machine; a device with no receipt progress for 10 s resends its oldest 64);
  * that end-to-end rate as a ratio of the CPU budget's ceiling (benchmarks/budget.py: 2 cores /
    CPU per batch of every stage), measured in the same run (one process run of 6,000 batches),
    or given with --ceiling by a caller that measured it in the same session (scripts/bench all).
Ratios are against the baseline measured in the same run; --json FILE writes them too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from rich.console import Console
from rich.table import Table

from benchmarks import budget as cpu_budget
from devices.election_file import load_election
from devices.tabulator import Tabulator
from edgetally.brokers import BrokerProcess, mosquitto_binary
from edgetally.stack import Stack, StackConfig
from protocol import Registry, provision, verify

ROOT = Path(__file__).resolve().parents[1]


def _sink(port: int, count: int, ready: mp.Event, result: mp.Queue) -> None:  # type: ignore[type-arg]
    received = 0
    first = 0.0
    done = mp.Event()

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal received, first
        if received == 0:
            first = time.perf_counter()
        received += 1
        if received >= count:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sink", protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.on_connect = lambda c, *_: (c.subscribe("bench/#", 1), ready.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(120)
    result.put((received, time.perf_counter() - first if first else 0.0))
    client.loop_stop()


def baseline_paho(port: int, payload: bytes, count: int) -> float:
    """Messages per second, QoS 1, publisher window 1000, publisher and subscriber in own processes."""
    ready = mp.Event()
    result: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    sink = mp.Process(target=_sink, args=(port, count, ready, result))
    sink.start()
    ready.wait(10)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    infos = []
    for i in range(count):
        info = client.publish(f"bench/{i % 100}", payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed rc={info.rc}")
        infos.append(info)
    for info in infos:
        info.wait_for_publish(60)
    received, _ = result.get(timeout=120)
    elapsed = time.perf_counter() - start
    sink.join(10)
    client.loop_stop()
    if received < count:
        raise RuntimeError(f"baseline lost messages: {received}/{count}")
    return count / elapsed


def verify_rates(registry: Registry, payloads: list[bytes], rounds: int = 3) -> tuple[float, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from protocol import parse_body, parse_envelope

    best_full = best_raw = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for payload in payloads:
            verify(payload, registry)
        best_full = max(best_full, len(payloads) / (time.perf_counter() - start))
        prepared = []
        for payload in payloads:
            env = parse_envelope(payload)
            device = parse_body(env.body).device
            prepared.append((Ed25519PublicKey.from_public_bytes(registry.devices[device].public_key.raw), env))
        start = time.perf_counter()
        for key, env in prepared:
            key.verify(env.sig, env.body)
        best_raw = max(best_raw, len(prepared) / (time.perf_counter() - start))
    return best_full, best_raw


def pipeline(workdir: Path, batches_per_device: int, seed: int) -> tuple[int, float, int]:
    """Batches, seconds from fleet start until every device is confirmed, and the fleet's resends
    (batches published again after ``resend_after`` s without receipt progress)."""
    stack = Stack(
        StackConfig(
            workdir=workdir,
            election_file=ROOT / "elections" / "sample.yaml",
            seed=seed,
            batches_per_device=batches_per_device,
            resend_after=10.0,
            fleet_timeout=600,
            embedded_brokers=False,
        )
    )
    try:
        stack.start()
        total = stack.expected().batches
        start = time.perf_counter()
        stack.start_fleet()
        code = stack.fleet.wait(600)
        elapsed = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"fleet exited {code}: {stack.fleet.tail()}")
        results = stack.results()
        if results["batches"] != total:
            raise RuntimeError(f"ledger holds {results['batches']} of {total}")
        summary = stack.fleet_summary() or {}
        return total, elapsed, int(summary.get("resends") or 0)
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches-per-device", type=int, default=1000, help="91 devices x this: ~40 s on a quiet 2-core machine")
    parser.add_argument("--baseline-messages", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ceiling", type=float, default=0.0, help="the CPU budget's ceiling, batches/s (0: measure it now)")
    parser.add_argument("--budget-batches", type=int, default=6000, help="batches of the budget's process run")
    parser.add_argument("--json", type=Path, help="also write the figures and ratios to this file")
    args = parser.parse_args()
    console = Console()
    if mosquitto_binary() is None:
        raise SystemExit("the benchmark needs mosquitto (apt-get install mosquitto)")
    mosq_version = subprocess.run([mosquitto_binary() or "mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {mosq_version}"
    )
    with tempfile.TemporaryDirectory(prefix="edgetally-bench-") as tmp:
        work = Path(tmp)
        election = load_election(ROOT / "elections" / "sample.yaml")
        registry = provision(election, work / "keys")
        payloads = [
            b.payload
            for device in election.devices[:20]
            for b in Tabulator.load(election, work / "keys", device, args.seed, 10).batches
        ]
        avg = sum(map(len, payloads)) // len(payloads)
        with console.status("baseline: raw paho QoS 1 through Mosquitto"):
            broker = BrokerProcess(work / "baseline-broker", name="baseline")
            broker.start()
            try:
                base = baseline_paho(broker.port, payloads[0], args.baseline_messages)
            finally:
                broker.stop()
        with console.status("verify rates"):
            full, raw = verify_rates(registry, payloads)
        with console.status(f"EdgeTally end to end: 91 devices x {args.batches_per_device} batches"):
            total, elapsed, resends = pipeline(work / "pipeline", args.batches_per_device, args.seed)
        top = args.ceiling
        if top <= 0:
            top = cpu_budget.measure(work / "budget", batches=args.budget_batches, repeat=1).ceiling
    rate = total / elapsed
    table = Table(title=f"EdgeTally throughput (envelopes of ~{avg} B)")
    table.add_column("measurement")
    table.add_column("count", justify="right")
    table.add_column("per second", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row("raw paho QoS 1 -> mosquitto -> paho (baseline)", f"{args.baseline_messages:,}", f"{base:,.0f}", "1.00")
    table.add_row(
        "EdgeTally end to end: fleet start until every device confirmed", f"{total:,}", f"{rate:,.0f}", f"{rate / base:.2f} of baseline"
    )
    table.add_row(
        "EdgeTally end to end / CPU budget ceiling (2 cores / CPU per batch)", "", f"{top:,.0f}", f"{rate / top:.2f} of ceiling"
    )
    table.add_row("bare Ed25519 verify (one core)", f"{len(payloads):,}", f"{raw:,.0f}", "1.00")
    table.add_row("protocol.verify (parse + checks + Ed25519)", f"{len(payloads):,}", f"{full:,.0f}", f"{full / raw:.2f} of bare")
    console.print(table)
    console.print(f"end to end: {total:,} batches in {elapsed:.1f} s; the fleet resent {resends:,} (no receipt progress for 10 s)")
    if resends:
        console.print(f"note: {resends:,} resends for {total:,} batches: the end-to-end figure is the resend storm's, not the pipeline's steady rate")
    if elapsed < 30:
        console.print(f"note: the end-to-end run took {elapsed:.1f} s, under 30 s: raise --batches-per-device for a sustained figure")
    if args.json is not None:
        figures = {
            "machine": cpu_budget.machine(),
            "figures": {"baseline_per_s": base, "e2e_batches": total, "e2e_seconds": elapsed, "e2e_per_s": rate, "resends": resends,
                        "ceiling_per_s": top, "verify_per_s": full, "bare_verify_per_s": raw},
            "ratios": {"pipeline.e2e_raw_paho_ratio": rate / base, "e2e.ceiling_ratio": rate / top,
                       "pipeline.verify_bare_ratio": full / raw},
        }  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
