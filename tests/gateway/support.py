"""Shared by the gateway tests: signed envelopes, a recording subscriber, a QoS 1 publisher,
and a gateway subprocess that is waited for through its ready file."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from devices.generator import device_batches
from protocol import (
    BATCH_FILTER,
    GATEWAY_BUNDLE_FILTER,
    Election,
    batch_topic,
    bundle,
    load_signing_key,
    parse_broker_url,
    parse_gateway_topic,
    seal,
)
from protocol.tls import ClientTls, client_context
from tests.helpers import start_cli, wait_until
from tests.support import wire
from tests.support.wire import Publishers

SEED = 7


@dataclass(frozen=True)
class Sent:
    topic: str
    payload: bytes
    device: str
    seq: int


def envelopes(
    election: Election, keys_dir: Path, devices: Sequence[str], batches: int
) -> list[Sent]:
    """Every batch of ``devices``, sealed with their provisioned keys, interleaved by seq."""
    per_device: list[list[Sent]] = []
    for device in devices:
        key = load_signing_key(keys_dir, device)
        per_device.append(
            [
                Sent(batch_topic(election.id, device), seal(body, key).to_bytes(), device, body.seq)
                for body in device_batches(election, SEED, device, batches)
            ]
        )
    return [sent for round_ in zip(*per_device, strict=True) for sent in round_]


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    retain: bool
    bundled: bool = False  # an entry of an uplink bundle (topic and bytes as in the bundle)


def _client(client_id: str, clean_session: bool) -> mqtt.Client:
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )


class Collector:
    """A plain subscriber that records everything matching ``topic_filter``.

    With ``persistent=True`` it keeps a broker session (clean_session=False) and paho
    reconnects it, so a broker stopped cleanly and restarted still queues for it.

    Uplink bundles (protocol/bundle.py) are recorded as their entries, each on its own device
    topic, as the cloud sees them; a collector of ``BATCH_FILTER`` also subscribes to the
    gateways' bundle topics, so it sees every envelope forwarded, bundled or not. With
    ``unwrap=False`` it records the MQTT messages as they are.
    """

    def __init__(
        self,
        url: str,
        topic_filter: str,
        *,
        persistent: bool = False,
        unwrap: bool = True,
        tls: ClientTls | None = None,
    ) -> None:
        """``tls``: the certificate to connect to an mqtts:// broker with; by default a monitor's
        of the session's wire (reads everything, writes nothing: a watcher)."""
        self.address = parse_broker_url(url)
        if tls is None and self.address.tls:
            tls = wire.current().monitor()
        self.topic_filter = topic_filter
        self.unwrap = unwrap
        self.client = _client(
            f"test-collector-{uuid.uuid4().hex[:12]}", clean_session=not persistent
        )
        if tls is not None:
            self.client.tls_set_context(client_context(tls))
        self.client.reconnect_delay_set(1, 1)
        self.lock = threading.Lock()
        self.got: list[Got] = []
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_args: object) -> None:
        if self.unwrap and self.topic_filter == BATCH_FILTER:
            client.subscribe([(BATCH_FILTER, 1), (GATEWAY_BUNDLE_FILTER, 1)])
        else:
            client.subscribe(self.topic_filter, qos=1)

    def _on_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        payload = bytes(message.payload)
        if self.unwrap and parse_gateway_topic(message.topic, "bundle") is not None:
            got = [Got(e.topic, e.payload, False, bundled=True) for e in bundle.decode(payload)]
        else:
            got = [Got(message.topic, payload, bool(message.retain))]
        with self.lock:
            self.got.extend(got)

    def start(self) -> Collector:
        self.client.connect(self.address.host, self.address.port, keepalive=10)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, f"subscription to {self.topic_filter}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def messages(self) -> list[Got]:
        with self.lock:
            return list(self.got)

    def payloads(self) -> set[bytes]:
        return {got.payload for got in self.messages()}


def publish_all(
    url: str, items: Sequence[tuple[str, bytes]], *, retain: bool = False, tls: ClientTls | None = None
) -> None:
    """Publish QoS 1 and return once the broker acknowledged every message (rc checked), in
    the order given, each under the identity of its role (:class:`Publishers`)."""
    publishers = Publishers(url, tls)
    try:
        infos = []
        for topic, payload in items:
            info = publishers.client(topic).publish(topic, payload, qos=1, retain=retain)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish rc {info.rc}"
            infos.append(info)
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published(), "the broker did not acknowledge a publish within 30 s"
    finally:
        publishers.close()


@dataclass
class GatewayRun:
    proc: subprocess.Popen[bytes]
    log: Path
    ready: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_gateway(
    processes: list[subprocess.Popen[bytes]],
    workdir: Path,
    *,
    edge: str,
    cloud: str,
    buffer: Path,
    keys: Path,
    name: str = "gw",
    extra: Sequence[str] = (),
    wait_ready: bool = True,
) -> GatewayRun:
    """Start ``edgetally gateway run`` as a subprocess; by default wait for its ready file."""
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)  # a killed run leaves its ready file behind
    log = workdir / f"{name}.log"
    locked = parse_broker_url(edge).tls or parse_broker_url(cloud).tls
    pki = ["--pki", str(wire.current().pki)] if locked and "--pki" not in extra else []
    proc = start_cli(
        "gateway", "run",
        "--edge", edge, "--cloud", cloud, "--buffer", str(buffer), "--keys", str(keys),
        "--ready-file", str(ready), *pki, *extra,
        log=log,
    )  # fmt: skip
    processes.append(proc)
    run = GatewayRun(proc, log, ready)
    if wait_ready:
        wait_until(
            lambda: ready.exists() or proc.poll() is not None, 30, f"gateway ready file {ready}"
        )
        assert proc.poll() is None, f"gateway exited {proc.returncode}:\n{run.log_text()}"
    return run
