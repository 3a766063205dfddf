"""Ingress: verification into pending or quarantined rows, and acknowledgement only after commit
(the latter against a real Mosquitto, with the ingress in this process)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devices.generator import device_batches
from edgetally.brokers import BrokerProcess
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.ingress import Ingress, classify
from protocol import (
    Election,
    Envelope,
    Registry,
    RejectReason,
    batch_topic,
    load_signing_key,
    parse_broker_url,
    seal,
)
from tests.gateway.support import Sent, envelopes, publish_all
from tests.helpers import wait_until


@pytest.fixture
def good(sample_election: Election, keys_dir: Path) -> Sent:
    device = sample_election.devices[0]
    body = device_batches(sample_election, 7, device, 2)[1]
    payload = seal(body, load_signing_key(keys_dir, device)).to_bytes()
    return Sent(batch_topic(sample_election.id, device), payload, device, body.seq)


def test_verified_batch_becomes_a_pending_row_naming_device_and_seq(
    good: Sent, registry: Registry
) -> None:
    row = classify(good.topic, good.payload, 1.5, registry, 65536)
    assert row.state is State.PENDING
    assert (row.device, row.seq, row.payload, row.received_at) == (
        good.device,
        2,
        good.payload,
        1.5,
    )
    assert row.body_hash is not None and len(row.body_hash) == 64


def test_bad_signature_is_quarantined_with_reason_detail_and_seq(
    sample_election: Election, keys_dir: Path, registry: Registry
) -> None:
    device = sample_election.devices[0]
    first, second = device_batches(sample_election, 7, device, 2)
    key = load_signing_key(keys_dir, device)
    forged = Envelope(
        body=second.to_bytes(), sig=key.sign(first.to_bytes()), kid=key.kid
    ).to_bytes()
    row = classify(batch_topic(sample_election.id, device), forged, 0.0, registry, 65536)
    assert row.state is State.QUARANTINED
    assert row.reason == "bad_signature"
    assert "does not verify" in (row.detail or "")
    assert (row.device, row.seq) == (device, 2)


def test_malformed_payload_is_quarantined(good: Sent, registry: Registry) -> None:
    row = classify(good.topic, b"\xff\xfe not json", 0.0, registry, 65536)
    assert (row.state, row.reason, row.seq) == (State.QUARANTINED, "malformed_json", None)


def test_oversize_payload_is_quarantined_under_the_configured_limit(
    good: Sent, registry: Registry
) -> None:
    row = classify(good.topic, good.payload, 0.0, registry, len(good.payload) - 1)
    assert (row.state, row.reason) == (State.QUARANTINED, "oversize")


def test_batch_on_another_devices_topic_is_quarantined(
    good: Sent, sample_election: Election, registry: Registry
) -> None:
    other = batch_topic(sample_election.id, sample_election.devices[1])
    row = classify(other, good.payload, 0.0, registry, 65536)
    assert (row.state, row.reason) == (State.QUARANTINED, "topic_mismatch")


def test_batch_on_another_elections_topic_is_quarantined(good: Sent, registry: Registry) -> None:
    row = classify(batch_topic("other-election", good.device), good.payload, 0.0, registry, 65536)
    assert (row.state, row.reason) == (State.QUARANTINED, "topic_mismatch")
    assert "other-election" in (row.detail or "")


def test_message_on_a_topic_that_is_not_a_device_batch_topic_is_quarantined(
    good: Sent, registry: Registry
) -> None:
    row = classify("edgetally/v1/_gateway/gw1/batch", good.payload, 0.0, registry, 65536)
    assert (row.state, row.reason) == (State.QUARANTINED, RejectReason.BAD_TOPIC.value)


# -- against a real broker -----------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, edge: BrokerProcess, keys_dir: Path) -> GatewayConfig:
    address = parse_broker_url(edge.url)
    return GatewayConfig(
        gateway_id=f"t{uuid.uuid4().hex[:8]}",
        edge=address,
        cloud=address,  # unused here
        buffer_path=tmp_path / "b.db",
        keys_dir=keys_dir,
    )


@pytest.fixture
def buffer(config: GatewayConfig) -> Iterator[Buffer]:
    with Buffer(config.buffer_path) as opened:
        yield opened


def redelivered_to_session(config: GatewayConfig, sentinel: Sent) -> list[bytes]:
    """Resume the gateway's edge session with a plain client; return what arrives before ``sentinel``.

    The broker resends unacknowledged messages of the session first, then new ones; so
    everything before the sentinel is what the gateway had left unacknowledged.
    """
    got: list[bytes] = []
    lock = threading.Lock()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=config.edge_client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(bytes(message.payload))

    client.on_message = on_message
    client.connect(config.edge.host, config.edge.port)
    client.loop_start()
    try:
        wait_until(connected.is_set, 10, "the resumed session")
        publish_all(config.edge.url, [(sentinel.topic, sentinel.payload)])

        def seen() -> bool:
            with lock:
                return sentinel.payload in got

        wait_until(seen, 10, "the sentinel")
        with lock:
            return [p for p in got[: got.index(sentinel.payload)] if p != sentinel.payload]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
def test_gateway_acks_nothing_before_commit(
    config: GatewayConfig,
    buffer: Buffer,
    registry: Registry,
    sample_election: Election,
    keys_dir: Path,
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:4], 5)
    sentinel, sent = sent[-1], sent[:-1]
    ingress = Ingress(config, registry, buffer)  # no writer running: nothing can commit
    ingress.start()
    wait_until(ingress.ready.is_set, 10, "edge subscription")
    publish_all(config.edge.url, [(s.topic, s.payload) for s in sent])
    wait_until(lambda: ingress.queued == len(sent), 10, "every message queued")
    ingress.stop()
    assert buffer.counts()[State.PENDING] == 0
    assert sorted(redelivered_to_session(config, sentinel)) == sorted(s.payload for s in sent)


@pytest.mark.integration
def test_gateway_acks_each_message_after_its_commit(
    config: GatewayConfig,
    buffer: Buffer,
    registry: Registry,
    sample_election: Election,
    keys_dir: Path,
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:4], 5)
    sentinel, sent = sent[-1], sent[:-1]
    stored = threading.Event()
    ingress = Ingress(config, registry, buffer, on_stored=stored.set)
    stop = threading.Event()
    writer = threading.Thread(target=ingress.run_writer, args=(stop,))
    writer.start()
    try:
        ingress.start()
        wait_until(ingress.ready.is_set, 10, "edge subscription")
        publish_all(config.edge.url, [(s.topic, s.payload) for s in sent])
        wait_until(lambda: ingress.acked == len(sent), 10, "every message acked")
        assert stored.is_set()
        assert buffer.counts()[State.PENDING] == len(sent)
    finally:
        stop.set()
        writer.join(10)
        ingress.stop()
    assert redelivered_to_session(config, sentinel) == []


@pytest.mark.integration
def test_commit_of_an_earlier_connection_is_not_acked_and_its_redelivery_is_deduplicated(
    config: GatewayConfig,
    buffer: Buffer,
    registry: Registry,
    sample_election: Election,
    keys_dir: Path,
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:2], 5)
    sentinel, sent = sent[-1], sent[:-1]
    ingress = Ingress(config, registry, buffer)
    ingress.start()
    wait_until(ingress.ready.is_set, 10, "edge subscription")
    publish_all(config.edge.url, [(s.topic, s.payload) for s in sent])
    wait_until(lambda: ingress.queued == len(sent), 10, "every message queued")
    ingress.restart_link()  # new connection: the queued packet ids are stale now
    wait_until(lambda: ingress.queued == 2 * len(sent), 10, "the broker's redelivery")
    stop = threading.Event()
    stop.set()  # drain what is queued, then return
    started = time.monotonic()
    ingress.run_writer(stop)
    assert time.monotonic() - started < 10
    assert (ingress.stale, ingress.acked) == (len(sent), len(sent))
    assert (ingress.stored, ingress.duplicates) == (len(sent), len(sent))
    assert buffer.counts()[State.PENDING] == len(sent)
    ingress.stop()
    assert redelivered_to_session(config, sentinel) == []
