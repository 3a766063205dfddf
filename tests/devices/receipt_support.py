"""What the cloud would receipt for a device, and a stand-in cloud publishing it, for tests
that stand in for the cloud."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Mapping

import paho.mqtt.client as mqtt

from edgetally.brokers import BrokerProcess
from protocol import (
    BATCH_FILTER,
    GENESIS_HASH,
    Receipt,
    Registry,
    SigningKey,
    parse_broker_url,
    parse_device_topic,
    receipt_topic,
    verify,
)
from protocol.signed import sign_receipt
from protocol.tls import Role
from protocol.topics import STATUS_FILTER
from tests.support.wire import secure


def contiguous_receipt(election: str, device: str, held: Mapping[int, str]) -> Receipt:
    """The receipt for ``held`` (seq -> body hash): the highest seq with every seq below it held."""
    top, top_hash = 0, GENESIS_HASH
    while top + 1 in held:
        top += 1
        top_hash = held[top]
    return Receipt(election, device, top, top_hash)


def signed_contiguous_receipt(election: str, device: str, held: Mapping[int, str], key: SigningKey) -> bytes:
    """:func:`contiguous_receipt` as the cloud publishes it: signed with the cloud ``key``."""
    return sign_receipt(contiguous_receipt(election, device, held), key)


def stand_in_cloud_client(
    broker: BrokerProcess, client_id: str, on_message: mqtt.CallbackOnMessage, *filters: str
) -> mqtt.Client:
    """A started paho client on the edge broker that subscribes to ``filters`` (QoS 1) and hands
    what arrives to ``on_message``: a stand-in for the cloud behind a gateway. On the edge broker
    whoever reads batches and writes receipts is a gateway (edgetally/acl.py), so it connects with
    a gateway stand-in's certificate."""
    address = parse_broker_url(broker.url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    secure(client, broker.url, Role.GATEWAY)
    client.on_connect = lambda c, *_: [c.subscribe(f, 1) for f in filters]
    client.on_message = on_message
    client.connect(address.host, address.port)
    client.loop_start()
    return client


class ReceiptingCloud:
    """Subscribes to batches, verifies them, and publishes receipts like the cloud does.

    ``withhold`` names (device, seq) pairs whose first copy is ignored, as if lost on the way.
    """

    def __init__(
        self, broker: BrokerProcess, registry: Registry, key: SigningKey, withhold: set[tuple[str, int]] | None = None
    ) -> None:
        self.registry = registry
        self.key = key  # the cloud's signing key: devices ignore receipts not signed with it
        self.withhold = set(withhold or ())
        self.held: dict[str, dict[int, str]] = defaultdict(dict)
        self.copies: dict[tuple[str, int], int] = defaultdict(int)
        self.statuses: dict[str, dict[str, object]] = {}
        self.lock = threading.Lock()
        self.client = stand_in_cloud_client(broker, "test-cloud", self._on_message, BATCH_FILTER, STATUS_FILTER)

    def _on_message(self, client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        topic = parse_device_topic(message.topic)
        assert topic is not None
        if topic.kind == "status":
            self.statuses[topic.device] = json.loads(message.payload)
            return
        batch = verify(message.payload, self.registry, topic_device=topic.device)
        device, seq = batch.body.device, batch.body.seq
        with self.lock:
            self.copies[(device, seq)] += 1
            if (device, seq) in self.withhold:
                self.withhold.discard((device, seq))
                return
            self.held[device][seq] = batch.body_hash
            payload = signed_contiguous_receipt(batch.body.election, device, self.held[device], self.key)
        client.publish(receipt_topic(batch.body.election, device), payload, qos=1, retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
