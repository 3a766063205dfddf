"""The cloud broker as a NATS JetStream cluster: MQTT 3.1.1 for gateways, JetStream for workers.

nats-server (2.9 here) speaks MQTT natively and keeps MQTT sessions and QoS 1 messages in
JetStream streams (``$MQTT_sess``, ``$MQTT_msgs``, ``$MQTT_rmsgs``). A QoS 1 PUBLISH is stored
in ``$MQTT_msgs`` by a synchronous JetStream request and the PUBACK is sent only once that
store succeeded (server/mqtt.go ``mqttProcessPub`` in v2.9.10): with ``stream_replicas: N`` the
message is on a quorum of the N nodes before the gateway hears it was delivered. Without a
quorum the store fails, the gateway gets no PUBACK, and it keeps the batch in its buffer.

``$MQTT_msgs`` has interest retention: a message nobody has a consumer for is deleted as soon
as it is stored. So the cluster is not ready until the workers' durable consumers exist
(:data:`CONSUMERS`, made by :meth:`NatsCluster.start`): from then on every batch and bundle is
kept until a worker acknowledged it, whether or not a worker is running.

Each node: its own store directory, client, cluster-route, MQTT and monitoring listeners on
127.0.0.1. Locked down (``tls``): TLS on the client and MQTT listeners, a client certificate
required and mapped to a user by its subject (``verify_and_map``; our certificates carry
``CN=<identity>``), each user allowed only the subjects its Mosquitto ACL lines allow
(:func:`edgetally.acl.broker_rules`, topics mapped to subjects), cloud workers also the
JetStream API of their consumers; routes between nodes authenticate with a random password
(in the 0600 config files). Plain mode (``tls`` None) is anonymous: local experiments only.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.worker.jetstream import CONSUMERS, DEFAULT_ACK_WAIT_S, MSGS_STREAM, topic_subject
from edgetally.brokers import BrokerError, find_binary, free_port, signal_and_wait, wait_for_port
from protocol.keys import write_secret
from protocol.tls import ClientTls

log = logging.getLogger(__name__)

MQTT_STREAMS = ("$MQTT_msgs", "$MQTT_sess", "$MQTT_rmsgs")


def nats_binary() -> str | None:
    return find_binary("nats-server")


@dataclass(frozen=True)
class NatsTls:
    """Locked-down listeners: this server certificate, client certificates from ``ca`` mapped to
    users, each user's MQTT rules (``("read"|"write", topic filter)``, as in the Mosquitto ACL)."""

    ca: Path
    cert: Path
    key: Path
    users: Mapping[str, Sequence[tuple[str, str]]]
    workers: frozenset[str] = frozenset()  # identities also allowed their consumers' JetStream API


def _permissions(rules: Sequence[tuple[str, str]], worker: bool) -> dict[str, Any]:
    publish = [topic_subject(t) for access, t in rules if access == "write"]
    subscribe = [topic_subject(t) for access, t in rules if access == "read"]
    # MQTT on NATS: QoS 1 deliveries come from JetStream consumers on $MQTT.sub.<id>.
    subscribe += ["$MQTT.sub.>"]
    if worker:
        publish += [
            "$JS.API.INFO",
            f"$JS.API.STREAM.INFO.{MSGS_STREAM}",
            *(f"$JS.API.CONSUMER.INFO.{MSGS_STREAM}.{name}" for name in CONSUMERS),
            *(f"$JS.API.CONSUMER.MSG.NEXT.{MSGS_STREAM}.{name}" for name in CONSUMERS),
            *(f"$JS.API.CONSUMER.DURABLE.CREATE.{MSGS_STREAM}.{name}" for name in CONSUMERS),
            *(f"$JS.API.CONSUMER.CREATE.{MSGS_STREAM}.{name}.>" for name in CONSUMERS),
            f"$JS.ACK.{MSGS_STREAM}.>",
        ]
        subscribe += ["_INBOX.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


@dataclass(frozen=True)
class NatsNode:
    """One node's name, ports and store; constructing it does no I/O."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    workdir: Path

    @property
    def store_dir(self) -> Path:
        return self.workdir / self.name

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"


def node_config(node: NatsNode, peers: Sequence[NatsNode], tls: NatsTls | None, route_password: str) -> str:
    """The config of ``node`` in a cluster of ``peers`` (itself included)."""
    replicas = len(peers)
    lines = [
        f"server_name: {node.name}",
        f"listen: 127.0.0.1:{node.client_port}",
        f"http: 127.0.0.1:{node.http_port}",
        f"log_file: {json.dumps(str(node.log_path))}",
        f"jetstream {{ store_dir: {json.dumps(str(node.store_dir))} }}",
    ]
    if replicas > 1:
        routes = ", ".join(f'"nats-route://route:{route_password}@127.0.0.1:{p.cluster_port}"' for p in peers)
        lines.append(
            f"cluster {{ name: edgetally, listen: 127.0.0.1:{node.cluster_port},"
            f' authorization {{ user: route, password: "{route_password}" }}, routes: [{routes}] }}'
        )
    mqtt = [f"listen: 127.0.0.1:{node.mqtt_port}", f"stream_replicas: {replicas}", f"consumer_replicas: {replicas}"]
    if tls is not None:
        tls_block = (
            f"tls {{ cert_file: {json.dumps(str(tls.cert))}, key_file: {json.dumps(str(tls.key))},"
            f" ca_file: {json.dumps(str(tls.ca))}, verify_and_map: true, timeout: 5 }}"
        )
        lines.append(tls_block)
        mqtt.append(tls_block)
        users = [
            {"user": f"CN={name}", "permissions": _permissions(rules, name in tls.workers)}
            for name, rules in sorted(tls.users.items())
        ]
        lines.append(f"authorization {{ users: {json.dumps(users)} }}")
    lines.append("mqtt { " + ", ".join(mqtt) + " }")
    return "\n".join(lines) + "\n"


class NatsCluster:
    """N nats-server nodes on free 127.0.0.1 ports; constructing it does no I/O.

    ``start`` starts every node and waits until the cluster is ready (a JetStream meta leader,
    the MQTT streams and the workers' consumers); ``kill_node``/``stop_node``/``start_node``
    act on one node for fault tests; ``stop`` stops every node (SIGTERM)."""

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 3,
        tls: NatsTls | None = None,
        probe: ClientTls | None = None,  # whom the readiness probe connects as (locked: a cloud worker)
        ack_wait_s: float = DEFAULT_ACK_WAIT_S,
        locked: bool | None = None,  # True: locked, its TLS and probe given by configure() before start
    ) -> None:
        if nodes < 1:
            raise BrokerError(f"a NATS cluster needs at least 1 node, got {nodes}")
        self.workdir = workdir
        self.tls = tls
        self._probe = probe
        self._locked = tls is not None if locked is None else locked
        self.ack_wait_s = ack_wait_s
        self._size = nodes
        self._nodes: list[NatsNode] = []
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._route_password = ""

    def configure(self, tls: NatsTls, probe: ClientTls) -> None:
        """The TLS files and users of a cluster made with ``locked=True`` (known only later)."""
        self.tls, self._probe, self._locked = tls, probe, True

    # -- addresses --------------------------------------------------------------------------
    @property
    def nodes(self) -> list[NatsNode]:
        if not self._nodes:
            self._nodes = [
                NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), free_port(), self.workdir)
                for i in range(self._size)
            ]
        return self._nodes

    def node(self, name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise BrokerError(f"no node {name!r} in this cluster ({', '.join(n.name for n in self.nodes)})")

    @property
    def mqtt_urls(self) -> list[str]:
        scheme = "mqtts" if self._locked else "mqtt"
        return [f"{scheme}://127.0.0.1:{n.mqtt_port}" for n in self.nodes]

    @property
    def url(self) -> str:
        """The MQTT address gateways use (the first node's; any node serves every client)."""
        return self.mqtt_urls[0]

    @property
    def nats_urls(self) -> list[str]:
        scheme = "tls" if self._locked else "nats"
        return [f"{scheme}://127.0.0.1:{n.client_port}" for n in self.nodes]

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        binary = nats_binary()
        if binary is None:
            raise BrokerError("nats-server is not installed (apt-get install nats-server)")
        if self._locked and (self.tls is None or self._probe is None):
            raise BrokerError("a locked NATS cluster needs its TLS files and a client identity for its readiness probe")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._route_password:
            self._route_password = secrets.token_urlsafe(18)
        for node in self.nodes:
            write_secret(
                node.config_path,
                node_config(node, self.nodes, self.tls, self._route_password).encode(),
                "NATS node config",
            )
        for node in self.nodes:
            self._spawn(binary, node)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            wait_for_port(node.mqtt_port, max(1.0, deadline - time.monotonic()), self._procs[node.name])
        self.wait_ready(max(1.0, deadline - time.monotonic()))
        log.info(
            "NATS cluster of %d ready: MQTT %s, JetStream %s", len(self.nodes), ", ".join(self.mqtt_urls),
            ", ".join(self.nats_urls),
        )

    def _spawn(self, binary: str, node: NatsNode) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.workdir / f"{node.name}.stdout", "ab")  # noqa: SIM115 - owned by the child
        try:
            self._procs[node.name] = subprocess.Popen(
                [binary, "-c", str(node.config_path)], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

    def start_node(self, name: str, timeout: float = 20.0) -> None:
        """Start one stopped node again on its ports, with its store as it was left."""
        if self.running(name):
            raise BrokerError(f"NATS node {name} is already running")
        binary = nats_binary()
        assert binary is not None  # started once already
        node = self.node(name)
        self._spawn(binary, node)
        wait_for_port(node.mqtt_port, timeout, self._procs[name])

    def _signal(self, name: str, sig: signal.Signals, timeout: float) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            signal_and_wait(proc, sig, timeout)

    def kill_node(self, name: str) -> None:
        """SIGKILL one node: what it alone held is gone; what a quorum stored is not."""
        self._signal(name, signal.SIGKILL, 5.0)

    def stop_node(self, name: str, timeout: float = 10.0) -> None:
        self._signal(name, signal.SIGTERM, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            self._signal(node.name, signal.SIGTERM, timeout)

    def kill(self) -> None:
        for node in self.nodes:
            self._signal(node.name, signal.SIGKILL, 5.0)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state, from the monitoring endpoints ---------------------------------------------------
    def jsz(self, name: str | None = None) -> dict[str, Any]:
        """``/jsz`` of a running node (the first running one if ``name`` is None)."""
        candidates = [self.node(name)] if name is not None else [n for n in self.nodes if self.running(n.name)]
        last: Exception | None = None
        for node in candidates:
            url = f"http://127.0.0.1:{node.http_port}/jsz?streams=true&consumers=true&config=true"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    data: dict[str, Any] = json.load(response)
                    return data
            except (OSError, urllib.error.URLError, ValueError) as err:
                last = err
        raise BrokerError(f"no NATS node answered /jsz: {last}")

    def meta_leader(self) -> str | None:
        leader = self.jsz().get("meta_cluster", {}).get("leader")
        return str(leader) if leader else None

    def streams(self) -> dict[str, dict[str, Any]]:
        """Every stream this node knows, by name, with its ``state``, ``cluster`` and consumers."""
        found: dict[str, dict[str, Any]] = {}
        for account in self.jsz().get("account_details", []):
            for stream in account.get("stream_detail", []) or []:
                found[stream["name"]] = stream
        return found

    def stream_leader(self, stream: str = MSGS_STREAM) -> str | None:
        """The node leading ``stream`` (the MQTT messages by default), as its leader reports it."""
        for node in self.nodes:
            if not self.running(node.name):
                continue
            try:
                info = self.jsz(node.name)
            except BrokerError:
                continue
            for account in info.get("account_details", []):
                for detail in account.get("stream_detail", []) or []:
                    leader = detail.get("cluster", {}).get("leader")
                    if detail["name"] == stream and leader:
                        return str(leader)
        return None

    def wait_ready(self, timeout: float) -> None:
        """A meta leader, the MQTT streams (made on the first MQTT connection) and the consumers."""
        from edgetally.nats_ready import ensure_ready

        ensure_ready(self, self._probe, timeout)
