"""Uplink: buffered envelopes to the cloud broker, and cloud receipts back down to the edge.

One pump thread owns the cloud link. It keeps up to ``window`` QoS 1 publishes in flight,
taken from the buffer in id order (so each device's batches leave in seq order), and deletes
a row only when the cloud broker's PUBACK for it arrives. Every ``publish()`` rc is checked:
a failure (e.g. paho's 65,535 message-id limit, or a lost link) puts the row back to pending.

Each connection attempt uses a fresh paho client (``clean_session=True``, paho's own
reconnect off): when a link drops, everything it had in flight goes back to pending and no
PUBACK of that old client can confirm a row afterwards. Reconnection uses capped exponential
backoff with jitter; while the cloud is away the ingress keeps buffering, and the pump
drains the buffer when the link returns.

Downlink: the same client subscribes to ``edgetally/v1/+/+/receipt`` and hands every message,
uninterpreted, to ``relay`` (the ingress republishes it retained on the edge broker). Receipts
are retained on the cloud broker, so subscribing again (at every connect, and whenever the
edge link comes back) re-delivers the latest one of every device.

paho callbacks run on paho's network thread and only record events under a condition
variable; the pump does all buffer work. The event list is bounded by the window: one PUBACK
per publish of the current connection, plus one connect and one disconnect event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from gateway.buffer import Buffer, OutboundMessage
from gateway.config import GatewayConfig
from gateway.links import OFFLINE, ONLINE, Backoff, new_client, publish_status, set_offline_will
from protocol import RECEIPT_FILTER

log = logging.getLogger(__name__)

LINK = "cloud"
IDLE_RECHECK_S = 1.0  # look at the buffer at least this often even without a wake-up


@dataclass
class _Link:
    client: mqtt.Client
    generation: int
    inflight: dict[int, int] = field(default_factory=dict)  # paho mid -> buffer row id


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # "connack", "puback", "lost"
    generation: int
    mid: int = 0
    ok: bool = True
    reason: str = ""


class Uplink:
    """The cloud link. Construct, then run :meth:`run` in a thread until its stop event is set."""

    def __init__(
        self, config: GatewayConfig, buffer: Buffer, *, relay: Callable[[str, bytes], None]
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._relay = relay
        self._cond = threading.Condition()
        self._events: list[_Event] = []
        self._wake = False
        self._resubscribe = False
        self._generation = 0
        self.published = 0
        self.delivered = 0
        self.released = 0

    # -- called from other threads ----------------------------------------------------
    def notify(self) -> None:
        """New pending rows were committed."""
        with self._cond:
            self._wake = True
            self._cond.notify()

    def request_receipts(self) -> None:
        """Subscribe to receipts again so the broker re-sends the retained ones (edge link is back)."""
        with self._cond:
            self._resubscribe = True
            self._cond.notify()

    # -- the pump ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Connect, forward, reconnect, until ``stop`` is set; then hand back what is in flight."""
        reset = self._buffer.reset_inflight()
        if reset:
            log.info("%d batches in flight in an earlier run are pending again", reset)
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        while not stop.is_set():
            link = self._connect(stop)
            if link is None:
                delay = backoff.next()
                log.info(
                    "cloud broker %s unreachable; retrying in %.1fs", self._config.cloud.url, delay
                )
                self._wait(stop, delay)
                continue
            backoff.reset()
            try:
                self._pump(link, stop)
            finally:
                self._close(link, graceful=stop.is_set())
        log.info(
            "uplink stopped: published=%d delivered=%d released=%d",
            self.published,
            self.delivered,
            self.released,
        )

    def _wait(self, stop: threading.Event, delay: float) -> None:
        deadline = time.monotonic() + delay
        with self._cond:
            while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)

    def interrupt(self) -> None:
        """Wake the pump so that it sees its stop event now."""
        with self._cond:
            self._cond.notify_all()

    def _connect(self, stop: threading.Event) -> _Link | None:
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._events.clear()
        client = new_client(
            self._config.cloud_client_id, clean_session=True, reconnect=False, userdata=generation
        )
        client.max_inflight_messages_set(self._config.window)
        set_offline_will(client, self._config.gateway_id, LINK)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        cloud = self._config.cloud
        try:
            client.connect(cloud.host, cloud.port, keepalive=self._config.keepalive_s)
        except OSError as exc:
            log.debug("cloud connect failed: %s", exc)
            return None
        client.loop_start()
        ack = self._await_connack(generation, stop)
        link = _Link(client, generation)
        if ack is None or not ack.ok:
            if not stop.is_set():
                log.warning(
                    "cloud broker did not accept the connection: %s",
                    ack.reason if ack else "no CONNACK",
                )
            self._close(link, graceful=False)
            return None
        with self._cond:
            self._resubscribe = False  # this subscription fetches every retained receipt anyway
        if not self._subscribe_receipts(link):
            self._close(link, graceful=False)
            return None
        rc = publish_status(client, self._config.gateway_id, ONLINE, LINK)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("cloud online status not published (rc=%s)", rc)
        log.info("cloud link up (%s, window %d)", cloud.url, self._config.window)
        return link

    def _await_connack(self, generation: int, stop: threading.Event) -> _Event | None:
        deadline = time.monotonic() + self._config.connect_timeout_s
        with self._cond:
            while not stop.is_set():
                for event in self._events:
                    if event.generation == generation and event.kind in ("connack", "lost"):
                        self._events.remove(event)
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    def _subscribe_receipts(self, link: _Link) -> bool:
        rc, _mid = link.client.subscribe(RECEIPT_FILTER, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("cloud subscribe to %s failed (rc=%s)", RECEIPT_FILTER, rc)
            return False
        return True

    def _pump(self, link: _Link, stop: threading.Event) -> None:
        window = self._config.window
        maybe_pending = True
        while True:
            with self._cond:
                idle = not (self._events or self._wake or self._resubscribe)
                blocked = len(link.inflight) >= window or not maybe_pending
                if idle and blocked and not stop.is_set() and not self._cond.wait(IDLE_RECHECK_S):
                    maybe_pending = True  # quiet for a while: look at the buffer anyway
                events, self._events = self._events, []
                wake, self._wake = self._wake, False
                resubscribe, self._resubscribe = self._resubscribe, False
            lost = self._apply(link, events)
            if lost is not None:
                log.warning(
                    "cloud link lost (%s); %d batches in flight go back to pending",
                    lost,
                    len(link.inflight),
                )
                return
            if stop.is_set():
                return
            if resubscribe and not self._subscribe_receipts(link):
                return
            maybe_pending = maybe_pending or wake
            free = window - len(link.inflight)
            if maybe_pending and free > 0:
                rows = self._buffer.fetch_pack(free)
                maybe_pending = len(rows) == free
                if not self._publish(link, rows):
                    return

    def _apply(self, link: _Link, events: list[_Event]) -> str | None:
        """Confirm acknowledged rows; return the reason if the link was lost."""
        confirmed: list[int] = []
        lost: str | None = None
        for event in events:
            if event.generation != link.generation:
                continue  # a PUBACK of an earlier client: its rows were released already
            if event.kind == "puback":
                row = link.inflight.pop(event.mid, None)
                if row is not None:
                    confirmed.append(row)
            elif event.kind == "lost":
                lost = event.reason or "disconnected"
        if confirmed:
            self.delivered += self._buffer.confirm(confirmed)
        return lost

    def _publish(self, link: _Link, rows: list[OutboundMessage]) -> bool:
        for index, row in enumerate(rows):
            info = link.client.publish(row.topic, row.payload, qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning(
                    "publish to the cloud failed (rc=%s) device=%s seq=%s; resetting the link",
                    info.rc,
                    row.device,
                    row.seq,
                )
                self.released += self._buffer.release([r.id for r in rows[index:]])
                return False
            link.inflight[info.mid] = row.id
            self.published += 1
        return True

    def _close(self, link: _Link, *, graceful: bool) -> None:
        """Stop the client; rows still in flight are not delivered, so they go back to pending."""
        if graceful and link.inflight:
            self._drain(link)
        if graceful:
            publish_status(link.client, self._config.gateway_id, OFFLINE, LINK)
        link.client.disconnect()
        link.client.loop_stop()
        if link.inflight:
            self.released += self._buffer.release(list(link.inflight.values()))
            link.inflight.clear()

    def _drain(self, link: _Link) -> None:
        """At stop: give outstanding PUBACKs a short grace period."""
        deadline = time.monotonic() + self._config.drain_grace_s
        while link.inflight and (remaining := deadline - time.monotonic()) > 0:
            with self._cond:
                if not self._events:
                    self._cond.wait(remaining)
                events, self._events = self._events, []
            if self._apply(link, events) is not None:
                return

    # -- paho callbacks (network thread): record, never touch the buffer ---------------
    def _record(self, event: _Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify()

    def _on_connect(
        self, _client: mqtt.Client, generation: int, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._record(_Event("connack", generation, ok=not reason.is_failure, reason=str(reason)))

    def _on_disconnect(
        self, _client: mqtt.Client, generation: int, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._record(_Event("lost", generation, reason=str(reason)))

    def _on_publish(
        self, _client: mqtt.Client, generation: int, mid: int, _reason: Any, _props: Any
    ) -> None:
        self._record(_Event("puback", generation, mid=mid))

    def _on_message(
        self, _client: mqtt.Client, _generation: int, message: mqtt.MQTTMessage
    ) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("ignored a receipt whose topic is not UTF-8")
            return
        self._relay(topic, bytes(message.payload))
