"""Running a scenario: start its world, play the timeline, heal, wait for drain, judge.

The runner's loop is single-threaded and bounded: between timeline steps it samples (every
``SAMPLE_S``) the ledger, every gateway buffer's backlog and each fleet's metrics, which feed
the live view, the peak buffer depth and the drain condition. After the last step it heals
whatever the timeline left broken (links back to pass, stopped processes started: the verdict
is about what the system does once the faults end), waits for every fleet to finish and the
system to drain (every batch the truth accepts in the ledger, no backlog in any gateway), both
bounded, then judges (edgetally/scenarios/checks.py) and stops everything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud import models
from cloud._exceptions import CloudError
from devices.truth import merge_truths
from edgetally.brokers import BrokerError, BrokerProcess
from edgetally.processes import Component, ComponentError
from edgetally.proxy.control import ProxyControl
from edgetally.proxy.proxy import ProxyError
from edgetally.scenarios.checks import judge
from edgetally.scenarios.cluster import ClusterNode
from edgetally.scenarios.elections import combine
from edgetally.scenarios.model import Action, Scenario
from edgetally.scenarios.observe import (
    Observations,
    cloud_engine,
    expected_accepts,
    undelivered,
)
from edgetally.scenarios.proxies import command
from edgetally.scenarios.served import fetch_served
from edgetally.scenarios.verdict import ScenarioVerdict
from edgetally.scenarios.world import World, WorldError
from gateway._exceptions import GatewayError

log = logging.getLogger(__name__)

SAMPLE_S = 0.25


@dataclass(frozen=True)
class RunOptions:
    workdir: Path
    speed: float = 1.0
    seed: int | None = None
    postgres_admin_url: str | None = None
    embedded_brokers: bool = False
    fleet_timeout: float = 300.0
    plain: bool = False  # anonymous MQTT over TCP, no ACLs (default: TLS, certificates, ACLs)
    # Test-only: the environment of each gateway's FIRST start (e.g. a fault point and the
    # unsafe ack-before-commit switch of gateway/faults.py); later starts run it clean.
    first_gateway_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Event:
    at: float
    what: str
    ok: bool = True
    detail: str = ""


@dataclass
class Sample:
    """What the runner last saw."""

    elapsed: float = 0.0
    ledger: int = 0
    expected: int = 0
    backlog: int = 0  # pending + in flight over every gateway buffer
    peak_backlog: int = 0
    fleet: dict[str, float] = field(default_factory=dict)  # summed fleet metrics by name
    phase: str = "starting"


@dataclass
class Report:
    scenario: Scenario
    options: RunOptions
    events: list[Event]
    verdict: ScenarioVerdict | None
    sample: Sample
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.verdict is not None and self.verdict.ok and all(e.ok for e in self.events)

    def to_mapping(self) -> dict[str, Any]:
        topo = self.scenario.topology
        return {
            "scenario": self.scenario.name,
            "ok": self.ok,
            "error": self.error,
            "seed": topo.seed,
            "speed": self.options.speed,
            "topology": {
                "devices": topo.devices,
                "batches": topo.batches,
                "sites": topo.sites,
                "cloud_workers": topo.cloud_workers,
                "database": topo.database,
                "links": list(topo.links),
                "behaviours": dict(topo.behaviours),
            },
            "events": [{"at_s": round(e.at, 3), "what": e.what, "ok": e.ok, "detail": e.detail} for e in self.events],
            "verdict": self.verdict.to_mapping() if self.verdict is not None else None,
            "peak_buffer_depth": self.sample.peak_backlog,
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_mapping(), indent=2) + "\n", encoding="utf-8")


Observer = Callable[[Sample, list[Event], World], None]


class ScenarioRunner:
    """Runs one scenario. Constructing it does no I/O; :meth:`run` does it all."""

    def __init__(self, scenario: Scenario, options: RunOptions, *, observer: Observer | None = None) -> None:
        if options.seed is not None:
            scenario = scenario.with_topology(seed=options.seed)
        self.scenario = scenario.scaled(options.speed)
        self.options = options
        self.events: list[Event] = []
        self.sample = Sample()
        self._observer = observer
        self._engine: Engine | None = None
        self._t0 = time.monotonic()
        self._awaiting: dict[str, tuple[Component, float]] = {}  # started, not yet ready
        self._merged_truth: list[dict[str, Any]] | None = None
        self.world = World(
            self.scenario,
            options.workdir,
            postgres_admin_url=options.postgres_admin_url,
            embedded_brokers=options.embedded_brokers,
            gateway_env=options.first_gateway_env,
            fleet_timeout=options.fleet_timeout,
            plain=options.plain,
        )

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> Report:
        verdict: ScenarioVerdict | None = None
        error: str | None = None
        world = self.world
        try:
            self._phase("starting")
            world.start()
            self._t0 = time.monotonic()
            self._event("fleets started")
            world.start_fleets()
            self._phase("timeline")
            for action in self.scenario.timeline:
                self._sample_until(self._t0 + action.at)
                self._act(action)
            last_fault = time.monotonic() - self._t0 if self.scenario.timeline else None
            if self.scenario.last_fault_at is not None:  # a drop's end is the last fault's end
                self._sample_until(self._t0 + self.scenario.last_fault_at)
                last_fault = time.monotonic() - self._t0
            self._heal()
            self._phase("draining")
            drained = self._drain()
            self._phase("judging")
            verdicts = {}
            for e, keys in enumerate(world.keys_dirs):  # one election, or each of several alike
                truth = self._truths()[e]
                verdicts[str(truth["election"])] = judge(Observations(
                    db_url=world.db_url,
                    keys_dir=keys,
                    buffers=tuple(s.buffer_path for s in world.sites),
                    fleet_summaries=tuple(_read_json(s.fleets[e].summary_path) for s in world.sites),
                    truth=truth,
                    last_fault_s=last_fault,
                    drained_s=drained,
                    peak_buffer_depth=self.sample.peak_backlog,
                    rogue=_read_json(world.rogue_report) if world.rogue.starts else None,
                    served=world.serve.starts > 0,
                    served_results=fetch_served(world.serve_port, self.sample.expected, 10.0) if world.serve.starts else None,
                    resend_after=self.scenario.topology.resend_after if world.cluster is not None else None,
                ))  # fmt: skip
            verdict = next(iter(verdicts.values())) if len(verdicts) == 1 else combine(verdicts)
        except (WorldError, ComponentError, BrokerError, ProxyError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("scenario %s: %s", self.scenario.name, error)
        finally:
            self._phase("stopping")
            if self._engine is not None:
                self._engine.dispose()
            try:
                world.stop()
            finally:
                world.kill_all()
        self._phase("done")
        return Report(self.scenario, self.options, self.events, verdict, self.sample, error)

    # -- actions ---------------------------------------------------------------------------
    def _act(self, action: Action) -> None:
        what = action.describe()
        try:
            if action.is_link:
                proxies = self.world.links(action)
                if not proxies:
                    raise WorldError(f"no fault proxy on link {action.target}")
                for proxy in proxies:
                    command(proxy, action)
            else:
                for process in self.world.processes(action):
                    self._process(action.verb, process)
        except (WorldError, ComponentError, BrokerError, ProxyError, OSError) as exc:
            self._event(what, ok=False, detail=str(exc))
            return
        self._event(what)

    def _process(self, verb: str, process: BrokerProcess | Component | ClusterNode) -> None:
        if verb in ("kill", "crash", "wipe"):
            process.kill()
        if verb == "wipe" and isinstance(process, Component):
            self.world.wipe(process)
        elif verb in ("stop", "restart"):
            process.stop()
        if isinstance(process, Component) and verb in ("kill", "crash", "stop", "restart", "wipe"):
            process.env = {}  # a test-only first-start environment never comes back
            self._awaiting.pop(process.name, None)
        if verb in ("start", "restart", "crash", "wipe") and not process.running:
            self._start(process)

    def _start(self, process: BrokerProcess | Component | ClusterNode) -> None:
        """Start it; a broker is ready when this returns, a component when it writes its ready file."""
        process.start()
        if isinstance(process, Component) and process.ready_file is not None:
            self._awaiting[process.name] = (process, time.monotonic())

    def _check_ready(self) -> None:
        for name, (component, started) in list(self._awaiting.items()):
            if component.ready_file is not None and component.ready_file.exists():
                del self._awaiting[name]
                self._event(f"{name} ready", detail=f"{time.monotonic() - started:.1f}s after its start")

    def _heal(self) -> None:
        """Links back to pass and every stopped process started: what the faults left broken."""
        healed: list[str] = []
        for proxy in self.world.proxies():
            ProxyControl(proxy.control_port).pass_()
        world = self.world
        processes: list[BrokerProcess | Component | ClusterNode] = [*world.cloud_broker_processes(), *(s.edge for s in world.sites)]
        processes += world.clouds
        processes += [s.gateway for s in world.sites]
        for process in processes:
            if not process.running:
                self._start(process)
                healed.append(process.name)
        for fleet in (f.component for f in world.fleets()):  # a fleet that exited by itself is done, not down
            if not fleet.running and fleet.returncode is not None and fleet.returncode < 0:
                fleet.start()
                healed.append(fleet.name)
        self._event("heal: every link passes" + (f"; started {', '.join(healed)}" if healed else ""))

    # -- waiting and sampling ----------------------------------------------------------------
    def _drain(self) -> float | None:
        """Wait (bounded) for the fleets to finish and the system to drain; when it drained."""
        deadline = time.monotonic() + self.options.fleet_timeout
        while self.world.rogue.running or any(f.component.running for f in self.world.fleets()):
            if time.monotonic() > deadline:
                self._event("fleets did not finish", ok=False, detail=f"within {self.options.fleet_timeout:.0f}s")
                return None
            self._sample_for(SAMPLE_S)
        for fleet in (f.component for f in self.world.fleets()):
            if fleet.returncode != 0:
                self._event(f"{fleet.name} exited {fleet.returncode}", ok=False, detail=f"see {fleet.log_path}")
        if self.world.rogue.starts and self.world.rogue.returncode != 0:
            self._event(f"rogue exited {self.world.rogue.returncode}", ok=False, detail=f"see {self.world.rogue.log_path}")
        expected = sum(len(expected_accepts(truth)) for truth in self._truths())
        self.sample.expected = expected
        deadline = time.monotonic() + self.scenario.drain_timeout
        while True:
            self._take_sample()
            if self.sample.ledger >= expected and self.sample.backlog == 0 and not self._awaiting:
                at = time.monotonic() - self._t0
                self._event("drained", detail=f"{self.sample.ledger:,} batches in the ledger")
                return at
            if time.monotonic() > deadline:
                self._event("not drained", ok=False, detail=f"within {self.scenario.drain_timeout:.0f}s")
                for name, (component, _started) in self._awaiting.items():
                    self._event(f"{name} never became ready", ok=False, detail=f"see {component.log_path}")
                return None
            self._notify()
            time.sleep(SAMPLE_S)

    def _sample_until(self, when: float) -> None:
        while True:
            self._take_sample()
            left = when - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(SAMPLE_S, left))

    def _sample_for(self, seconds: float) -> None:
        self._sample_until(time.monotonic() + seconds)

    def _take_sample(self) -> None:
        sample = self.sample
        sample.elapsed = time.monotonic() - self._t0
        sample.ledger = self._ledger_rows()
        with contextlib.suppress(OSError, ValueError, GatewayError):  # not there yet: next time
            sample.backlog = sum(p + f for p, f in undelivered(s.buffer_path for s in self.world.sites).values())
        sample.peak_backlog = max(sample.peak_backlog, sample.backlog)
        sample.fleet = self._fleet_metrics()
        self._check_ready()
        self._notify()

    def _ledger_rows(self) -> int:
        try:
            if self._engine is None:
                self._engine = cloud_engine(self.world.db_url)
            with self._engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(models.ledger)).scalar_one())
        except (SQLAlchemyError, CloudError):  # no schema or file yet, or the file busy: next time
            return self.sample.ledger

    def _fleet_metrics(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for fleet in self.world.fleets():
            if not fleet.component.running or fleet.metrics_port is None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{fleet.metrics_port}/metrics", timeout=0.5) as reply:
                    text = reply.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if not line or line.startswith("#"):
                    continue
                name, _, value = line.rpartition(" ")
                try:
                    totals[name] = totals.get(name, 0.0) + float(value)
                except ValueError:
                    continue
        return totals or self.sample.fleet

    # -- bookkeeping -----------------------------------------------------------------------
    def _truths(self) -> list[dict[str, Any]]:
        """Each election's truth: its fleets' truth files merged; read once, after the fleets finished."""
        if self._merged_truth is None:
            sites = self.world.sites
            self._merged_truth = [
                merge_truths([_read_json(s.fleets[e].truth_path) for s in sites]) for e in range(len(self.world.keys_dirs))
            ]
        return self._merged_truth

    def _event(self, what: str, *, ok: bool = True, detail: str = "") -> None:
        event = Event(time.monotonic() - self._t0, what, ok, detail)
        self.events.append(event)
        (log.info if ok else log.warning)("scenario %s +%.1fs: %s%s", self.scenario.name, event.at, what, f" ({detail})" if detail else "")
        self._notify()

    def _phase(self, phase: str) -> None:
        self.sample = replace(self.sample, phase=phase)
        self._notify()

    def _notify(self) -> None:
        if self._observer is not None:
            self._observer(self.sample, self.events, self.world)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorldError(f"cannot read {path}: {exc}") from exc
    return data
