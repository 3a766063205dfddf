"""Shared pieces of the benchmarks: a counting subscriber in its own process (which can answer
with receipts, as the cloud would), a QoS 1 publisher, signed envelopes, a Mosquitto bridge
configuration, and reading a process's peak memory."""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.synchronize
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from cloud.worker.receipts import ReceiptSender
from devices.generator import iter_batches
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess
from edgetally.wire import Wire
from protocol import (
    BATCH_FILTER,
    GATEWAY_BUNDLE_FILTER,
    GENESIS_HASH,
    Election,
    Receipt,
    Registry,
    batch_topic,
    body_hash,
    bundle,
    load_signing_key,
    parse_gateway_topic,
    seal,
)
from protocol.keys import write_secret
from protocol.registry import load_cloud_key
from protocol.tls import ClientTls, Role, client_context, identity
from protocol.topics import PREFIX

Envelope = tuple[str, bytes]  # (topic, payload)
SINK_FILTERS = [(BATCH_FILTER, 1), (GATEWAY_BUNDLE_FILTER, 1)]  # every envelope, nothing else


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
    """How many envelopes one message carries: 1, a bundle's entry count, 0 for a gateway status
    (or a receipt or command, which a sink subscribed to ``SINK_FILTERS`` never gets)."""
    if parse_gateway_topic(topic, "status") is not None or topic.endswith(("/receipt", "/command")):
        return 0
    return bundle.count(payload) if bundle.is_bundle(payload) else 1


def envelopes_of(topic: str, payload: bytes) -> list[bytes]:
    """The envelopes one message carries: itself, or a bundle's entries."""
    if bundle.is_bundle(payload):
        return [entry.payload for entry in bundle.decode(payload)]
    return [payload]


class Chains:
    """What the cloud would receipt, without a database: per device, the highest contiguous seq
    seen and the hash of that body. Trusts the envelopes (a benchmark's own, unverified)."""

    def __init__(self) -> None:
        self._state: dict[tuple[str, str], tuple[int, str, dict[int, str]]] = {}
        self.distinct = 0  # distinct (device, seq) seen

    def observe(self, envelope: bytes) -> Receipt:
        """The device's receipt once ``envelope`` is held (a duplicate gets the receipt again)."""
        raw = orjson.loads(envelope)["body"].encode("utf-8")
        body = orjson.loads(raw)
        key = (body["election"], body["device"])
        seq: int = body["seq"]
        contiguous, digest, above = self._state.get(key, (0, GENESIS_HASH, {}))
        if seq > contiguous and seq not in above:
            self.distinct += 1
            above[seq] = body_hash(raw)
            while contiguous + 1 in above:
                contiguous += 1
                digest = above.pop(contiguous)
        self._state[key] = (contiguous, digest, above)
        return Receipt(key[0], key[1], contiguous, digest)


def _client(client_id: str, *, clean_session: bool, tls: ClientTls | None = None) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    if tls is not None:
        client.tls_set_context(client_context(tls))
    return client


BENCH_CLIENTS = ("bench-pub", "bench-sink", "bench-counter")


def bench_wire(work: Path, keys: Path, registry: Registry, clouds: tuple[str, ...] = ("cloud1",)) -> Wire:
    """A locked-down wire for a benchmark: the deployment's certificates and ACLs (cloud workers
    ``clouds``), plus one identity per benchmark client (publisher standing in for every device,
    sink and counter standing in for the cloud), each allowed every EdgeTally topic on both
    Mosquitto brokers."""
    wire = Wire(work / "pki", keys, clouds=clouds, monitors=BENCH_CLIENTS)
    wire.prepare(registry)
    for kind in BrokerKind:
        acl = wire.broker(kind).acl
        extra = "".join(f"\nuser {identity(Role.MONITOR, c)}\ntopic readwrite {PREFIX}/#\n" for c in BENCH_CLIENTS)
        write_secret(acl, (acl.read_text() + extra).encode(), "ACL")
    return wire


def bench_tls(wire: Wire | None, client: str) -> ClientTls | None:
    return None if wire is None else wire.client(Role.MONITOR, client)


def _sink_main(
    port: int,
    client_id: str,
    expected: int,
    receipt_interval: float | None,
    keys: Path | None,
    ready: mp.synchronize.Event,
    queue: mp.Queue,  # type: ignore[type-arg]
    tls: ClientTls | None = None,
) -> None:
    received = 0
    first = last = 0.0
    chains = Chains()
    sender = None
    if receipt_interval is not None:
        if keys is None:
            raise ValueError("a sink answering with receipts signs them: give it the keys directory")
        sender = ReceiptSender(load_cloud_key(keys), receipt_interval)  # the cloud's signing key
    lock = threading.Lock()  # the sender is not thread-safe: paho's thread and this one share it
    closing = False

    def on_message(c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received, first, last
        now = time.time()
        if not received:
            first = now
        received += count_entries(message.payload, message.topic)
        last = now
        if sender is not None:  # answer as the cloud would after a commit: one per device
            latest = {}
            for envelope in envelopes_of(message.topic, message.payload):
                receipt = chains.observe(envelope)
                latest[receipt.device] = receipt
            with lock:
                if not closing:
                    sender.offer(latest.values())
                    sender.flush(c, time.monotonic())

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe(SINK_FILTERS)

    unsubscribed = threading.Event()
    client = _client(client_id, clean_session=False, tls=tls)
    client.max_inflight_messages_set(100)  # receipts in flight, as the cloud worker
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: ready.set()
    client.on_unsubscribe = lambda *_: unsubscribed.set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            client.connect("127.0.0.1", port, keepalive=30)
            break
        except OSError:
            time.sleep(0.05)
    client.loop_start()

    def done() -> bool:
        # With receipts, devices resending what stays unreceipted would be counted twice.
        return (chains.distinct if sender is not None else received) >= expected

    while not done() and time.monotonic() < deadline:
        if sender is not None:
            with lock:
                sender.flush(client, time.monotonic())
        time.sleep(0.01)  # the flush tick of held receipts
    stats = {"received": received, "first": first, "last": last}
    if sender is not None:
        drain_started = time.monotonic()
        with lock:
            closing = True  # from now on only this thread touches the sender
        # Every held receipt out and acknowledged (paho's thread must stay free for the PUBACKs).
        unconfirmed = sender.drain(client, 120)
        stats["drain_s"] = time.monotonic() - drain_started
        stats |= {
            "receipts": sender.published,
            "superseded": sender.superseded,
            "unconfirmed": unconfirmed,
        }
    queue.put(stats)
    # Leave no subscription behind: this persistent session would queue every later run.
    client.unsubscribe([topic for topic, _qos in SINK_FILTERS])
    unsubscribed.wait(10)
    client.disconnect()
    client.loop_stop()


class Sink:
    """A subscriber process (persistent session) that counts envelopes on ``SINK_FILTERS``
    (device batches and gateway bundles).

    Reports (received, wall time of the first arrival, wall time of the last arrival). With
    ``receipt_interval`` (seconds) it also answers as the cloud would: for every message, each
    device's receipt (highest contiguous seq and its hash), published retained with QoS 1
    through :class:`cloud.worker.receipts.ReceiptSender` coalescing at that interval (0: every one),
    signed with the cloud key of ``keys`` (the devices ignore unsigned receipts),
    and it stops once it has ``expected`` distinct envelopes, every held receipt published.
    """

    def __init__(
        self,
        port: int,
        expected: int,
        client_id: str = "bench-sink",
        receipt_interval: float | None = None,
        keys: Path | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self._ready = mp.Event()
        self._queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        self._proc = mp.Process(
            target=_sink_main,
            args=(port, client_id, expected, receipt_interval, keys, self._ready, self._queue, tls),
            daemon=True,
        )
        self.receipts = 0  # receipts published (after result())
        self.superseded = 0  # receipts coalesced away
        self.unconfirmed = 0  # receipts the broker had not acknowledged at the end
        self.drain_s = 0.0  # from every envelope received to every receipt acknowledged

    def start(self, timeout: float = 20) -> None:
        self._proc.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the counting subscriber did not subscribe in time")

    def result(self, timeout: float) -> tuple[int, float, float]:
        stats = self._queue.get(timeout=timeout)
        self._proc.join(20)
        self.receipts = int(stats.get("receipts", 0))
        self.superseded = int(stats.get("superseded", 0))
        self.unconfirmed = int(stats.get("unconfirmed", 0))
        self.drain_s = float(stats.get("drain_s", 0.0))
        return int(stats["received"]), float(stats["first"]), float(stats["last"])


def _counter_main(
    port: int,
    topic_filter: str,
    ready: mp.synchronize.Event,
    stop: mp.synchronize.Event,
    count: Any,
) -> None:
    def on_message(_c: mqtt.Client, _u: object, _message: mqtt.MQTTMessage) -> None:
        with count.get_lock():
            count.value += 1

    client = _client("", clean_session=True)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic_filter, 1)
    client.on_subscribe = lambda *_: ready.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    stop.wait(1800)
    client.disconnect()
    client.loop_stop()


class Counter:
    """A subscriber process counting the messages on ``topic_filter`` (live, as a device sees
    its receipts)."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self._ready = mp.Event()
        self._stop = mp.Event()
        self._count = mp.Value("q", 0)
        self._proc = mp.Process(
            target=_counter_main,
            args=(port, topic_filter, self._ready, self._stop, self._count),
            daemon=True,
        )

    def start(self, timeout: float = 20) -> Counter:
        self._proc.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the counting subscriber did not subscribe in time")
        return self

    @property
    def value(self) -> int:
        return int(self._count.value)

    def settle(self, at_least: int, timeout: float) -> int:
        """The count once it reached ``at_least`` (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while self.value < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.value

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(10)


def register_session(port: int, client_id: str = "bench-sink") -> None:
    """Create the sink's persistent subscription on a broker, then leave (its queue keeps filling)."""
    done = mp.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = lambda c, *_: c.subscribe(SINK_FILTERS)
    client.on_subscribe = lambda *_: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not done.wait(10):
        raise RuntimeError("could not register the sink's session")
    client.disconnect()
    client.loop_stop()


def publish_all(port: int, envelopes: Sequence[Envelope], window: int = 1000, tls: ClientTls | None = None) -> float:
    """Publish QoS 1 with ``window`` in flight; every rc checked; returns the wall time it started."""
    client = _client("bench-pub", clean_session=True, tls=tls)
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


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; RuntimeError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


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
