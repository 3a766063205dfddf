"""Ingress: acknowledgement only after commit, against a real Mosquitto, with the ingress in
this process (verification itself: tests/gateway/test_verify.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgetally.brokers import BrokerProcess
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.ingress import Ingress
from protocol import (
    Election,
    Registry,
    parse_broker_url,
)
from protocol.tls import Role, client_context
from tests.gateway.support import Sent, envelopes, publish_all
from tests.helpers import wait_until
from tests.support.wire import component_tls


@pytest.fixture
def config(tmp_path: Path, edge: BrokerProcess, keys_dir: Path) -> GatewayConfig:
    address = parse_broker_url(edge.url)
    return GatewayConfig(
        gateway_id="gw1",
        tls=component_tls(Role.GATEWAY, "gw1", address.url),
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
    """Resume the gateway's edge session with a bare client standing in for the gateway (its
    certificate: the broker names the session for it); return what arrives before ``sentinel``.

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
    files = component_tls(Role.GATEWAY, config.gateway_id, config.edge.url)
    if files is not None:
        client.tls_set_context(client_context(files))
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
