"""The lean device connection over TLS (devices/tls.py) against a locked-down Mosquitto
(client certificates, ACL from the registry), and the fleet's refusals before it connects."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices._exceptions import ConnectionFailed
from devices.connection import ConnectOptions, KeepaliveWheel, connect
from devices.tls import DeviceTls, FleetTls
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess, BrokerTls
from edgetally.wire import Wire
from protocol import Registry, batch_topic
from protocol.pki import create_authority, issue
from protocol.tls import ClientTls, Role, client_context, client_tls
from tests.helpers import run_cli
from tests.support.wire import copy_keys

pytestmark = pytest.mark.integration
TIMEOUT_S = 20


@pytest.fixture
def wire(tmp_path: Path, keys_dir: Path, registry: Registry) -> Wire:
    keys = tmp_path / "keys"
    copy_keys(keys_dir, keys)  # without the session PKI's device certificates
    made = Wire(tmp_path / "pki", keys)
    made.prepare(registry)
    return made


@pytest.fixture
def locked(wire: Wire, tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path / "edge", name="edge", embedded=False, tls=wire.broker(BrokerKind.EDGE))
    broker.start()
    yield broker
    broker.kill()


def _options(broker: BrokerProcess, device: str, tls: DeviceTls) -> ConnectOptions:
    return ConnectOptions("127.0.0.1", broker.port, f"edgetally-dev-{device}", tls=tls, timeout=TIMEOUT_S)


def _device_tls(keys: Path, device: str, fleet: FleetTls | None = None) -> DeviceTls:
    return DeviceTls(fleet or FleetTls(keys / "ca.crt"), client_tls(keys, Role.DEVICE, device))


def test_a_device_connects_over_tls_with_its_certificate_and_publishes_its_batch(
    wire: Wire, locked: BrokerProcess, registry: Registry
) -> None:
    device = registry.election.devices[0]
    context = _device_tls(wire.keys, device)

    async def main() -> None:
        wheel = KeepaliveWheel()
        conn = await connect(_options(locked, device, context), wheel)
        assert conn.is_connected
        await asyncio.wait_for(conn.publish(batch_topic(registry.election.id, device), b"{}", qos=1), TIMEOUT_S)
        await conn.disconnect()
        wheel.close()

    asyncio.run(asyncio.wait_for(main(), 2 * TIMEOUT_S))


def test_devices_sharing_the_fleets_context_each_present_their_own_certificate(
    wire: Wire, locked: BrokerProcess, registry: Registry
) -> None:
    """One context for the fleet (devices/tls.py): A's connection is made, then B's loads B's
    certificate into the same context; A still speaks as A. The ACL proves it: each may publish
    only on its own topic, and the broker closes a connection that publishes elsewhere."""
    election = registry.election.id
    first, second = registry.election.devices[:2]
    fleet = FleetTls(wire.keys / "ca.crt")
    got: queue.Queue[str] = queue.Queue()
    gateway = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgetally-gw-gw1", protocol=mqtt.MQTTv311)
    gateway.tls_set_context(client_context(wire.client(Role.GATEWAY, "gw1")))
    subscribed = threading.Event()
    gateway.on_subscribe = lambda *_: subscribed.set()
    gateway.on_message = lambda _c, _u, msg: got.put(msg.topic)
    gateway.connect("127.0.0.1", locked.port)
    gateway.loop_start()
    try:
        gateway.subscribe(f"edgetally/v1/{election}/+/batch", qos=1)
        assert subscribed.wait(TIMEOUT_S)

        async def main() -> None:
            wheel = KeepaliveWheel()
            a = await connect(_options(locked, first, _device_tls(wire.keys, first, fleet)), wheel)
            b = await connect(_options(locked, second, _device_tls(wire.keys, second, fleet)), wheel)
            for conn, device in ((a, first), (b, second)):
                await asyncio.wait_for(conn.publish(batch_topic(election, device), b"{}", qos=1), TIMEOUT_S)
            for conn in (a, b):
                await conn.disconnect()
            wheel.close()

        asyncio.run(asyncio.wait_for(main(), 2 * TIMEOUT_S))
        topics = {got.get(timeout=TIMEOUT_S), got.get(timeout=TIMEOUT_S)}
        assert topics == {batch_topic(election, first), batch_topic(election, second)}
    finally:
        gateway.disconnect()
        gateway.loop_stop()


def test_a_device_certificate_from_another_ca_is_refused(locked: BrokerProcess, registry: Registry, wire: Wire, tmp_path: Path) -> None:
    device = registry.election.devices[0]
    rogue = issue(create_authority(tmp_path / "rogue"), Role.DEVICE, device)
    context = DeviceTls(FleetTls(wire.keys / "ca.crt"), ClientTls(wire.keys / "ca.crt", rogue.cert, rogue.key))

    async def main() -> None:
        with pytest.raises(ConnectionFailed):
            await connect(_options(locked, device, context), KeepaliveWheel())

    asyncio.run(asyncio.wait_for(main(), 2 * TIMEOUT_S))


def test_a_broker_whose_certificate_is_not_from_our_ca_is_refused_by_the_device(
    wire: Wire, registry: Registry, tmp_path: Path
) -> None:
    rogue_ca = create_authority(tmp_path / "rogue")
    impostor = issue(rogue_ca, Role.BROKER, "edge")
    tls = wire.broker(BrokerKind.EDGE)
    broker = BrokerProcess(
        tmp_path / "impostor", name="impostor", embedded=False,
        tls=BrokerTls(rogue_ca.cert_path, impostor.cert, impostor.key, tls.acl),
    )  # fmt: skip
    device = registry.election.devices[0]
    context = _device_tls(wire.keys, device)
    broker.start()
    try:

        async def main() -> None:
            with pytest.raises(ConnectionFailed, match=r"TLS with 127\.0\.0\.1:\d+ failed: self-signed certificate"):
                await connect(_options(broker, device, context), KeepaliveWheel())

        asyncio.run(asyncio.wait_for(main(), 2 * TIMEOUT_S))
    finally:
        broker.kill()


def test_devices_run_on_mqtts_without_device_certificates_is_refused_naming_the_file(
    keys_dir: Path, registry: Registry, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    copy_keys(keys_dir, keys)  # the signing keys without the session's device certificates
    proc = run_cli("devices", "run", "--broker", "mqtts://127.0.0.1:1", "--keys", str(keys), "--devices", "1", "--seed", "1", check=False)
    assert proc.returncode != 0
    device = registry.election.devices[0]
    said = " ".join(proc.stderr.split())  # the console wraps the message at its width
    assert f"device-{device}.crt" in said and "devices provision" in said and "--pki" in said


def test_gateway_and_cloud_on_mqtts_without_pki_are_refused_naming_the_option(keys_dir: Path, tmp_path: Path) -> None:
    gateway = run_cli(
        "gateway", "run", "--edge", "mqtts://127.0.0.1:1", "--cloud", "mqtts://127.0.0.1:2",
        "--buffer", str(tmp_path / "b.db"), "--keys", str(keys_dir), check=False,
    )  # fmt: skip
    assert gateway.returncode == 1
    assert "--edge and --cloud mqtts:// needs --pki DIR" in gateway.stderr
    cloud = run_cli(
        "cloud", "run", "--broker", "mqtts://127.0.0.1:2", "--db", f"sqlite:///{tmp_path / 'c.db'}",
        "--keys", str(keys_dir), check=False,
    )  # fmt: skip
    assert cloud.returncode != 0
    assert "--broker mqtts:// needs --pki DIR" in cloud.stderr


def test_a_gateway_whose_certificate_is_missing_stops_at_start_naming_it(
    wire: Wire, tmp_path: Path
) -> None:
    proc = run_cli(
        "gateway", "run", "--edge", "mqtts://127.0.0.1:1", "--cloud", "mqtts://127.0.0.1:2",
        "--buffer", str(tmp_path / "b.db"), "--keys", str(wire.keys), "--pki", str(wire.pki), "--id", "gw9",
        check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "gateway-gw9.crt is missing" in proc.stderr
