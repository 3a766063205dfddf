"""A whole EdgeTally deployment on one machine: two brokers, the cloud, a gateway, a fleet.

Used by ``edgetally demo`` and by the integration tests. Every piece is a real process that
can be stopped, SIGKILLed and restarted; constructing a :class:`Stack` does no I/O.

Scale-out: ``workers`` > 1 runs that many cloud workers (``--share GROUP``, ids cloud1,
cloud2, ...) against the one cloud broker; ``postgres_admin_url`` makes the stack create a
fresh PostgreSQL database for its cloud on :meth:`Stack.start` and drop it on
:meth:`Stack.stop` (workers sharing one SQLite file also work, serialised by its lock).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.config import DEFAULT_CLOUD_ID
from devices.election_file import load_election
from devices.generator import ExpectedTotals, expected_totals
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess, BrokerTls
from edgetally.nats import NatsCluster
from edgetally.pgdb import ThrowawayDatabase
from edgetally.processes import Component
from edgetally.wire import Wire
from protocol import Registry, provision
from protocol.tls import Role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackConfig:
    workdir: Path
    election_file: Path
    seed: int = 1
    batches_per_device: int = 5
    devices: int = 0  # 0 = every device of the election
    rate: float = 0.0
    resend_after: float = 3.0
    fleet_timeout: float = 300.0
    embedded_brokers: bool | None = None  # None: Mosquitto when installed, else amqtt
    db_url: str | None = None  # default: SQLite file in workdir (or see postgres_admin_url)
    gateway_id: str = "gw1"
    workers: int = 1  # cloud workers; several share the load (--share)
    share_group: str = "edgetally"
    # A PostgreSQL URL with the right to CREATE DATABASE: the stack's cloud gets a database of
    # its own there (created by start(), dropped by stop()). Ignored when db_url is given.
    postgres_admin_url: str | None = None
    fleet_args: tuple[str, ...] = ()  # more `devices run` options (e.g. --connect-rate 500)
    # Plain mode: anonymous MQTT over TCP, no ACLs. Off by default: the brokers run TLS with
    # client certificates and ACLs from the registry (edgetally/wire.py).
    plain: bool = False
    # Read-only identities on both brokers (monitor-NAME certificates in workdir/pki): what a
    # test or a dashboard watches the wire with.
    monitors: tuple[str, ...] = ()
    # The cloud broker: mosquitto, or nats (a NATS JetStream cluster of ``nodes``; the workers
    # then pull batches from its shared consumers, docs/cloud-scaleout.md).
    cloud_broker: str = "mosquitto"
    nodes: int = 3


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        work = config.workdir
        self.keys = work / "keys"
        self.buffer_path = work / "gateway-buffer.db"
        self._pg: ThrowawayDatabase | None = None
        if config.db_url:
            self.db_url = config.db_url
        elif config.postgres_admin_url:
            self._pg = ThrowawayDatabase(config.postgres_admin_url, "edgetally_stack")
            self.db_url = self._pg.url
        else:
            self.db_url = f"sqlite:///{work / 'cloud.db'}"
        self.summary_path = work / "fleet-summary.json"
        if config.workers < 1:
            raise ValueError("a stack needs at least one cloud worker")
        cloud_ids = (DEFAULT_CLOUD_ID,) if config.workers == 1 else tuple(f"cloud{i}" for i in range(1, config.workers + 1))
        self.wire = None if config.plain else Wire(work / "pki", self.keys, (config.gateway_id,), cloud_ids, config.monitors)
        self.edge = BrokerProcess(
            work / "edge-broker", name="edge-broker", embedded=config.embedded_brokers, tls=self._tls(BrokerKind.EDGE)
        )
        self.cluster: NatsCluster | None = None
        self.cloud_broker: BrokerProcess | NatsCluster
        jetstream: list[str] = []
        if config.cloud_broker == "nats":
            self.cluster = self.cloud_broker = NatsCluster(work / "cloud-broker", nodes=config.nodes, locked=not config.plain)
            self.cloud_url = ",".join(self.cluster.mqtt_urls)  # any node; the next when one is down
            jetstream = [arg for url in self.cluster.nats_urls for arg in ("--jetstream", url)]
        elif config.cloud_broker == "mosquitto":
            self.cloud_broker = BrokerProcess(
                work / "cloud-broker", name="cloud-broker", embedded=config.embedded_brokers, tls=self._tls(BrokerKind.CLOUD)
            )
            self.cloud_url = self.cloud_broker.url
        else:
            raise ValueError(f"cloud broker must be mosquitto or nats, got {config.cloud_broker!r}")
        pki = [] if self.wire is None else ["--pki", str(self.wire.pki)]
        cloud_args = ["cloud", "run", "--broker", self.cloud_url, "--db", self.db_url, "--keys", str(self.keys), *pki, *jetstream]
        share = [] if jetstream else ["--share", config.share_group]  # on NATS: the shared consumers
        if config.workers == 1:
            self.clouds = [Component("cloud", cloud_args, work)]
        else:
            self.clouds = [
                Component(f"cloud{i}", [*cloud_args, "--id", f"cloud{i}", *share], work)
                for i in range(1, config.workers + 1)
            ]
        self.cloud = self.clouds[0]
        self.gateway = Component(
            "gateway",
            [
                "gateway", "run",
                "--edge", self.edge.url,
                "--cloud", self.cloud_url,
                "--buffer", str(self.buffer_path),
                "--keys", str(self.keys),
                "--id", config.gateway_id,
                *pki,
            ],
            work,
        )
        fleet_args = [
            "devices", "run",
            "--broker", self.edge.url,
            "--keys", str(self.keys),
            "--seed", str(config.seed),
            "--batches-per-device", str(config.batches_per_device),
            "--rate", str(config.rate),
            "--resend-after", str(config.resend_after),
            "--timeout", str(config.fleet_timeout),
            "--summary", str(self.summary_path),
        ]
        if config.devices:
            fleet_args += ["--devices", str(config.devices)]
        fleet_args += config.fleet_args
        self.fleet = Component("fleet", fleet_args, work, ready=False)
        self._registry: Registry | None = None

    def _tls(self, kind: BrokerKind) -> BrokerTls | None:
        return None if self.wire is None else self.wire.broker(kind)

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.load(self.keys)
        return self._registry

    def provision(self) -> Registry:
        election = load_election(self.config.election_file)
        self._registry = provision(election, self.keys)
        return self._registry

    def start(self) -> None:
        """Brokers, cloud and gateway, each ready before the next; the fleet is separate."""
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.keys / "registry.json").exists():
            self.provision()
        if self.wire is not None:
            self.wire.prepare(self.registry)  # certificates and ACLs, before any broker starts
        self._create_database()
        if self.cluster is not None and self.wire is not None:
            self.cluster.configure(self.wire.nats(self.registry), self.wire.client(Role.CLOUD, self.wire.clouds[0]))
        self.edge.start()
        self.cloud_broker.start()
        self.clouds[0].start()
        self.clouds[0].wait_ready()  # it migrates the schema; the others find it done
        for worker in self.clouds[1:]:
            worker.start()
        self.gateway.start()
        for worker in self.clouds[1:]:
            worker.wait_ready()
        self.gateway.wait_ready()

    def start_fleet(self) -> None:
        self.summary_path.unlink(missing_ok=True)
        self.fleet.start()

    def stop(self) -> None:
        """Stop everything that runs, fleet first, brokers last. Safe to call twice."""
        for component in (self.fleet, self.gateway, *self.clouds):
            component.stop()
        for broker in (self.edge, self.cloud_broker):
            broker.stop()
        self._drop_database()

    def _create_database(self) -> None:
        if self._pg is not None:
            self._pg.create()

    def _drop_database(self) -> None:
        if self._pg is not None:
            self._pg.drop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------
    @property
    def device_ids(self) -> list[str]:
        devices = list(self.registry.election.devices)
        return devices[: self.config.devices] if self.config.devices else devices

    def expected(self) -> ExpectedTotals:
        return expected_totals(
            self.registry.election, self.config.seed, self.config.batches_per_device, self.device_ids
        )

    def fleet_summary(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def _cli_json(self, *args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "edgetally", "--log-level", "WARNING", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"edgetally {' '.join(args)} failed: {proc.stderr.strip()}")
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def results(self) -> dict[str, Any]:
        return self._cli_json("cloud", "results", "--db", self.db_url)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert the cloud's rules raised (the default rules raise none for an honest fleet)."""
        found: Any = self._cli_json("cloud", "alerts", "--db", self.db_url, "--limit", "0")
        return list(found)

    def buffer_stats(self) -> dict[str, Any]:
        return self._cli_json("gateway", "buffer", "stats", "--buffer", str(self.buffer_path))
