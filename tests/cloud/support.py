"""Helpers for the cloud tests: signed envelopes of the sample election, an MQTT publisher and
a retained-message reader (real paho clients against the real broker), ledger counts."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cloud import models
from cloud.config import DEFAULT_CLOUD_ID
from cloud.ledger.ledger import Inbound
from devices.generator import device_batches
from protocol import (
    BatchBody,
    Election,
    Receipt,
    Registry,
    RepairRequest,
    SigningKey,
    batch_topic,
    body_hash,
    load_signing_key,
    parse_envelope,
    seal,
)
from protocol.signed import open_receipt, open_repair
from protocol.tls import ClientTls, client_context
from tests.helpers import wait_until
from tests.support import wire

SEED = 7


class Envelopes:
    """Batches of the sample election, sealed with the provisioned keys."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.registry = Registry.load(keys_dir)
        self._keys: dict[str, SigningKey] = {}

    @property
    def election(self) -> Election:
        return self.registry.election

    def devices(self, n: int) -> list[str]:
        return list(self.election.devices[:n])

    def key(self, device: str) -> SigningKey:
        if device not in self._keys:
            self._keys[device] = load_signing_key(self.keys_dir, device)
        return self._keys[device]

    def bodies(self, device: str, batches: int, seed: int = SEED) -> list[BatchBody]:
        return device_batches(self.election, seed, device, batches)

    def payload(self, body: BatchBody, key: SigningKey | None = None) -> bytes:
        return seal(body, key or self.key(body.device)).to_bytes()

    def inbound(
        self, body: BatchBody, *, key: SigningKey | None = None, topic: str | None = None
    ) -> Inbound:
        return raw_inbound(
            self.payload(body, key), topic or batch_topic(body.election, body.device)
        )

    def messages(self, devices: Iterable[str], batches: int, seed: int = SEED) -> list[Inbound]:
        """Every batch of ``devices``, device by device, in seq order."""
        return [self.inbound(b) for d in devices for b in self.bodies(d, batches, seed)]

    def receipt(self, payload: bytes) -> Receipt:
        """The receipt the cloud published, as the device it names would open it: signed by
        the registry's cloud key (raises ProtocolError otherwise)."""
        named = Receipt.parse(parse_envelope(payload).body)
        return open_receipt(payload, self.registry.cloud_key, election=named.election, device=named.device)

    def repair(self, payload: bytes) -> RepairRequest:
        """The repair request the cloud published, opened as its device would."""
        named = RepairRequest.parse(parse_envelope(payload).body)
        return open_repair(payload, self.registry.cloud_key, election=named.election, device=named.device)


def raw_inbound(payload: bytes, topic: str) -> Inbound:
    return Inbound(topic, payload, datetime.now(UTC))


def hash_of(body: BatchBody) -> str:
    return body_hash(body.to_bytes())


def ledger_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(models.ledger)).scalar_one())


# -- MQTT ------------------------------------------------------------------------------


def _client(client_id: str = "") -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)


class Publisher:
    """A QoS 1 publisher that waits for the broker's PUBACK of everything it sent. On a locked
    broker each message goes out under the identity of its role (tests/support/wire.py: a
    gateway stand-in for batches, bundles and statuses, a cloud stand-in for receipts)."""

    def __init__(self, port: int) -> None:
        found = wire.current_or_none()
        self._publishers = wire.Publishers(found.url(port) if found else f"mqtt://127.0.0.1:{port}")

    def publish_all(self, messages: Sequence[Inbound], timeout: float = 30) -> None:
        infos = []
        for message in messages:
            info = self._publishers.client(message.topic).publish(message.topic, message.payload, qos=1)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
            infos.append(info)
        for info in infos:
            info.wait_for_publish(timeout)
            assert info.is_published()

    def close(self) -> None:
        self._publishers.close()


def _locked_watcher(port: int) -> ClientTls | None:
    found = wire.current_or_none()
    return found.watcher(port) if found is not None else None


def retained(port: int, topic_filter: str, count: int, timeout: float = 3) -> dict[str, bytes]:
    """What a fresh subscriber gets as retained messages on ``topic_filter``.

    Collects until ``count`` topics or ``timeout``; messages published after the subscription
    (not flagged retained) are ignored, so callers poll this until it shows what they expect.
    """
    got: dict[str, bytes] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            with lock:
                got[message.topic] = bytes(message.payload)
                if len(got) >= count:
                    enough.set()

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        client.subscribe(topic_filter, qos=1)

    client = _client()
    watcher = _locked_watcher(port)  # a monitor on a locked broker: reads all, writes nothing
    if watcher is not None:
        client.tls_set_context(client_context(watcher))
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        enough.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return dict(got)


def take_over_session(port: int, client_id: str, cloud_id: str = DEFAULT_CLOUD_ID) -> None:
    """Connect with ``client_id`` (clean_session=False): the broker drops the client holding
    that id, keeping its session and unacked messages; then leave without acking anything.

    On a locked broker the session is named for the certificate, not ``client_id``: the one
    who takes it over is that cloud worker's own identity (``cloud_id``) connecting again."""
    connected = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=mqtt.MQTTv311, manual_ack=True,
    )  # fmt: skip
    found = wire.current_or_none()
    if found is not None and port in found.locked:
        client.tls_set_context(client_context(found.cloud(cloud_id)))
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(connected.is_set, 10, f"the session take-over as {client_id}")
    finally:
        client.disconnect()
        client.loop_stop()
