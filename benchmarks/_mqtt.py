"""Shared pieces of the benchmarks: a counting subscriber in its own process, a QoS 1 publisher,
signed envelopes, a Mosquitto bridge configuration, and reading a process's peak memory."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt

from devices.generator import iter_batches
from edgetally.brokers import BrokerProcess
from protocol import Election, batch_topic, bundle, load_signing_key, parse_gateway_topic, seal

Envelope = tuple[str, bytes]  # (topic, payload)


def signed_envelopes(election: Election, keys: Path, total: int, seed: int = 1) -> list[Envelope]:
    """``total`` distinct signed envelopes, spread evenly over the election's devices."""
    devices = election.devices
    per_device = -(-total // len(devices))
    out: list[Envelope] = []
    for device in devices:
        key = load_signing_key(keys, device)
        topic = batch_topic(election.id, device)
        for body in iter_batches(election, seed, device, per_device):
            out.append((topic, seal(body, key).to_bytes()))
    # interleave devices, as a fleet would
    out.sort(key=lambda e: (e[1][-40:], e[0]))
    return out[:total]


def count_entries(payload: bytes, topic: str = "") -> int:
    """How many envelopes one message carries: 1, a bundle's entry count, 0 for a gateway status."""
    if parse_gateway_topic(topic, "status") is not None:
        return 0
    return bundle.count(payload) if bundle.is_bundle(payload) else 1


def _sink_main(
    port: int,
    client_id: str,
    expected: int,
    ready: Callable[[], None] | mp.synchronize.Event,
    queue: mp.Queue,
) -> None:  # type: ignore[type-arg]
    received = 0
    first = last = 0.0

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received, first, last
        now = time.time()
        if not received:
            first = now
        received += count_entries(message.payload, message.topic)
        last = now

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe("edgetally/#", 1)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: ready.set()  # type: ignore[union-attr]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            client.connect("127.0.0.1", port, keepalive=30)
            break
        except OSError:
            time.sleep(0.05)
    client.loop_start()
    while received < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.put((received, first, last))
    client.disconnect()
    client.loop_stop()


class Sink:
    """A subscriber process (persistent session) that counts envelopes on ``edgetally/#``.

    Reports (received, wall time of the first arrival, wall time of the last arrival).
    """

    def __init__(self, port: int, expected: int, client_id: str = "bench-sink") -> None:
        self._ready = mp.Event()
        self._queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        self._proc = mp.Process(
            target=_sink_main,
            args=(port, client_id, expected, self._ready, self._queue),
            daemon=True,
        )

    def start(self, timeout: float = 20) -> None:
        self._proc.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the counting subscriber did not subscribe in time")

    def result(self, timeout: float) -> tuple[int, float, float]:
        received, first, last = self._queue.get(timeout=timeout)
        self._proc.join(10)
        return int(received), float(first), float(last)


def register_session(port: int, client_id: str = "bench-sink") -> None:
    """Create the sink's persistent subscription on a broker, then leave (its queue keeps filling)."""
    done = mp.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = lambda c, *_: c.subscribe("edgetally/#", 1)
    client.on_subscribe = lambda *_: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(10):
        raise RuntimeError("could not register the sink's session")
    client.disconnect()
    client.loop_stop()


def publish_all(port: int, envelopes: Sequence[Envelope], window: int = 1000) -> float:
    """Publish QoS 1 with ``window`` in flight; every rc checked; returns the wall time it started."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.time()
    pending = []
    for topic, payload in envelopes:
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
        pending.append(info)
        if len(pending) >= 20000:  # stay far below paho's 65,535 message ids
            for done in pending:
                done.wait_for_publish(60)
            pending.clear()
    for done in pending:
        done.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return started


def bridge_config(remote_port: int) -> str:
    """A QoS 1 bridge from this broker to ``remote_port`` that queues while the remote is away."""
    return "\n".join(
        [
            "connection bench-bridge",
            f"address 127.0.0.1:{remote_port}",
            "topic edgetally/# out 1",
            "cleansession false",
            "bridge_protocol_version mqttv311",
            "restart_timeout 1 2",
            "try_private false",
            "",
        ]
    )


def proc_status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` size in KiB (``VmRSS``, ``VmHWM``...); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kib(pid: int) -> int:
    return proc_status_kib(pid, "VmHWM")


def raw_ceiling(
    work: Path, envelopes: Sequence[Envelope], name: str = "ceiling", timeout: float = 300
) -> float:
    """Messages/s of one raw paho QoS 1 publisher -> a fresh Mosquitto -> one counting subscriber
    (its own process), live: from the first publish to the last arrival."""
    broker = BrokerProcess(work / f"{name}-broker", name=name)
    broker.start()
    try:
        sink = Sink(broker.port, len(envelopes), client_id=f"{name}-sink")
        sink.start()
        started = publish_all(broker.port, envelopes)
        received, _first, last = sink.result(timeout)
    finally:
        broker.stop()
    if received < len(envelopes):
        raise RuntimeError(f"{name}: the raw subscriber got {received} of {len(envelopes)}")
    return len(envelopes) / (last - started)
