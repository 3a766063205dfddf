"""``edgetally demo``: the whole pipeline on one machine, an optional cloud outage, a verdict."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from edgetally.brokers import BrokerProcess
from edgetally.processes import Component, sigterm_as_ctrl_c
from edgetally.scenarios.cluster import ClusterNode, cluster_nodes
from edgetally.stack import Stack, StackConfig
from edgetally.verdict import Verdict, compare, render

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    election_file: Path
    devices: int = 0
    batches: int = 5
    seed: int = 2026
    rate: float = 60.0
    outage: float = 0.0
    outage_mode: str = "kill"  # "kill" (SIGKILL, queues lost) or "stop" (clean stop)
    outage_at: float = 0.25  # share of expected batches in the ledger when the outage starts
    workdir: Path | None = None
    keep: bool = False
    timeout: float = 240.0
    embedded_brokers: bool | None = None
    plain: bool = False  # anonymous MQTT over TCP without ACLs; default TLS, certificates, ACLs
    serve_port: int | None = None  # serve the live results page on this port (0: a free one) until Ctrl-C
    cloud_broker: str = "mosquitto"  # or nats: a 3-node JetStream cluster; the outage then takes one node


@dataclass
class _Observed:
    ledger: int = 0
    pending: int = 0
    inflight: int = 0
    quarantined: int = 0
    acked: int = 0
    receipted: int = 0
    cloud_link: str = "up"


class Demo:
    def __init__(self, config: DemoConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.workdir = config.workdir or Path(tempfile.mkdtemp(prefix="edgetally-demo-"))
        self.stack = Stack(
            StackConfig(
                workdir=self.workdir,
                election_file=config.election_file,
                seed=config.seed,
                batches_per_device=config.batches,
                devices=config.devices,
                rate=config.rate,
                resend_after=3.0,
                fleet_timeout=config.timeout,
                embedded_brokers=config.embedded_brokers,
                plain=config.plain,
                cloud_broker=config.cloud_broker,
            )
        )
        self.seen = _Observed()
        self._outage_name = "cloud broker"
        self.serve: Component | None = None
        if config.serve_port is not None:
            args = ["cloud", "serve", "--db", self.stack.db_url, "--port", str(config.serve_port), "--keys", str(self.stack.keys)]
            self.serve = Component("serve", args, self.workdir)
        self.events: list[str] = []
        self._t0 = time.monotonic()

    def _event(self, text: str) -> None:
        stamp = time.monotonic() - self._t0
        self.events.append(f"[{stamp:5.1f}s] {text}")
        log.info(text)

    def _outage_target(self) -> BrokerProcess | ClusterNode:
        """What the outage takes down: the cloud broker, or on NATS the node leading the stream."""
        cluster = self.stack.cluster
        if cluster is None:
            assert isinstance(self.stack.cloud_broker, BrokerProcess)
            self._outage_name = "cloud broker"
            return self.stack.cloud_broker
        node = cluster_nodes(cluster, "cloud-node-leader", None)[0]
        self._outage_name = f"NATS node {node.node} (the MQTT stream's leader)"
        return node

    def _observe(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.seen.ledger = int(self.stack.results().get("batches", 0))
        try:
            states = self.stack.buffer_stats()["states"]
            self.seen.pending = int(states.get("pending", 0))
            self.seen.inflight = int(states.get("inflight", 0))
            self.seen.quarantined = int(states.get("quarantined", 0))
        except (RuntimeError, KeyError):
            pass
        summary = self.stack.fleet_summary()
        if summary is not None:
            self.seen.acked = int(summary.get("acked", 0))
            self.seen.receipted = int(summary.get("receipted", 0))

    def _view(self, total: int, progress: Progress, bars: dict[str, Any]) -> Group:
        progress.update(bars["acked"], completed=self.seen.acked)
        progress.update(bars["ledger"], completed=self.seen.ledger)
        progress.update(bars["receipted"], completed=self.seen.receipted)
        table = Table(show_header=True, title="Pipeline", title_justify="left")
        for col in ("edge broker", "gateway pending / in flight", "cloud link", "cloud", "fleet"):
            table.add_column(col)
        fleet_state = "running" if self.stack.fleet.running else f"exited {self.stack.fleet.returncode}"
        table.add_row(
            "up" if self.stack.edge.running else "down",
            f"{self.seen.pending} / {self.seen.inflight}",
            "[green]up[/]" if self.seen.cloud_link == "up" else f"[bold red]{self.seen.cloud_link}[/]",
            "up" if self.stack.cloud.running else "down",
            fleet_state,
        )
        return Group(progress, table, Text("\n".join(self.events[-6:])))

    def run(self) -> Verdict:
        ok = False
        with sigterm_as_ctrl_c():  # a supervisor's stop takes the Ctrl-C path: every child stopped
            try:
                verdict = self._run()
                ok = verdict.ok
                if self.serve is not None:
                    self._serve_until_interrupted(verdict)
                return verdict
            finally:
                if self.serve is not None:
                    self.serve.stop()
                self.stack.stop()
                if self.config.keep or not ok:
                    self.console.print(f"work directory (logs, databases): {self.workdir}")
                else:
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def _page_url(self) -> str:
        assert self.serve is not None and self.serve.ready_file is not None
        port = json.loads(self.serve.ready_file.read_text(encoding="utf-8"))["port"]
        return f"http://127.0.0.1:{port}/"

    def _serve_until_interrupted(self, verdict: Verdict) -> None:
        """Say whether the page serves the verdict's totals, then keep it up until Ctrl-C or SIGTERM."""
        url = self._page_url()
        with urllib.request.urlopen(f"{url}api/results", timeout=10) as reply:
            shown = json.loads(reply.read())
        same = shown == self.stack.results()
        mark = "[green]the same totals as the verdict[/]" if same else "[bold red]totals that differ from the verdict[/]"
        self.console.print(f"live results page: {url} shows {mark} ({'MATCH' if verdict.ok else 'MISMATCH'}); serving until Ctrl-C")
        idle = threading.Event()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM
            while self.serve is not None and self.serve.running:
                idle.wait(1.0)  # the page is served by its own process; this only waits for Ctrl-C
        self.console.print("stopped serving the page")

    def _run(self) -> Verdict:
        cfg = self.config
        with self.console.status("provisioning device keys"):
            registry = self.stack.provision()
        expected = self.stack.expected()
        total = expected.batches
        broker_kind = "embedded amqtt" if self.stack.edge.embedded else "mosquitto"
        self.console.print(
            f"[bold]{registry.election.name}[/]: {len(self.stack.device_ids)} devices x {cfg.batches} batches"
            f" = {total:,} signed batches, {expected.ballots:,} ballots, seed {cfg.seed}; brokers: {broker_kind}"
        )
        if cfg.plain:
            self.console.print(
                "[bold yellow]wire: PLAIN[/] - anonymous MQTT over TCP, no ACLs (--plain: local experiments only)"
            )
        else:
            self.console.print(
                "[bold green]wire: locked down[/] - TLS with a client certificate per device, gateway and worker;"
                f" broker ACLs from the registry; receipts signed by the cloud (PKI: {self.workdir / 'pki'})"
            )
        with self.console.status("starting brokers, cloud and gateway"):
            self.stack.start()
            if self.serve is not None:
                self.serve.start()
                self.serve.wait_ready(60)
        self._event("brokers, cloud and gateway ready")
        if self.serve is not None:
            self.console.print(f"live results page: {self._page_url()}")
        self.stack.start_fleet()
        self._event("fleet started")

        progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), console=self.console)
        bars = {
            "acked": progress.add_task("acked by edge broker", total=total),
            "ledger": progress.add_task("committed in cloud ledger", total=total),
            "receipted": progress.add_task("receipted back to devices", total=total),
        }
        outage_started: float | None = None
        outage_done = cfg.outage <= 0
        deadline = time.monotonic() + cfg.timeout
        with Live(self._view(total, progress, bars), console=self.console, refresh_per_second=4) as live:
            while time.monotonic() < deadline:
                self._observe()
                if not outage_done and outage_started is None and self.seen.ledger >= cfg.outage_at * total:
                    down = self._outage_target()
                    down.kill() if cfg.outage_mode == "kill" else down.stop()
                    outage_started = time.monotonic()
                    self.seen.cloud_link = "DOWN" if self.stack.cluster is None else "one node down"
                    how = "SIGKILLed" if cfg.outage_mode == "kill" else "stopped"
                    self._event(f"{self._outage_name} {how} for {cfg.outage:g}s")
                if outage_started is not None and not outage_done and time.monotonic() - outage_started >= cfg.outage:
                    down.start()
                    outage_done = True
                    self.seen.cloud_link = "up"
                    self._event(f"{self._outage_name} back")
                live.update(self._view(total, progress, bars))
                fleet_done = not self.stack.fleet.running
                drained = self.seen.pending == 0 and self.seen.inflight == 0
                if outage_done and fleet_done and drained and self.seen.ledger >= total:
                    break
                if fleet_done and self.stack.fleet.returncode not in (0, None) and outage_done:
                    self._event(f"fleet exited with code {self.stack.fleet.returncode}")
                    break
                time.sleep(0.25)  # display refresh cadence, not synchronisation
            else:
                self._event(f"gave up after {cfg.timeout:.0f}s")
            self._observe()
            live.update(self._view(total, progress, bars))
        self.console.print()
        results = self.stack.results()
        buffer = self.stack.buffer_stats()
        verdict = compare(
            registry.election, expected, results, self.stack.fleet_summary(), buffer, self.stack.alerts()
        )
        render(verdict, registry.election, self.console)
        return verdict
