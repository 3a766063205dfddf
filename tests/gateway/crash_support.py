"""The crash tests' rig: two real Mosquitto brokers, the real cloud worker (`edgetally cloud run`
on SQLite), and `edgetally gateway run` as a subprocess that is SIGKILLed and restarted on the
same buffer file. The end check reads the cloud's ledger and `edgetally cloud results --json`
and compares them with `devices.generator.expected_totals`.

Every wait is bounded. The end of a run is found with a *sentinel*: one batch held back until
the last gateway is up. The edge broker hands a session its unacknowledged and queued
messages before anything published later, the gateway commits in arrival order and forwards
in buffer order, and the cloud commits in arrival order; so once the sentinel is in the
ledger, everything published before it is there too, unless it was lost. A loss therefore
fails within seconds, naming the batches, instead of waiting out a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from devices.generator import ExpectedTotals, expected_totals
from edgetally.brokers import BrokerProcess
from gateway.faults import FAULT_DIR_ENV, marker_path
from protocol import Election
from tests.gateway.support import SEED, Publishers, Sent, envelopes, publish_all
from tests.helpers import edgetally_cmd, run_cli, wait_until
from tests.support.wire import pki_args

Key = tuple[str, int]  # (device, seq)


@dataclass(frozen=True)
class Workload:
    """The batches of ``devices``; the last one is the sentinel, published last of all."""

    election: Election
    devices: tuple[str, ...]
    batches: int
    sent: tuple[Sent, ...]

    @classmethod
    def make(cls, election: Election, keys: Path, devices: Sequence[str], batches: int) -> Workload:
        return cls(election, tuple(devices), batches, tuple(envelopes(election, keys, devices, batches)))

    @property
    def body(self) -> tuple[Sent, ...]:
        return self.sent[:-1]

    @property
    def sentinel(self) -> Sent:
        return self.sent[-1]

    @property
    def keys(self) -> set[Key]:
        return {(s.device, s.seq) for s in self.sent}

    def expected(self) -> ExpectedTotals:
        return expected_totals(self.election, SEED, self.batches, list(self.devices))


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    ready: Path
    started: float

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Rig:
    workdir: Path
    edge: BrokerProcess
    cloud_broker: BrokerProcess
    keys: Path
    processes: list[subprocess.Popen[bytes]]
    extra: Sequence[str] = ()
    buffer: Path | None = None
    gateway: Gateway | None = None
    starts: int = 0
    kills: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db = self.workdir / "cloud.db"
        self.faults = self.workdir / "faults"
        self.faults.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "gateway.log"
        if self.buffer is None:
            self.buffer = self.workdir / "buffer.db"

    # -- processes ------------------------------------------------------------------
    def _spawn(self, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                edgetally_cmd(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})},
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def start_cloud(self) -> None:
        ready = self.workdir / "cloud.ready"
        ready.unlink(missing_ok=True)
        proc = self._spawn(
            ["cloud", "run", "--broker", self.cloud_broker.url, "--db", f"sqlite:///{self.db}",
             "--keys", str(self.keys), "--ready-file", str(ready), *pki_args(self.cloud_broker.url)],
            self.workdir / "cloud.log",
        )  # fmt: skip
        wait_until(lambda: ready.exists() or proc.poll() is not None, 30, "the cloud worker ready")
        assert proc.poll() is None, f"cloud worker exited {proc.returncode}: {self.tail('cloud.log')}"

    def start_gateway(
        self, *, env: Mapping[str, str] | None = None, wait_ready: bool = True
    ) -> Gateway:
        assert self.gateway is None or not self.gateway.alive(), "a gateway is still running"
        self.starts += 1
        ready = self.workdir / "gateway.ready"
        ready.unlink(missing_ok=True)  # a killed gateway leaves its ready file behind
        with open(self.log, "ab") as out:
            out.write(f"--- start #{self.starts} env={dict(env or {})}\n".encode())
        proc = self._spawn(
            ["gateway", "run", "--edge", self.edge.url, "--cloud", self.cloud_broker.url,
             "--buffer", str(self.buffer), "--keys", str(self.keys), "--ready-file", str(ready),
             *pki_args(self.edge.url, self.cloud_broker.url), *self.extra],
            self.log,
            {FAULT_DIR_ENV: str(self.faults), **(env or {})},
        )  # fmt: skip
        self.gateway = Gateway(proc, ready, time.monotonic())
        if wait_ready:
            self.wait_ready()
        return self.gateway

    def wait_ready(self) -> None:
        gw = self.gateway
        assert gw is not None
        wait_until(lambda: gw.ready.exists() or not gw.alive(), 30, "the gateway ready file")
        assert gw.alive(), f"gateway exited {gw.proc.returncode}:\n{self.tail('gateway.log')}"

    def kill_gateway(self, why: str = "") -> None:
        gw = self.gateway
        assert gw is not None and gw.alive(), f"the gateway died before the kill:\n{self.tail('gateway.log')}"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
        self.kills.append(why)

    def stop_gateway(self) -> int:
        gw = self.gateway
        assert gw is not None
        gw.proc.send_signal(signal.SIGTERM)
        return gw.proc.wait(30)

    def wait_fault(self, point: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for the gateway to block at ``point``; return the marker's content."""
        marker = marker_path(self.faults, point)
        gw = self.gateway
        assert gw is not None
        wait_until(lambda: marker.exists() or not gw.alive(), timeout, f"fault point {point!r}")
        assert gw.alive(), f"gateway exited {gw.proc.returncode}:\n{self.tail('gateway.log')}"
        data: dict[str, Any] = json.loads(marker.read_text())
        marker.unlink()
        return data

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / name
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- observation ------------------------------------------------------------------
    def ledger(self) -> dict[Key, int]:
        """(device, seq) -> duplicates, straight from the cloud's ledger table (read-only)."""
        if not self.db.exists():
            return {}
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as conn:
            try:
                rows = conn.execute("SELECT device, seq, duplicates FROM ledger").fetchall()
            except sqlite3.OperationalError:  # not migrated yet
                return {}
        return {(device, seq): dups for device, seq, dups in rows}

    def buffer_states(self) -> dict[str, int]:
        """Rows per state in the gateway's buffer (read-only; works while the gateway runs)."""
        assert self.buffer is not None
        if not self.buffer.exists():
            return {}
        with contextlib.closing(
            sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True, timeout=10)
        ) as conn:
            try:
                rows = conn.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall()
            except sqlite3.OperationalError:
                return {}
        return dict(rows)

    def buffer_keys(self, state: str) -> set[Key]:
        assert self.buffer is not None
        with contextlib.closing(
            sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True, timeout=10)
        ) as conn:
            rows = conn.execute("SELECT device, seq FROM messages WHERE state = ?", (state,)).fetchall()
        return {(device, seq) for device, seq in rows}

    def outbound(self) -> int:
        states = self.buffer_states()
        return states.get("pending", 0) + states.get("inflight", 0)

    def live(self) -> int:
        states = self.buffer_states()
        return sum(states.get(s, 0) for s in ("pending", "inflight", "quarantined"))

    # -- the end check ------------------------------------------------------------------
    def finish(self, work: Workload, *, min_duplicates: int = 0, timeout: float = 60) -> dict[str, Any]:
        """Publish the sentinel, wait for it in the ledger and an empty outbound buffer, then
        check every batch is in the ledger exactly once with exact totals. Returns results."""
        sentinel = (work.sentinel.device, work.sentinel.seq)
        publish_all(self.edge.url, [(work.sentinel.topic, work.sentinel.payload)])
        wait_until(lambda: sentinel in self.ledger(), timeout, f"the sentinel {sentinel} in the ledger")
        wait_until(lambda: self.outbound() == 0, 30, "the gateway's buffer drained")
        ledger = self.ledger()
        lost = sorted(work.keys - set(ledger))
        extra = sorted(set(ledger) - work.keys)
        assert not lost, (
            f"LOST {len(lost)} of {len(work.keys)} batches (acknowledged upstream, never in the"
            f" cloud ledger): " + ", ".join(f"device={d} seq={s}" for d, s in lost[:25])
            + (" ..." if len(lost) > 25 else "") + f"; kills: {self.kills}"
        )
        assert not extra, f"the ledger holds batches nobody sent: {extra[:10]}"
        results = json.loads(
            run_cli("--log-level", "WARNING", "cloud", "results", "--db", f"sqlite:///{self.db}", "--json").stdout
        )
        expected = work.expected()
        assert results["batches"] == expected.batches == len(ledger), (results["batches"], expected.batches)
        assert results["ballots"] == expected.ballots
        assert results["contests"] == expected.contests
        assert results["ballots_by_precinct"] == expected.by_precinct
        assert results["rejections"] == 0, results
        assert results["duplicates"] == sum(ledger.values())
        assert results["duplicates"] >= min_duplicates, (
            f"expected at least {min_duplicates} duplicate deliveries absorbed by the ledger,"
            f" got {results['duplicates']}"
        )
        return dict(results)


class Publisher:
    """Publishes ``items`` QoS 1 to the edge broker from a thread, at ``rate`` per second
    (0 = as fast as the broker takes them); ``join`` waits for every PUBACK."""

    def __init__(self, url: str, items: Sequence[tuple[str, bytes]], rate: float = 0) -> None:
        self.url = url
        self.items = list(items)
        self.rate = rate
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if self.rate <= 0:
                publish_all(self.url, self.items)
                return
            publishers = Publishers(self.url)
            try:
                started = time.monotonic()
                infos = []
                for index, (topic, payload) in enumerate(self.items):
                    due = started + index / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # pacing the stream, not waiting for anything
                    info = publishers.client(topic).publish(topic, payload, qos=1)
                    assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish rc {info.rc}"
                    infos.append(info)
                for info in infos:
                    info.wait_for_publish(timeout=30)
                    assert info.is_published(), "the edge broker did not acknowledge a publish"
            finally:
                publishers.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by join()
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the publisher did not finish within {timeout:.0f}s"
        if self.error is not None:
            raise AssertionError(f"publisher failed: {self.error!r}") from self.error
