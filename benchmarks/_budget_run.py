"""The CPU budget's process stages: the real processes of one batch's path, run together
through N batches, each one's CPU (utime + stime from ``/proc/PID/stat``, waited-for children
included) read just before the first publish and once the last receipt has reached the edge
broker, divided by N.

The path, as ``scripts/bench pipeline`` runs it (TLS with client certificates and ACLs unless
``tls=False``; receipts on, the cloud's default coalescing; the cloud's default rules):

  publisher (paho, QoS 1, 1,000 in flight: stands in for the devices' MQTT clients; this
  process's CPU while it publishes) -> edge Mosquitto -> ``edgetally gateway run`` (verify,
  SQLite buffer, ack, forward in bundles, relay receipts down) -> cloud Mosquitto ->
  ``edgetally cloud run`` (verify, ledger + tallies, receipts signed and published) -> back up
  the same way -> a receipt subscriber on the edge broker (paho, counting: stands in for the
  devices' MQTT receive of their receipts).

Each process is its own row, so nothing is counted twice; the brokers' rows hold both
directions (batches up, receipts down). Idle CPU in the short settle window at the end (about a
second) is included and is small next to the run's.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.synchronize
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from benchmarks._mqtt import Envelope, _client, bench_tls, bench_wire, publish_all
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess
from edgetally.processes import Component
from protocol import RECEIPT_FILTER, Registry
from protocol.tls import ClientTls

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROCESS_STAGES = ("publisher", "edge_broker", "gateway", "cloud_broker", "cloud_worker", "receipt_subscriber")


def proc_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` in seconds (``/proc/PID/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


@dataclass
class ProcessRun:
    """One run: batches, wall seconds from first publish to last receipt, CPU seconds per
    process stage, receipts that reached the edge broker's subscriber."""

    batches: int
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    receipts: int = 0

    def us_per_batch(self, stage: str) -> float:
        return self.cpu_s[stage] * 1e6 / self.batches


def _receipt_counter_main(
    port: int, tls: ClientTls | None, ready: mp.synchronize.Event, stop: mp.synchronize.Event, count: Any
) -> None:
    def on_message(_c: mqtt.Client, _u: object, _message: mqtt.MQTTMessage) -> None:
        with count.get_lock():
            count.value += 1

    client = _client("bench-counter", clean_session=True, tls=tls)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(RECEIPT_FILTER, 1)
    client.on_subscribe = lambda *_: ready.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    stop.wait(900)
    client.disconnect()
    client.loop_stop()


class ReceiptCounter:
    """A process counting the receipts on the edge broker (as the devices would get them)."""

    def __init__(self, port: int, tls: ClientTls | None) -> None:
        self._ready = mp.Event()
        self._stop = mp.Event()
        self._count = mp.Value("q", 0)
        self.proc = mp.Process(target=_receipt_counter_main, args=(port, tls, self._ready, self._stop, self._count), daemon=True)

    def start(self, timeout: float = 30) -> None:
        self.proc.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the receipt subscriber did not subscribe in time")

    @property
    def value(self) -> int:
        return int(self._count.value)

    def stop(self) -> None:
        self._stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def _ledger_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])
    except sqlite3.Error:
        return -1  # not created yet, or busy: poll again


def run_processes(
    work: Path, keys: Path, registry: Registry, envelopes: Sequence[Envelope], *, tls: bool = True, timeout: float = 300
) -> ProcessRun:
    """Publish ``envelopes`` (distinct, each device's in seq order) through the whole path once;
    every count checked: the ledger must hold all of them."""
    work.mkdir(parents=True)
    wire = bench_wire(work, keys, registry) if tls else None
    edge = BrokerProcess(work / "edge-broker", name="edge-broker", tls=None if wire is None else wire.broker(BrokerKind.EDGE))
    cloud = BrokerProcess(work / "cloud-broker", name="cloud-broker", tls=None if wire is None else wire.broker(BrokerKind.CLOUD))
    pki = [] if wire is None else ["--pki", str(wire.pki)]
    db = work / "cloud.db"
    worker = Component(
        "cloud", ["--log-level", "WARNING", "cloud", "run", "--broker", cloud.url, "--db", f"sqlite:///{db}", "--keys", str(keys), *pki], work
    )
    gateway = Component(
        "gateway",
        ["--log-level", "WARNING", "gateway", "run", "--edge", edge.url, "--cloud", cloud.url,
         "--buffer", str(work / "buffer.db"), "--keys", str(keys), *pki],
        work,
    )  # fmt: skip
    counter: ReceiptCounter | None = None
    run = ProcessRun(len(envelopes))
    try:
        edge.start()
        cloud.start()
        worker.start()
        worker.wait_ready(60)
        gateway.start()
        gateway.wait_ready(60)
        counter = ReceiptCounter(edge.port, bench_tls(wire, "bench-counter"))
        counter.start()
        pids = {"edge_broker": edge.pid, "gateway": gateway.pid, "cloud_broker": cloud.pid,
                "cloud_worker": worker.pid, "receipt_subscriber": counter.proc.pid}  # fmt: skip
        before = {stage: proc_cpu_s(pid) for stage, pid in pids.items() if pid is not None}
        own = time.process_time()
        started = time.monotonic()
        publish_all(edge.port, envelopes, tls=bench_tls(wire, "bench-pub"))
        run.cpu_s["publisher"] = time.process_time() - own
        deadline = time.monotonic() + timeout
        while _ledger_rows(db) < len(envelopes):
            for comp in (worker, gateway):
                if not comp.running:
                    raise RuntimeError(f"{comp.name} exited: {comp.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {_ledger_rows(db)} of {len(envelopes)} batches in the ledger after {timeout:.0f} s")
            time.sleep(0.05)
        # The last receipts: held by the cloud's coalescing for up to its interval, then relayed.
        last, stable_since = counter.value, time.monotonic()
        settle_deadline = time.monotonic() + 20
        while time.monotonic() - stable_since < 1.0 and time.monotonic() < settle_deadline:
            time.sleep(0.05)
            if counter.value != last:
                last, stable_since = counter.value, time.monotonic()
        run.wall_s = stable_since - started
        run.receipts = counter.value
        for stage, pid in pids.items():
            if pid is not None:
                run.cpu_s[stage] = proc_cpu_s(pid) - before[stage]
        if set(run.cpu_s) != set(PROCESS_STAGES):
            raise RuntimeError(f"no CPU figure for {sorted(set(PROCESS_STAGES) - set(run.cpu_s))}")
        if run.receipts == 0:
            raise RuntimeError("no receipt reached the edge broker")
        return run
    finally:
        if counter is not None:
            counter.stop()
        gateway.stop()
        worker.stop()
        edge.stop()
        cloud.stop()
