"""The processes a scenario runs: brokers, fault proxies, gateways, cloud workers and fleets.

Layout (``sites`` copies of everything left of the cloud broker)::

    fleet k --[devices proxy]--> edge broker k <--[edge proxy]-- gateway k --[uplink proxy]--> cloud broker
    cloud broker <--[cloud proxy]-- cloud workers (--share when several) --> one database

A proxy sits on a link only when the scenario lists that link (``topology.links``). Each site's
fleet runs its shard of the devices (``devices run --shard K/N``) with its own state dir, truth
file, summary and metrics port. Every piece is a real process that can be stopped, SIGKILLed
and started again; :meth:`World.ready` says whether each is up. Ports are chosen when the
world is built, so a restarted piece comes back where the others expect it. Constructing a
world does no I/O.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloud.config import DEFAULT_CLOUD_ID
from devices.election_file import load_election
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess, BrokerSettings, BrokerTls, free_port
from edgetally.nats import NatsCluster
from edgetally.pgdb import ThrowawayDatabase
from edgetally.processes import Component
from edgetally.scenarios.cluster import ClusterNode, cluster_nodes
from edgetally.scenarios.elections import keys_dirs, provision_all
from edgetally.scenarios.model import CLUSTER_TARGETS, Action, Scenario
from edgetally.scenarios.proxies import Proxy, make_proxy
from edgetally.wire import Wire
from protocol import Registry, provision
from protocol.tls import Role

log = logging.getLogger(__name__)

SAMPLE_ELECTION = Path(__file__).resolve().parents[2] / "elections" / "sample.yaml"


class WorldError(Exception):
    """A piece of the scenario's world could not be started or acted on."""


@dataclass
class SiteFleet:
    """One election's fleet at a site (one per site unless ``topology.elections`` says more)."""

    component: Component
    summary_path: Path
    truth_path: Path
    metrics_port: int | None  # None: not served (an election after the first: its port could be taken meanwhile)


@dataclass
class Site:
    index: int  # 1-based
    edge: BrokerProcess
    gateway: Component
    fleets: list[SiteFleet]
    buffer_path: Path
    proxies: dict[str, Proxy] = field(default_factory=dict)


class World:
    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        *,
        postgres_admin_url: str | None = None,
        embedded_brokers: bool = False,
        gateway_env: Mapping[str, str] | None = None,
        fleet_timeout: float = 600.0,
        plain: bool = False,
    ) -> None:
        """``plain``: anonymous MQTT over TCP without ACLs (local experiments only); by default
        every broker runs TLS with client certificates and an ACL from the registry."""
        self.scenario = scenario
        self.workdir = workdir
        topo = scenario.topology
        self.keys_dirs = keys_dirs(workdir, topo)  # one per election
        self.keys = self.keys_dirs[0]
        self._keys_args = [arg for d in self.keys_dirs for arg in ("--keys", str(d))]
        self.election_file = topo.election or SAMPLE_ELECTION
        self._pg: ThrowawayDatabase | None = None
        if topo.database == "postgresql":
            if postgres_admin_url is None:
                raise WorldError("this scenario needs PostgreSQL: give --postgres URL (a server that lets us CREATE DATABASE)")
            self._pg = ThrowawayDatabase(postgres_admin_url, "edgetally_scenario")
            self.db_url = self._pg.url
        else:
            self.db_url = f"sqlite:///{workdir / 'cloud.db'}"
        many = topo.cloud_workers > 1
        cloud_ids = tuple(f"cloud{i}" for i in range(1, topo.cloud_workers + 1)) if many else (DEFAULT_CLOUD_ID,)
        gateway_ids = tuple(f"gw{k}" for k in range(1, topo.sites + 1))
        self.wire = None if plain else Wire(workdir / "pki", self.keys, gateway_ids, cloud_ids)
        self._pki = [] if self.wire is None else ["--pki", str(self.wire.pki)]
        self.cluster: NatsCluster | None = None
        self.cloud_broker: BrokerProcess | NatsCluster
        cloud_url = ""
        jetstream: list[str] = []
        if topo.cloud_broker == "nats":
            self.cluster = self.cloud_broker = NatsCluster(workdir / "cloud-broker", nodes=topo.nodes, locked=not plain)
            cloud_url = ",".join(self.cluster.mqtt_urls)  # gateways and workers: any node, the next when one is down
            jetstream = [arg for url in self.cluster.nats_urls for arg in ("--jetstream", url)]
        else:
            self.cloud_broker = BrokerProcess(
                workdir / "cloud-broker", name="cloud-broker", embedded=embedded_brokers, tls=self._tls(BrokerKind.CLOUD)
            )
            cloud_url = self.cloud_broker.url
        self.cloud_proxy: Proxy | None = None
        if "cloud" in topo.links and isinstance(self.cloud_broker, BrokerProcess):
            self.cloud_proxy = make_proxy("proxy-cloud", "cloud", self.cloud_broker, workdir)
            cloud_url = self.cloud_proxy.url
        cloud_args = ["cloud", "run", "--broker", cloud_url, "--db", self.db_url, *self._keys_args, *self._pki, *jetstream]
        # Several workers share the load: on Mosquitto a shared subscription, on NATS the shared consumers.
        share = [] if jetstream else ["--share", "edgetally"]
        if topo.cloud_workers == 1:
            self.clouds = [Component("cloud", cloud_args, workdir)]
        else:
            self.clouds = [
                Component(f"cloud{i}", [*cloud_args, "--id", f"cloud{i}", *share], workdir)
                for i in range(1, topo.cloud_workers + 1)
            ]
        self.sites = [self._site(k, embedded_brokers, gateway_env, fleet_timeout) for k in range(1, topo.sites + 1)]
        self.serve_port = free_port()
        self.serve = Component("serve", ["cloud", "serve", "--db", self.db_url, "--port", str(self.serve_port)], workdir)
        self.rogue_report = workdir / "rogue-report.json"
        self.rogue = Component("rogue", [], workdir, ready=False)  # arguments at start: they name the stolen device
        self._registry: Registry | None = None

    def _site(self, k: int, embedded: bool, gateway_env: Mapping[str, str] | None, fleet_timeout: float) -> Site:
        topo = self.scenario.topology
        work = self.workdir / f"site{k}"
        edge = BrokerProcess(
            work / "edge-broker",
            name=f"edge-broker{k}",
            embedded=embedded,
            settings=BrokerSettings(persistence=topo.edge_persistence),
            tls=self._tls(BrokerKind.EDGE),
        )
        proxies: dict[str, Proxy] = {}
        for link in ("devices", "edge", "uplink"):
            if link in topo.links:
                target = self.cloud_broker if link == "uplink" else edge
                assert isinstance(target, BrokerProcess)  # the model refuses an uplink proxy before a cluster
                proxies[link] = make_proxy(f"proxy-{link}{k}", link, target, work)
        edge_for_devices = proxies["devices"].url if "devices" in proxies else edge.url
        edge_for_gateway = proxies["edge"].url if "edge" in proxies else edge.url
        cloud_for_gateway = proxies["uplink"].url if "uplink" in proxies else self._cloud_url
        buffer_path = work / "gateway-buffer.db"
        gateway_args = [
            "gateway", "run",
            "--edge", edge_for_gateway,
            "--cloud", cloud_for_gateway,
            "--buffer", str(buffer_path),
            *self._keys_args,
            "--id", f"gw{k}",
            *self._pki,
        ]  # fmt: skip
        if topo.gateway_max_buffer_batches:
            gateway_args += ["--max-buffer-batches", str(topo.gateway_max_buffer_batches)]
        if topo.gateway_max_buffer_bytes:
            gateway_args += ["--max-buffer-bytes", str(topo.gateway_max_buffer_bytes)]
        if topo.gateway_keepalive:
            gateway_args += ["--keepalive", str(topo.gateway_keepalive)]
        if topo.gateway_max_quarantine_rows_per_device:
            gateway_args += ["--max-quarantine-rows-per-device", str(topo.gateway_max_quarantine_rows_per_device)]
        gateway = Component(f"gateway{k}", gateway_args, work, env=dict(gateway_env or {}))
        many = len(self.keys_dirs) > 1
        fleets = [
            self._fleet(k, work / f"e{e:02d}" if many else work, keys, edge_for_devices, fleet_timeout, metrics=e == 1)
            for e, keys in enumerate(self.keys_dirs, start=1)
        ]
        return Site(k, edge, gateway, fleets, buffer_path, proxies)

    def _fleet(self, k: int, work: Path, keys: Path, broker: str, fleet_timeout: float, *, metrics: bool) -> SiteFleet:
        """One election's fleet; ``metrics``: serve Prometheus text on a port chosen now (the live
        view samples the first election's fleets only: every port picked ahead is one more that
        another process may take before the fleet binds it)."""
        topo = self.scenario.topology
        summary, truth, port = work / "fleet-summary.json", work / "truth.json", free_port() if metrics else None
        fleet_args = [
            "devices", "run",
            "--broker", broker,
            "--keys", str(keys),
            "--seed", str(topo.seed),
            "--batches-per-device", str(topo.batches),
            "--rate", str(topo.rate / topo.sites / len(self.keys_dirs)),
            "--resend-after", str(topo.resend_after),
            "--resend-cap", str(max(topo.resend_cap, topo.resend_after)),
            "--reconnect-max", "2",
            "--timeout", str(fleet_timeout),
            "--shard", f"{k - 1}/{topo.sites}",
            "--state-dir", str(work / "fleet-state"),
            "--summary", str(summary),
            "--truth", str(truth),
            "--no-live",
        ]  # fmt: skip
        if topo.devices:
            fleet_args += ["--devices", str(topo.devices)]
        if not topo.confirm:
            fleet_args.append("--no-confirm")
        for name, share in topo.behaviours:
            fleet_args += ["--behaviour", f"{name}={share}"]
        name = f"fleet{k}" if len(self.keys_dirs) == 1 else f"fleet{k}-{work.name}"  # fleet1-e07
        if port is not None:
            fleet_args += ["--metrics-port", str(port)]
        return SiteFleet(Component(name, fleet_args, work, ready=False), summary, truth, port)

    def _rogue_args(self) -> list[str]:
        """``edgetally rogue`` with the certificate of the election's last device, which must
        not be one the fleet runs (a stolen credential of a device in use would displace it)."""
        devices = list(self.registry.election.devices)
        count = self.scenario.topology.devices
        if not count or count >= len(devices):
            raise WorldError(f"the rogue needs a device outside the fleet: set topology.devices below {len(devices)}")
        return [
            "rogue",
            "--broker", self.sites[0].edge.url,
            "--keys", str(self.keys),
            "--device", devices[-1],
            "--flood", str(self.scenario.topology.rogue_flood),
            "--seq", str(self.scenario.topology.batches),
            "--gateway-client-id", "edgetally-gw-gw1",
            "--report", str(self.rogue_report),
        ]  # fmt: skip

    def wipe(self, gateway: Component) -> None:
        """A gateway's disk lost: its buffer file (and write-ahead log) deleted. It must be down."""
        if gateway.running:
            raise WorldError(f"{gateway.name} is running: kill it before its disk is wiped")
        site = next(s for s in self.sites if s.gateway is gateway)
        for suffix in ("", "-wal", "-shm"):
            site.buffer_path.with_name(site.buffer_path.name + suffix).unlink(missing_ok=True)

    def _tls(self, kind: BrokerKind) -> BrokerTls | None:
        return None if self.wire is None else self.wire.broker(kind)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.load(self.keys)
        return self._registry

    def proxies(self) -> Iterator[Proxy]:
        for site in self.sites:
            yield from site.proxies.values()
        if self.cloud_proxy is not None:
            yield self.cloud_proxy

    def start(self) -> None:
        """Everything but the fleets, each ready before what depends on it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(self.keys_dirs) > 1:
            registries = provision_all(self.scenario.topology, self.keys_dirs)
            self._registry = registries[0]
        elif not (self.keys / "registry.json").exists():
            self._registry = provision(load_election(self.election_file), self.keys)
        if self.wire is not None:  # certificates and ACLs, before any broker starts
            self.wire.prepare([(Registry.load(d), d) for d in self.keys_dirs])
        if any(action.target == "rogue" for action in self.scenario.timeline):
            self.rogue.args = self._rogue_args()
        self._create_database()
        if self.cluster is not None and self.wire is not None:
            self.cluster.configure(self.wire.nats(self.registry), self.wire.client(Role.CLOUD, self.wire.clouds[0]))
        self.cloud_broker.start()
        for site in self.sites:
            site.edge.start()
        for proxy in self.proxies():
            proxy.component.start()
        for proxy in self.proxies():
            proxy.component.wait_ready()
        self.clouds[0].start()
        self.clouds[0].wait_ready(60)  # it migrates the schema; the others find it done
        for worker in self.clouds[1:]:
            worker.start()
        for site in self.sites:
            site.gateway.start()
        for worker in self.clouds[1:]:
            worker.wait_ready(60)
        for site in self.sites:
            site.gateway.wait_ready(60)
        if self.scenario.topology.serve:
            self.serve.start()
            self.serve.wait_ready(60)

    def start_fleets(self) -> None:
        for fleet in self.fleets():
            fleet.summary_path.unlink(missing_ok=True)
            fleet.component.start()

    def fleets(self) -> Iterator[SiteFleet]:
        for site in self.sites:
            yield from site.fleets

    def stop(self) -> None:
        """Stop everything still running (fleets first, brokers last). Safe to call twice."""
        self.rogue.stop()
        self.serve.stop()
        for site in self.sites:
            for fleet in site.fleets:
                fleet.component.stop()
            site.gateway.stop()
        for worker in self.clouds:
            worker.stop()
        for proxy in self.proxies():
            proxy.component.stop()
        for site in self.sites:
            site.edge.stop()
        self.cloud_broker.stop()
        self._drop_database()

    def kill_all(self) -> None:
        """SIGKILL whatever is left (after a failure or an interrupt)."""
        self.rogue.kill()
        self.serve.kill()
        for site in self.sites:
            for fleet in site.fleets:
                fleet.component.kill()
            site.gateway.kill()
            site.edge.kill()
        for worker in self.clouds:
            worker.kill()
        for proxy in self.proxies():
            proxy.component.kill()
        self.cloud_broker.kill()

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- PostgreSQL ------------------------------------------------------------------------
    def _create_database(self) -> None:
        if self._pg is not None:
            self._pg.create()

    def _drop_database(self) -> None:
        if self._pg is not None:
            self._pg.drop()

    # -- targets ---------------------------------------------------------------------------
    def _sites(self, action: Action) -> list[Site]:
        return [s for s in self.sites if action.site is None or s.index == action.site]

    @property
    def _cloud_url(self) -> str:
        if self.cluster is not None:
            return ",".join(self.cluster.mqtt_urls)
        return self.cloud_broker.url

    def cloud_broker_processes(self) -> Sequence[BrokerProcess | ClusterNode]:
        """What ``cloud-broker`` names: the Mosquitto process, or every node of the cluster."""
        if self.cluster is not None:
            return list(cluster_nodes(self.cluster, "cloud-node", None))
        assert isinstance(self.cloud_broker, BrokerProcess)
        return [self.cloud_broker]

    def processes(self, action: Action) -> list[BrokerProcess | Component | ClusterNode]:
        """The processes a process action names."""
        if action.target == "cloud-broker":
            return list(self.cloud_broker_processes())
        if action.target in CLUSTER_TARGETS:
            assert self.cluster is not None  # the model allows these with cloud_broker: nats only
            return list(cluster_nodes(self.cluster, action.target, action.node))
        if action.target == "cloud":
            return [self.clouds[action.worker - 1]] if action.worker else list(self.clouds)
        if action.target == "edge-broker":
            return [s.edge for s in self._sites(action)]
        if action.target == "gateway":
            return [s.gateway for s in self._sites(action)]
        if action.target == "fleet":
            return [f.component for s in self._sites(action) for f in s.fleets]
        if action.target == "rogue":
            return [self.rogue]
        raise WorldError(f"unknown process {action.target!r}")

    def links(self, action: Action) -> list[Proxy]:
        """The proxies a link action names."""
        if action.target == "cloud":
            return [self.cloud_proxy] if self.cloud_proxy is not None else []
        return [s.proxies[action.target] for s in self._sites(action) if action.target in s.proxies]
