"""The tests' container broker (tests/support/container_broker.py) runs the local broker's config,
and carries locked-down traffic as the local one does. The traffic test runs on both: the local
binary, and eclipse-mosquitto:2 through testcontainers, skipped with the engine's error where no
Docker engine answers."""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess, mosquitto_binary, mosquitto_config
from protocol import Registry, batch_topic
from protocol.tls import Role
from tests.helpers import wait_until
from tests.support import wire
from tests.support.broker_choice import no_engine_reason, session_docker_error
from tests.support.container_broker import ContainerBroker, container_config, mounts
from tests.support.wire import TestWire

PATH_KEYS = ("cafile", "certfile", "keyfile", "acl_file", "persistence_location")


def _container(tmp_path: Path, test_wire: TestWire) -> ContainerBroker:
    return ContainerBroker(tmp_path / "broker-edge", name="edge", tls=test_wire.wire.broker(BrokerKind.EDGE))


def test_the_container_runs_the_local_config_with_only_the_listener_open_to_the_container(
    tmp_path: Path, test_wire: TestWire
) -> None:
    broker = _container(tmp_path, test_wire)
    local = mosquitto_config(broker.port, broker.workdir, broker.settings, broker.tls).splitlines()
    inside = container_config(broker).splitlines()
    differing = [(a, b) for a, b in zip(local, inside, strict=True) if a != b]
    # Inside its container the broker listens on every interface; the engine publishes that
    # port on the host's 127.0.0.1 only (ContainerBroker.start). Nothing else differs.
    assert differing == [(f"listener {broker.port} 127.0.0.1", f"listener {broker.port}")]
    assert "allow_anonymous false" in inside and "require_certificate true" in inside


def test_every_path_in_the_container_config_is_mounted_at_that_path(tmp_path: Path, test_wire: TestWire) -> None:
    broker = _container(tmp_path, test_wire)
    named = [
        Path(line.split()[-1])
        for line in container_config(broker).splitlines()
        if line.split(" ", 1)[0] in PATH_KEYS or line.startswith("log_dest file ")
    ]
    assert len(named) == len(PATH_KEYS) + 1
    mounted = {Path(host): (Path(inside), mode) for host, inside, mode in mounts(broker)}
    assert all(host == inside for host, (inside, _mode) in mounted.items())
    for path in named:
        assert any(path == host or host in path.parents for host in mounted), f"{path} is not mounted"
    assert mounted[broker.workdir][1] == "rw"  # persistence and log are written there
    assert all(mode == "ro" for host, (_inside, mode) in mounted.items() if host != broker.workdir)


@pytest.fixture(params=["local", "testcontainers"])
def either_broker(request: pytest.FixtureRequest, tmp_path: Path, test_wire: TestWire) -> Iterator[BrokerProcess]:
    """A started locked-down edge broker: the local binary, or the container with the same config."""
    tls = test_wire.wire.broker(BrokerKind.EDGE)
    broker: BrokerProcess
    if request.param == "local":
        if mosquitto_binary() is None:
            pytest.skip("no mosquitto binary (apt-get install mosquitto)")
        broker = BrokerProcess(tmp_path / "broker-edge", name="edge", embedded=False, tls=tls)
    else:
        error = session_docker_error()
        if error is not None:
            pytest.skip(no_engine_reason("this test runs Mosquitto through testcontainers", error))
        broker = _container(tmp_path, test_wire)
    test_wire.kinds[broker.port] = BrokerKind.EDGE
    test_wire.locked.add(broker.port)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def _client(name: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)


def test_a_locked_broker_carries_tls_traffic_and_refuses_a_client_without_a_certificate(
    either_broker: BrokerProcess, registry: Registry
) -> None:
    broker = either_broker
    assert broker.url.startswith("mqtts://127.0.0.1:")
    device = registry.election.devices[0]
    topic = batch_topic(registry.election.id, device)
    received: list[bytes] = []
    subscribed = threading.Event()
    watcher = _client("watch")
    wire.secure(watcher, broker.url, Role.MONITOR)
    watcher.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, 1)
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_message = lambda _c, _u, message: received.append(message.payload)
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    publisher = _client("device")
    wire.secure(publisher, broker.url, Role.DEVICE, device)
    try:
        assert subscribed.wait(15), "the watcher's subscription was not acknowledged"
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        for i in range(20):
            publisher.publish(topic, f"batch {i}".encode(), qos=1).wait_for_publish(10)
        wait_until(lambda: len(received) >= 20, 15, "the 20 batches reached the watcher")
        assert received == [f"batch {i}".encode() for i in range(20)]
    finally:
        for client in (publisher, watcher):
            client.disconnect()
            client.loop_stop()

    # The broker's CA, but no certificate of its own: over TLS 1.3 the refusal comes after the
    # handshake, as the connection closed before any CONNACK; over TLS 1.2 in the handshake.
    anonymous = _client("anonymous")
    anonymous.tls_set_context(ssl.create_default_context(cafile=str(broker.tls.ca if broker.tls else "")))
    accepted, closed = threading.Event(), threading.Event()
    anonymous.on_connect = lambda _c, _u, _f, rc, _p: accepted.set() if not rc.is_failure else None
    anonymous.on_disconnect = lambda *_: closed.set()
    try:
        anonymous.connect("127.0.0.1", broker.port)
    except OSError:  # ssl.SSLError, or the connection reset in the handshake
        closed.set()
    else:
        anonymous.loop_start()
        wait_until(lambda: closed.is_set() or accepted.is_set(), 15, "the broker answered the anonymous client")
        anonymous.loop_stop()
    assert closed.is_set() and not accepted.is_set()
    assert "New client connected" in broker.log_path.read_text()
