"""The lean MQTT connection (devices/connection.py) against a real Mosquitto."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices._exceptions import ConnectionFailed
from devices.connection import ConnectOptions, KeepaliveWheel, MqttConnection, Will, connect
from edgetally.brokers import BrokerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """Plain: these pin down the lean connection's MQTT (QoS 1, keepalive, will, retained) on
    t/... topics that no identity of the locked edge broker's ACL may touch; its TLS layer on a
    locked broker is tests/devices/test_fleet_tls.py's."""
    return broker_factory("edge", plain=True)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` on the loop (the async twin of tests.helpers.wait_until)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def options(broker: BrokerProcess, client_id: str, **kwargs: Any) -> ConnectOptions:
    return ConnectOptions("127.0.0.1", broker.port, client_id, **kwargs)


def test_qos1_publish_is_acked_and_reaches_a_subscriber(broker: BrokerProcess) -> None:
    async def main() -> None:
        wheel = KeepaliveWheel()
        got: list[tuple[str, bytes]] = []
        sub = await connect(options(broker, "t-sub"), wheel, lambda t, p: got.append((t, p)))
        assert await sub.subscribe("t/batches/#", 1) == 1
        pub = await connect(options(broker, "t-pub"), wheel)
        acks = [pub.publish(f"t/batches/{i}", b"x" * 600 + bytes([i]), qos=1) for i in range(50)]
        await asyncio.gather(*acks)
        assert pub.in_flight == 0
        await until(lambda: len(got) == 50, 10, "50 messages at the subscriber")
        assert got[7] == ("t/batches/7", b"x" * 600 + bytes([7]))
        await pub.disconnect()
        await sub.disconnect()
        wheel.close()

    run(main())


def test_subscription_delivers_the_retained_receipt(broker: BrokerProcess) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-cloud", protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish("t/receipt", b"receipt-bytes", qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()

    async def main() -> None:
        wheel = KeepaliveWheel()
        got: list[bytes] = []
        conn = await connect(options(broker, "t-device"), wheel, lambda _t, p: got.append(p))
        await conn.subscribe("t/receipt", 1)
        await until(lambda: got, 10, "the retained receipt")
        assert got == [b"receipt-bytes"]
        await conn.disconnect()
        wheel.close()

    run(main())


def test_keepalive_pings_keep_an_idle_connection_past_one_and_a_half_keepalives(broker: BrokerProcess) -> None:
    async def main() -> None:
        wheel = KeepaliveWheel(resolution=0.1)
        conn = await connect(options(broker, "t-idle", keepalive=1), wheel)
        started = time.monotonic()
        # 4 pings at keepalive/2 take >= 2 s, beyond the broker's 1.5 x keepalive cut-off
        await until(lambda: conn.pings_sent >= 4, 10, "4 PINGREQs")
        assert time.monotonic() - started >= 1.5
        assert conn.is_connected and not conn.lost.done()
        await conn.publish("t/alive", b"still here", qos=1)
        await conn.disconnect()
        wheel.close()

    run(main())
    assert "exceeded timeout" not in broker.log_path.read_text()


def test_abrupt_loss_publishes_the_will(broker: BrokerProcess) -> None:
    async def main() -> None:
        wheel = KeepaliveWheel()
        got: list[bytes] = []
        watcher = await connect(options(broker, "t-watcher"), wheel, lambda _t, p: got.append(p))
        await watcher.subscribe("t/status", 1)
        device = await connect(
            options(broker, "t-dying", will=Will("t/status", b"lost", qos=1, retain=True)), wheel
        )
        device.abort()
        await until(lambda: got == [b"lost"], 10, "the will")
        await watcher.disconnect()
        wheel.close()

    run(main())


def test_clean_disconnect_does_not_publish_the_will(broker: BrokerProcess) -> None:
    async def main() -> None:
        wheel = KeepaliveWheel()
        got: list[bytes] = []
        watcher = await connect(options(broker, "t-watcher2"), wheel, lambda _t, p: got.append(p))
        await watcher.subscribe("t/status2", 1)
        device = await connect(options(broker, "t-leaving", will=Will("t/status2", b"lost")), wheel)
        await device.publish("t/status2", b"bye", qos=1)
        await device.disconnect()
        await until(lambda: got, 10, "the goodbye status")
        # a marker after the disconnect: anything the broker sent before it has arrived
        await watcher.publish("t/status2", b"marker", qos=1)
        await until(lambda: b"marker" in got, 10, "the marker")
        assert got == [b"bye", b"marker"]
        await watcher.disconnect()
        wheel.close()

    run(main())


def test_broker_sigkill_fails_pending_publishes_and_connect_fails_until_restart(broker: BrokerProcess) -> None:
    async def main() -> None:
        wheel = KeepaliveWheel()
        conn: MqttConnection = await connect(options(broker, "t-victim"), wheel)
        broker.kill()
        with pytest.raises(ConnectionFailed):
            await asyncio.wait_for(conn.lost, 10)
        with pytest.raises(ConnectionFailed):
            await conn.publish("t/x", b"x", qos=1)
        with pytest.raises(ConnectionFailed, match="cannot connect") as refused:
            await connect(options(broker, "t-victim"), wheel)
        assert refused.value.cause == "ECONNREFUSED"  # what the fleet counts it as
        broker.start()
        again = await connect(options(broker, "t-victim"), wheel)
        await again.publish("t/x", b"x", qos=1)
        await again.disconnect()
        wheel.close()

    run(main())


def test_a_listener_that_never_answers_fails_the_connect_as_a_timeout() -> None:
    """What a broker too busy to finish handshakes looks like to a device: TCP accepted (the
    kernel's backlog), no CONNACK."""

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # never accepted: the kernel completes the TCP handshake, nobody answers

        async def main() -> None:
            wheel = KeepaliveWheel()
            try:
                options = ConnectOptions("127.0.0.1", silent.getsockname()[1], "t-mute", timeout=0.3)
                with pytest.raises(ConnectionFailed, match="no CONNACK") as failed:
                    await connect(options, wheel)
                assert failed.value.cause == "timeout"
            finally:
                wheel.close()

        run(main())
