"""Ingress: batches from the edge broker, verified, committed to the buffer, then acknowledged.

paho-mqtt directly (aiomqtt has no manual acknowledgement). The edge client has a persistent
session (``clean_session=False``) and ``manual_ack=True``: nothing is acknowledged on receipt.
``on_message`` only puts the message on a bounded queue; the writer thread takes up to
``group_max`` queued messages, verifies each (gateway/verify.py), stores the group in ONE buffer transaction
(verified ones pending, rejected ones quarantined with their reason), and only after that
commit acknowledges each message to the edge broker. A crash before the acknowledgement
loses nothing: the broker redelivers what was not acknowledged.

Queue policy when full: ``on_message`` blocks, which stalls the paho network thread and so
pushes back on the edge broker over TCP; nothing is dropped. The broker sends at most its
``max_inflight_messages`` (1000) unacknowledged messages to one session and the queue holds
twice that, so it fills only if the writer stalls. A message that could not be queued
because its client was replaced or intake closed is left unacknowledged for the broker to
redeliver.

Backpressure (``--max-buffer-batches``/``--max-buffer-bytes``, and a full disk; see
gateway/buffer/backpressure.py): the writer stops taking, committing and acknowledging. Since
nothing is acknowledged, the broker stops sending after its in-flight limit, the queue
never fills, and the network thread stays free for keepalives; the rest waits in the
session's queue on the broker and on the devices.

Test-only fault points (gateway/faults.py): ``received`` after a message is queued,
``committed`` after a group's commit, ``acked`` after its acknowledgements.

Packet ids belong to one connection. Every connect, disconnect and client replacement bumps
``generation`` (under a lock also held while acknowledging); a committed message from an
older generation is not acknowledged (its id may name another message now), and the broker's
redelivery of it is de-duplicated by the buffer.

Where a batch is acknowledged: :meth:`Ingress.write_group` (commit, then ``_ack``). The module
stays whole (some 450 lines): the edge connection, the queue, the writer and the ack share one
lock and one connection generation, and the ack-after-commit rule is easiest to check when
they are read together.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from gateway import faults
from gateway.buffer.backpressure import HOLD_POLL_S, UNLIMITED, DiskHold, Quota, Room
from gateway.buffer.quarantine import DropWarnings, device_key
from gateway.buffer.rows import NewMessage
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.links import OFFLINE, ONLINE, new_client, publish_status, set_offline_will
from gateway.verify import classify
from protocol import BATCH_FILTER, DeviceTopicKind, Registry

log = logging.getLogger(__name__)

LINK = "edge"
COMMAND_SUFFIX = f"/{DeviceTopicKind.COMMAND}"  # device commands are relayed, not retained
RECONNECT_MIN_S = 1  # paho's own reconnect loop (whole seconds), doubling to the max
RECONNECT_MAX_S = 5


@dataclass(frozen=True, slots=True)
class Received:
    """One message as ``on_message`` saw it, tagged with the connection generation."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_at: float


@dataclass(frozen=True, slots=True)
class _Taken:
    """A group taken off the queue, its verification running in the pool."""

    group: list[Received]
    futures: list[Future[list[NewMessage]]]

    @property
    def reserved(self) -> tuple[int, int]:
        """Batches and bytes it will add to the buffer (at most), for the quota."""
        return len(self.group), sum(len(item.payload) for item in self.group)



class Ingress:
    """The edge link and the writer. Construct, :meth:`start`, run :meth:`run_writer` in a thread."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry | Mapping[str, Registry],  # one election, or each carried by id
        buffer: Buffer,
        *,
        on_stored: Callable[[], None] = lambda: None,
        on_connected: Callable[[], None] = lambda: None,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._registries = {registry.election.id: registry} if isinstance(registry, Registry) else dict(registry)
        self._buffer = buffer
        self._on_stored = on_stored
        self._on_connected = on_connected
        self._on_ready = on_ready
        self._queue: queue.Queue[Received] = queue.Queue(maxsize=config.ingress_queue_size)
        self._lock = threading.Lock()  # guards _client, _generation, _intake_open and every ack
        self._client: mqtt.Client | None = None
        self._generation = 0
        self._intake_open = True
        self.ready = threading.Event()  # set at the first successful subscription
        self.stored = 0
        self.quarantined = 0
        self.dropped = 0  # rejects past a quarantine cap: counted in the buffer, not stored
        self.duplicates = 0
        self.acked = 0
        self.stale = 0
        self._quota = Quota(config.max_buffer_batches, config.max_buffer_bytes, buffer.outbound_usage)
        self._disk = DiskHold()
        self._drop_warnings = DropWarnings(log)
        self._carry: Received | None = None  # taken, but past the group's byte room (writer only)

    @property
    def queued(self) -> int:
        """Messages received and not yet taken by the writer."""
        return self._queue.qsize() + (self._carry is not None)

    # -- the edge link ----------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho retries until the edge broker answers."""
        client = self._make_client()
        with self._lock:
            self._client = client
        self._launch(client)

    def restart_link(self) -> None:
        """Replace the edge client (after a writer failure): the broker redelivers the unacked."""
        client = self._make_client()
        with self._lock:
            old, self._client = self._client, client
            self._generation += 1
        if old is not None:
            old.disconnect()
            old.loop_stop()
        log.warning("edge link restarted; unacknowledged batches will be redelivered")
        self._launch(client)

    def stop_intake(self) -> None:
        """Stop taking messages; what is not yet queued stays unacknowledged for redelivery."""
        with self._lock:
            self._intake_open = False

    def stop(self) -> None:
        """Announce offline, then disconnect cleanly (queued acknowledgements go out first)."""
        with self._lock:
            client, self._client = self._client, None
            self._generation += 1
        if client is None:
            return
        rc = publish_status(client, self._config.gateway_id, OFFLINE, LINK)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.info("edge offline status not sent (rc=%s); the last will says it", rc)
        client.disconnect()
        client.loop_stop()
        log.info(
            "edge link closed: stored=%d quarantined=%d dropped=%d duplicates=%d acked=%d"
            " stale=%d buffer_full_episodes=%d disk_full_episodes=%d",
            self.stored,
            self.quarantined,
            self.dropped,
            self.duplicates,
            self.acked,
            self.stale,
            self._quota.episodes,
            self._disk.episodes,
        )

    def relay(self, topic: str, payload: bytes) -> None:
        """Republish a cloud receipt or device command on the edge broker: same topic and
        bytes, QoS 1; receipts retained, commands (repair requests) not, as the cloud sent them.

        A command not relayed now is lost here; the cloud asks again while the gap stays open.
        """
        with self._lock:
            client = self._client
        if client is None:
            return
        retain = not topic.endswith(COMMAND_SUFFIX)
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning(
                "%s on %s not relayed now (rc=%s); the cloud sends it again",
                "receipt" if retain else "command",
                topic,
                info.rc,
            )

    def _make_client(self) -> mqtt.Client:
        config = self._config
        client = new_client(
            config.edge_client_id, clean_session=False, manual_ack=True, tls=config.tls if config.edge.tls else None
        )
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_inflight_messages_set(100)  # receipts relayed to the edge broker
        set_offline_will(client, self._config.gateway_id, LINK)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _launch(self, client: mqtt.Client) -> None:
        edge = self._config.edge
        client.connect_async(edge.host, edge.port, keepalive=self._config.keepalive_s)
        client.loop_start()
        log.info("edge link connecting to %s as %s", edge.url, self._config.edge_client_id)

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("edge broker refused the connection: %s", reason)
            return
        with self._lock:
            if client is not self._client:
                return
            self._generation += 1
        # Re-subscribe every time: a broker restarted without persistence forgot the session.
        rc, _mid = client.subscribe(BATCH_FILTER, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.error("edge subscribe to %s failed (rc=%s)", BATCH_FILTER, rc)
        rc = publish_status(client, self._config.gateway_id, ONLINE, LINK)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("edge online status not published (rc=%s)", rc)
        log.info(
            "edge link up (%s, session present=%s)",
            self._config.edge.url,
            bool(flags.session_present),
        )
        self._on_connected()

    def _on_connect_fail(self, client: mqtt.Client, _userdata: Any) -> None:
        if client is self._client:
            log.warning("edge broker %s unreachable; retrying", self._config.edge.url)

    def _on_disconnect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        with self._lock:
            if client is not self._client:
                return
            self._generation += 1
        log.warning("edge link lost (%s); paho reconnects", reason)

    def _on_subscribe(
        self, client: mqtt.Client, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("edge broker refused the subscription to %s: %s", BATCH_FILTER, reasons)
            return
        if not self.ready.is_set():
            self.ready.set()
            self._on_ready()

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            if client is not self._client or not self._intake_open:
                return  # not acknowledged: the broker redelivers it to the next session
            generation = self._generation
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        item = Received(
            topic, bytes(message.payload), message.mid, message.qos, generation, time.time()
        )
        while True:
            try:
                self._queue.put(item, timeout=0.5)
            except queue.Full:
                with self._lock:
                    if client is not self._client or not self._intake_open:
                        return
                log.warning(
                    "ingress queue full (%d); holding the edge broker back", self._queue.maxsize
                )
                continue
            faults.checkpoint("received")
            return

    # -- the writer -------------------------------------------------------------------
    def run_writer(self, stop: threading.Event) -> None:
        """Group-commit queued messages until ``stop`` is set and the queue is empty.

        Two stages overlap: while group N is committed and acknowledged, group N+1 is already
        being verified by ``verify_threads`` threads (Ed25519 verification releases the GIL, so
        they use the second core). Groups are committed in the order they were received, so
        each device's batches keep their order in the buffer.

        Backpressure (gateway/buffer/backpressure.py): each group is sized to the room the quota
        leaves, counting the group still being verified. While the buffer is full, or the
        disk is, the writer takes, commits and acknowledges nothing, so batches wait on the
        edge broker. A stop request during such a hold returns at once; whatever is held
        stays unacknowledged and is redelivered to the next run.
        """
        threads = self._config.verify_threads
        self._quota.refresh()
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-verify") as pool:
            ahead: _Taken | None = None
            while True:
                reserved = ahead.reserved if ahead is not None and self._quota.enabled else (0, 0)
                room = self._quota.room(*reserved)
                group = self._take_group(block=ahead is None, room=room) if room.open else None
                if group is None and ahead is None:
                    if not room.open or self._carry is not None:  # full, or the next is too big
                        self._quota.hold(0 if self._carry is None else len(self._carry.payload))
                        if stop.wait(HOLD_POLL_S):  # look again once the uplink could drain
                            return
                        self._quota.refresh()
                    elif stop.is_set():
                        return
                    continue
                following = None if group is None else _Taken(group, self._classify_async(pool, group))
                if ahead is not None:
                    rows = [row for future in ahead.futures for row in future.result()]
                    if not self.write_group(ahead.group, rows, stop=stop):
                        return  # asked to stop while the disk was full: left unacknowledged
                ahead = following

    @property
    def holding(self) -> str | None:
        """Why ingress is held right now (``"buffer_full"``, ``"disk_full"``), or None."""
        if self._disk.full:
            return "disk_full"
        return "buffer_full" if self._quota.full else None

    def _take_group(self, *, block: bool, room: Room = UNLIMITED) -> list[Received] | None:
        """Up to ``group_max`` queued messages within ``room``; None if nothing is queued or
        the next message does not fit (it is kept in ``_carry`` until it does)."""
        limit = self._config.group_max
        if room.batches is not None:
            limit = min(limit, room.batches)
        first, self._carry = self._carry, None
        if first is None:
            try:
                first = self._queue.get(timeout=0.2) if block else self._queue.get_nowait()
            except queue.Empty:
                return None
        size = len(first.payload)
        if room.bytes is not None and size > room.bytes and room.bytes < self._quota.max_bytes:
            self._carry = first  # too big for what is left (an empty buffer takes it anyway)
            return None
        group = [first]
        while len(group) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            size += len(item.payload)
            if room.bytes is not None and size > room.bytes:
                self._carry = item  # first of the next group, once there is room for it
                break
            group.append(item)
        return group

    def _classify_async(
        self, pool: ThreadPoolExecutor, group: list[Received]
    ) -> list[Future[list[NewMessage]]]:
        size = -(-len(group) // self._config.verify_threads)
        return [pool.submit(self.classify_all, group[i : i + size]) for i in range(0, len(group), size)]

    def classify_all(self, items: list[Received]) -> list[NewMessage]:
        return [
            classify(
                item.topic,
                item.payload,
                item.received_at,
                self._registries,
                self._config.max_payload_bytes,
            )
            for item in items
        ]

    def write_group(
        self,
        group: list[Received],
        rows: list[NewMessage] | None = None,
        *,
        stop: threading.Event | None = None,
    ) -> bool:
        """Commit a verified group in one transaction, THEN acknowledge what this connection
        delivered. Returns False if ``stop`` was set while a full disk held the commit back."""
        if rows is None:
            rows = self.classify_all(group)
        if faults.ack_before_commit:  # the deliberately broken gateway of the crash tests
            acked, stale = self._ack(group)
            faults.checkpoint("acked")
        result = self._disk.put(self._buffer, rows, stop or threading.Event())
        if result is None:
            return False
        faults.checkpoint("committed")
        if not faults.ack_before_commit:
            acked, stale = self._ack(group)
            faults.checkpoint("acked")
        self._quota.refresh()
        pending = sum(1 for row in rows if row.state is State.PENDING)
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.acked += acked
        self.stale += stale
        for index, row in enumerate(rows):
            if row.state is State.QUARANTINED:
                if index in result.not_stored:
                    continue  # counted (quarantine_dropped), warned once per device below
                self._drop_warnings.stored(device_key(row))
                self.quarantined += 1
                log.warning(
                    "quarantined device=%s seq=%s reason=%s: %s",
                    row.device,
                    row.seq,
                    row.reason,
                    row.detail,
                )
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("buffered device=%s seq=%d", row.device, row.seq)
        if result.dropped:  # acknowledged all the same: redelivery would only drop them again
            self.dropped += result.dropped_count
            self._drop_warnings.dropped(result.dropped, self._buffer.quarantine_caps)
        if result.duplicates:
            log.info("%d redelivered batches were already buffered", result.duplicates)
        if stale:
            log.info(
                "%d committed messages came from an earlier connection: not acked, redelivery expected",
                stale,
            )
        if pending:
            self._on_stored()
        return True

    def _ack(self, group: list[Received]) -> tuple[int, int]:
        acked = stale = 0
        with self._lock:
            client, generation = self._client, self._generation
            for item in group:
                if item.generation != generation or client is None:
                    stale += 1
                    continue
                if item.qos == 0:
                    continue
                rc = client.ack(item.mid, item.qos)
                if rc == mqtt.MQTT_ERR_SUCCESS:
                    acked += 1
                else:
                    stale += 1  # the link went away; the broker redelivers it
        return acked, stale
