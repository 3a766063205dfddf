"""The tests' locked-down wire: one PKI per session (edgetally.wire.Wire for the provisioned
``keys_dir`` registry), and which certificate a test harness client connects with.

Brokers from ``broker_factory`` run TLS with client certificates and the registry's ACLs, as the
product's do. A harness client plays one role and connects with that role's certificate, the
one the ACL grants what it does:

- a watcher (``Collector``) is a **monitor**: reads every EdgeTally topic, writes nothing;
- a publisher of a device's batch or status on the edge broker is **that device**;
- a publisher of receipts or commands on the edge broker stands in for a **gateway**;
- on the cloud broker a publisher of batches, or of a gateway's bundle or status, is **a
  gateway** (that gateway, for its bundle and status); of receipts or commands, **a cloud**.

Nobody gets an all-powerful identity: what the ACL does not grant, a harness cannot do either.
Mosquitto names a client by its certificate (``use_username_as_clientid``), so clients that are
up at once need distinct identities: watchers and stand-ins take the next one of a small pool.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.config import DEFAULT_CLOUD_ID
from edgetally.acl import BrokerKind
from edgetally.wire import Wire
from protocol import (
    BrokerAddress,
    Registry,
    parse_broker_url,
    parse_device_topic,
    parse_gateway_topic,
)
from protocol.tls import ClientTls, Role, client_context, client_tls
from protocol.topics import DeviceTopicKind
from tests.helpers import wait_until

# Gateway ids the tests run gateways as (--id, GatewayConfig.gateway_id) or publish statuses for.
GATEWAYS = (
    "gw1", "gw2", "gw-a", "gw-b", "gw-status", "gw-flood", "gw-ok", "gw-bad", "gw-liar",
    "gw-test", "gw9", "bp", "qf", "stand-in-gw1", "stand-in-gw2", "stand-in-gw3",
)  # fmt: skip
# Cloud worker ids the tests run (--id) and the harness's cloud stand-ins.
CLOUDS = (DEFAULT_CLOUD_ID, "cloud2", "cloud3", "w0", "w1", "w2", "w3", "stand-in-c1", "stand-in-c2", "stand-in-c3")
MONITORS = tuple(f"watch{i}" for i in range(1, 17))
_STAND_IN_GATEWAYS = tuple(g for g in GATEWAYS if g.startswith("stand-in-"))
_STAND_IN_CLOUDS = tuple(c for c in CLOUDS if c.startswith("stand-in-"))


@dataclass
class TestWire:
    """The session's PKI (``wire.pki``) and device certificates (``wire.keys``: ``keys_dir``
    with ``clients/device-*.crt`` and ``ca.crt``); the brokers' kinds by port."""

    __test__ = False  # not a test class

    wire: Wire
    kinds: dict[int, BrokerKind] = field(default_factory=dict)
    locked: set[int] = field(default_factory=set)  # ports of the brokers that run TLS
    _monitors: itertools.cycle[str] = field(default_factory=lambda: itertools.cycle(MONITORS))
    _gateways: itertools.cycle[str] = field(default_factory=lambda: itertools.cycle(_STAND_IN_GATEWAYS))
    _clouds: itertools.cycle[str] = field(default_factory=lambda: itertools.cycle(_STAND_IN_CLOUDS))

    @property
    def pki(self) -> Path:
        return self.wire.pki

    @property
    def keys(self) -> Path:
        return self.wire.keys

    def watcher(self, port: int) -> ClientTls | None:
        """A monitor's certificate for a watcher of the broker on ``port`` (None: plain)."""
        return self.monitor() if port in self.locked else None

    def url(self, port: int) -> str:
        """The URL of the broker on 127.0.0.1 ``port``: mqtts:// when it runs TLS."""
        return f"{'mqtts' if port in self.locked else 'mqtt'}://127.0.0.1:{port}"

    def monitor(self) -> ClientTls:
        return client_tls(self.pki, Role.MONITOR, next(self._monitors))

    def gateway(self, ident: str | None = None) -> ClientTls:
        return client_tls(self.pki, Role.GATEWAY, ident or next(self._gateways))

    def cloud(self, ident: str | None = None) -> ClientTls:
        return client_tls(self.pki, Role.CLOUD, ident or next(self._clouds))

    def device(self, device: str) -> ClientTls:
        return client_tls(self.keys, Role.DEVICE, device)

    def publisher(self, url: str, topic: str) -> tuple[Role, str | None] | None:
        """The role (and identity; None: any stand-in of that role) a harness publishing to
        ``topic`` on the broker at ``url`` plays; None for a plain broker. A topic no role may
        write gets a gateway stand-in: the broker drops it, as it would anybody's."""
        address = parse_broker_url(url)
        if not address.tls:
            return None
        kind = self.kinds.get(address.port, BrokerKind.EDGE)
        for gateway_kind in ("status", "bundle"):
            gateway = parse_gateway_topic(topic, gateway_kind)
            if gateway is not None:
                return Role.GATEWAY, gateway
        parsed = parse_device_topic(topic)
        receipt_or_command = parsed is not None and parsed.kind in (DeviceTopicKind.RECEIPT, DeviceTopicKind.COMMAND)
        if kind is BrokerKind.EDGE:
            if parsed is not None and not receipt_or_command:
                return Role.DEVICE, parsed.device
            return Role.GATEWAY, None
        return (Role.CLOUD, None) if receipt_or_command else (Role.GATEWAY, None)

    def files(self, role: Role, ident: str | None) -> ClientTls:
        """The certificate of ``role`` ``ident`` (None: the next stand-in of that role)."""
        if role is Role.DEVICE:
            assert ident is not None
            return self.device(ident)
        if role is Role.CLOUD:
            return self.cloud(ident)
        if role is Role.MONITOR:
            return self.monitor() if ident is None else client_tls(self.pki, Role.MONITOR, ident)
        return self.gateway(ident)


def make_wire(root: Path, keys_dir: Path, registry: Registry) -> TestWire:
    """A PKI in ``root/pki`` for ``registry``, and every device's certificate in ``keys_dir``
    (beside its signing key, as ``devices provision --pki`` puts it): device processes on a
    locked broker take their certificates from the keys directory they are given."""
    wire = Wire(root / "pki", keys_dir, GATEWAYS, CLOUDS, MONITORS)
    wire.prepare(registry)
    return TestWire(wire)


def copy_keys(keys_dir: Path, into: Path) -> None:
    """``keys_dir``'s signing keys and registry without the session's TLS files (certificates
    from another PKI would be kept by :meth:`Wire.prepare` and refused by that PKI's broker)."""
    shutil.copytree(keys_dir, into, ignore=shutil.ignore_patterns("clients", "ca.crt"))


def secure(client: mqtt.Client, url: str, role: Role, ident: str | None = None) -> None:
    """On an mqtts:// broker, ``client`` connects with the certificate of ``role`` (``ident``,
    or the next stand-in of that role); on a plain one it stays plain."""
    if parse_broker_url(url).tls:
        client.tls_set_context(client_context(current().files(role, ident)))


_current: TestWire | None = None


def current() -> TestWire:
    """The session's wire (set by the ``test_wire`` fixture of tests/conftest.py)."""
    assert _current is not None, "the test_wire fixture is not active"
    return _current


def install(wire: TestWire | None) -> None:
    global _current
    _current = wire


def pki_args(*urls: str) -> list[str]:
    """``--pki DIR`` for a gateway or cloud worker run on any mqtts:// broker, as the Stack does."""
    return ["--pki", str(current().pki)] if any(parse_broker_url(u).tls for u in urls) else []


def component_tls(role: Role, ident: str, *urls: str) -> ClientTls | None:
    """An in-process gateway's (or cloud's) certificate when any of ``urls`` is mqtts://."""
    return client_tls(current().pki, role, ident) if any(parse_broker_url(u).tls for u in urls) else None


def current_or_none() -> TestWire | None:
    return _current


def _publisher(address: BrokerAddress, tls: ClientTls | None) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"test-publisher-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv311
    )
    if tls is not None:
        client.tls_set_context(client_context(tls))
    client.max_inflight_messages_set(1000)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: connected.set() if not rc.is_failure else None
    client.connect(address.host, address.port, keepalive=10)
    client.loop_start()
    wait_until(connected.is_set, 10, f"publisher {tls.name if tls else ''} connected to {address.url}")
    return client


class Publishers:
    """QoS 1 publishing connections to the broker at ``url``, one per identity: on an mqtts://
    broker each topic goes out under the identity that plays its role (tests/support/wire.py:
    a device its own batches, a gateway stand-in receipts, ...); ``tls`` forces one for all."""

    def __init__(self, url: str, tls: ClientTls | None = None) -> None:
        self.url = url
        self.address = parse_broker_url(url)
        self.tls = tls
        self.clients: dict[str, mqtt.Client] = {}
        self.stand_ins: dict[Role, ClientTls] = {}  # one per role: one connection, in order

    def _files(self, topic: str) -> ClientTls | None:
        if self.tls is not None or not self.address.tls:
            return self.tls
        role = current().publisher(self.url, topic)
        assert role is not None
        if role[1] is not None:
            return current().files(*role)
        if role[0] not in self.stand_ins:
            self.stand_ins[role[0]] = current().files(*role)
        return self.stand_ins[role[0]]

    def client(self, topic: str) -> mqtt.Client:
        files = self._files(topic)
        key = files.name if files is not None else ""
        if key not in self.clients:
            self.clients[key] = _publisher(self.address, files)
        return self.clients[key]

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()
