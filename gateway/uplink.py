"""Uplink: buffered envelopes to the cloud broker, and cloud receipts back down to the edge.

One pump thread owns the cloud link. It keeps up to ``window`` QoS 1 messages in flight,
made from buffer rows taken in id order (so each device's batches leave in seq order), and
marks rows delivered only when the cloud broker's PUBACK for their message arrives. Every
``publish()`` rc is checked: a failure (e.g. paho's 65,535 message-id limit, or a lost link)
puts the rows back to pending.

Bundling (``bundle_max`` > 1): consecutive rows of one fetch are framed into bundles of up to
``bundle_max`` envelopes and :data:`protocol.bundle.MAX_BUNDLE_BYTES` (zlib-compressed with
``compress``), published on ``edgetally/v1/_gateway/{gateway}/bundle``; the cloud unwraps them.
A bundle's PUBACK confirms all its rows. A row that would be alone in its bundle, or that is
too large for one, is published unchanged on its own topic. Nothing waits to fill a bundle:
under light load messages carry one envelope each, under a backlog they fill up.

Each connection attempt uses a fresh paho client (``clean_session=True``, paho's own
reconnect off): when a link drops, everything it had in flight goes back to pending and no
PUBACK of that old client can confirm a row afterwards. Reconnection uses capped exponential
backoff with jitter; while the cloud is away the ingress keeps buffering, and the pump
drains the buffer when the link returns.

Dead links: paho sends a PINGREQ after ``keepalive_s`` without traffic from the broker and
drops the connection when the PINGRESP has not come ``keepalive_s`` later, so a half-open or
blackholed link (TCP up, nothing answered) is noticed within about twice the keepalive; the
rows in flight go back to pending and the pump reconnects. A connection attempt that gets no
CONNACK within ``connect_timeout_s`` (a blackhole accepts TCP and answers nothing) is
abandoned and retried with backoff.

Downlink: the same client subscribes to ``edgetally/v1/+/+/receipt`` and
``edgetally/v1/+/+/command`` (repair requests) and hands every message, uninterpreted, to
``relay`` (the ingress republishes it on the edge broker: receipts retained, commands not). Receipts
are retained on the cloud broker, so subscribing again (at every connect, and whenever the
edge link comes back) re-delivers the latest one of every device.

Housekeeping on the pump thread: the gateway status offered by the status reporter is
published retained on the cloud broker; delivered rows past their retention are purged in
short bounded transactions every few seconds.

paho callbacks run on paho's network thread and only record events under a condition
variable; the pump does all buffer work. The event list is bounded by the window: one PUBACK
per publish of the current connection, plus one connect and one disconnect event.

The module stays whole (some 550 lines): it is one thread's state machine over one link
(connect, pump the window, apply PUBACKs, drain, close), which reads best in that order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from gateway import faults
from gateway._exceptions import DiskFull
from gateway.buffer.backpressure import DISK_RETRY_INITIAL_S, DISK_RETRY_MAX_S
from gateway.buffer.rows import OutboundMessage
from gateway.buffer.store import PURGE_LIMIT, Buffer
from gateway.config import GatewayConfig
from gateway.links import OFFLINE, ONLINE, Backoff, new_client, publish_status, set_offline_will
from gateway.status import CLOUD
from protocol import (
    COMMAND_FILTER,
    RECEIPT_FILTER,
    BadBundle,
    gateway_bundle_topic,
    gateway_status_topic,
)
from protocol import bundle as bundles
from protocol.topics import PREFIX, DeviceTopicKind

log = logging.getLogger(__name__)

RESUBSCRIBE_RETRY_S = 1.0  # after a SUBACK that refused a filter

LINK = CLOUD
IDLE_RECHECK_S = 1.0  # look at the buffer at least this often even without a wake-up
FETCH_MAX = 4096  # rows taken from the buffer in one transaction
PURGE_EVERY_S = 2.0  # how often expired delivered rows are purged
PURGE_ROUNDS = 10  # at most this many bounded purge transactions per round


@dataclass
class _Link:
    client: mqtt.Client
    generation: int
    inflight: dict[int, tuple[int, ...]] = field(default_factory=dict)  # mid -> buffer row ids

    def row_ids(self) -> list[int]:
        return [row for rows in self.inflight.values() for row in rows]


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # "connack", "puback", "lost"
    generation: int
    mid: int = 0
    ok: bool = True
    reason: str = ""


def pack(
    rows: Sequence[OutboundMessage], bundle_max: int, max_bytes: int = bundles.MAX_BUNDLE_BYTES
) -> Iterator[list[OutboundMessage]]:
    """Consecutive ``rows`` in groups of at most ``bundle_max`` that fit one bundle of ``max_bytes``.

    A row too large for any bundle comes out alone (it is then published unbundled).
    """
    group: list[OutboundMessage] = []
    size = bundles.HEADER_BYTES
    for row in rows:
        need = bundles.entry_bytes(row.topic, row.payload)
        if group and (len(group) >= bundle_max or size + need > max_bytes):
            yield group
            group, size = [], bundles.HEADER_BYTES
        group.append(row)
        size += need
    if group:
        yield group


class Uplink:
    """The cloud link. Construct, then run :meth:`run` in a thread until its stop event is set."""

    def __init__(
        self,
        config: GatewayConfig,
        buffer: Buffer,
        *,
        relay: Callable[[str, bytes], None],
        on_link_change: Callable[[], None] = lambda: None,
        elections: Sequence[str] | None = None,
    ) -> None:
        """``elections``: subscribe to these elections' receipts and commands only (what the cloud
        ACL grants; NATS refuses a wider wildcard outright). None: every election's."""
        self._config = config
        self._filters = (
            [(RECEIPT_FILTER, 1), (COMMAND_FILTER, 1)]
            if elections is None
            else [
                (f"{PREFIX}/{election}/+/{kind}", 1)
                for election in elections
                for kind in (DeviceTopicKind.RECEIPT, DeviceTopicKind.COMMAND)
            ]
        )
        self._buffer = buffer
        self._relay = relay
        self._on_link_change = on_link_change
        self._bundle_topic = gateway_bundle_topic(config.gateway_id)
        self._status_topic = gateway_status_topic(config.gateway_id)
        self._cond = threading.Condition()
        self._events: list[_Event] = []
        self._wake = False
        self._resubscribe = False
        self._resubscribe_due: float | None = None  # a refused subscription is tried again then
        self._status: bytes | None = None
        self._generation = 0
        self._connected = False
        self._disk_full = False  # inside a full-disk episode (logged once per episode)
        self._next_purge = 0.0
        self.published = 0  # rows handed to paho (a bundle counts each of its rows)
        self.messages = 0  # MQTT messages handed to paho
        self.bundles = 0
        self.delivered = 0
        self.released = 0
        self.purged = 0

    # -- called from other threads ----------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the cloud link is up (connected, subscribed, forwarding)."""
        return self._connected

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

    def offer_status(self, payload: bytes) -> None:
        """Publish this gateway status (retained) on the cloud broker if the link is up.

        Only the latest offer is kept; while the link is down nothing is queued.
        """
        with self._cond:
            self._status = payload
            self._cond.notify()

    def interrupt(self) -> None:
        """Wake the pump so that it sees its stop event now."""
        with self._cond:
            self._cond.notify_all()

    # -- the pump ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Connect, forward, reconnect, until ``stop`` is set; then hand back what is in flight.

        A full disk (``DiskFull`` from any buffer write: marking rows in flight, delivered or
        pending again, purging) pauses the uplink with capped backoff instead of failing it:
        the link is closed, and once a write succeeds again every row still marked in flight
        goes back to pending. One log line per episode. Nothing is lost: a row whose PUBACK
        could not be recorded is sent again, and the cloud ledger absorbs the duplicate.
        """
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        disk = Backoff(DISK_RETRY_INITIAL_S, DISK_RETRY_MAX_S)
        needs_reset = True
        while not stop.is_set():
            try:
                if needs_reset:
                    reset = self._buffer.reset_inflight()
                    needs_reset = False
                    if reset:
                        log.info("%d batches marked in flight are pending again", reset)
                if not self._disk_full:
                    disk.reset()
                self._housekeeping()
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
            except DiskFull as exc:
                needs_reset = True
                if not self._disk_full:
                    self._disk_full = True
                    log.warning("no room on the disk for the uplink's buffer updates (%s); pausing it", exc)
                self._wait(stop, disk.next())
        log.info(
            "uplink stopped: published=%d (in %d messages, %d bundles) delivered=%d released=%d",
            self.published,
            self.messages,
            self.bundles,
            self.delivered,
            self.released,
        )

    def _wrote(self) -> None:
        """A buffer write that needed room succeeded: a full-disk episode, if any, is over."""
        if self._disk_full:
            self._disk_full = False
            log.warning("buffer disk writable again: the uplink resumes forwarding")

    def _wait(self, stop: threading.Event, delay: float) -> None:
        deadline = time.monotonic() + delay
        with self._cond:
            while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)

    def _set_connected(self, up: bool) -> None:
        if self._connected != up:
            self._connected = up
            self._on_link_change()

    def _connect(self, stop: threading.Event) -> _Link | None:
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._events.clear()
        config = self._config
        client = new_client(
            config.cloud_client_id,
            clean_session=True,
            reconnect=False,
            userdata=generation,
            tls=config.tls if config.cloud.tls else None,
        )
        client.max_inflight_messages_set(self._config.window)
        set_offline_will(client, self._config.gateway_id, LINK)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        nodes = (config.cloud, *config.cloud_alternates)
        cloud = nodes[(generation - 1) % len(nodes)]  # one cluster: after a failure, the next node
        try:
            client.connect(cloud.host, cloud.port, keepalive=self._config.keepalive_s)
        except OSError as exc:
            log.debug("cloud connect failed: %s", exc)
            return None
        client.loop_start()
        ack = self._await_connack(generation, stop)
        link = _Link(client, generation)
        if ack is None or ack.kind != "connack" or not ack.ok:
            if not stop.is_set():
                log.warning(
                    "cloud broker did not accept the connection: %s",
                    ack.reason if ack else f"no CONNACK within {self._config.connect_timeout_s}s",
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
        log.info(
            "cloud link up (%s, window %d, bundles of up to %d%s, keepalive %ds)",
            cloud.url,
            self._config.window,
            self._config.bundle_max,
            ", compressed" if self._config.compress else "",
            self._config.keepalive_s,
        )
        self._set_connected(True)
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
        """Receipts and device commands (repair requests): both are relayed down."""
        rc, _mid = link.client.subscribe(self._filters)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("cloud subscribe to %s failed (rc=%s)", ", ".join(f for f, _ in self._filters), rc)
            return False
        return True

    def _pump(self, link: _Link, stop: threading.Event) -> None:
        window = self._config.window
        maybe_pending = True
        while True:
            with self._cond:
                idle = not (self._events or self._wake or self._resubscribe or self._status)
                blocked = len(link.inflight) >= window or not maybe_pending
                if idle and blocked and not stop.is_set() and not self._cond.wait(IDLE_RECHECK_S):
                    maybe_pending = True  # quiet for a while: look at the buffer anyway
                events, self._events = self._events, []
                wake, self._wake = self._wake, False
                if self._resubscribe_due is not None and time.monotonic() >= self._resubscribe_due:
                    self._resubscribe, self._resubscribe_due = True, None
                resubscribe, self._resubscribe = self._resubscribe, False
                status, self._status = self._status, None
            confirmed, lost = self._collect(link, events)
            if lost is not None:
                self._confirm(confirmed)
                log.warning(
                    "cloud link lost (%s); %d batches in flight go back to pending",
                    lost,
                    sum(len(rows) for rows in link.inflight.values()),
                )
                return
            if stop.is_set():
                self._confirm(confirmed)
                return
            if resubscribe and not self._subscribe_receipts(link):
                self._confirm(confirmed)
                return
            if status is not None:
                self._publish_status(link, status)
            self._housekeeping()
            maybe_pending = maybe_pending or wake
            free = window - len(link.inflight)
            limit = min(free * self._config.bundle_max, FETCH_MAX) if maybe_pending and free > 0 else 0
            if not (confirmed or limit):
                continue
            # One transaction a round: what the cloud acknowledged, and the next pack.
            if confirmed:
                faults.checkpoint("puback")
            delivered, rows = self._buffer.advance(confirmed, limit)
            self.delivered += delivered
            if confirmed or rows:
                self._wrote()
            if limit:
                maybe_pending = len(rows) == limit
                if not self._publish(link, rows):
                    return

    def _apply(self, link: _Link, events: list[_Event]) -> str | None:
        """Confirm acknowledged rows; return the reason if the link was lost."""
        confirmed, lost = self._collect(link, events)
        self._confirm(confirmed)
        return lost

    def _confirm(self, confirmed: list[int]) -> None:
        if confirmed:
            faults.checkpoint("puback")
            self.delivered += self._buffer.confirm(confirmed)
            self._wrote()

    def _collect(self, link: _Link, events: list[_Event]) -> tuple[list[int], str | None]:
        """The rows the PUBACKs among ``events`` confirm, and the reason if the link was lost."""
        confirmed: list[int] = []
        lost: str | None = None
        for event in events:
            if event.generation != link.generation:
                continue  # a PUBACK of an earlier client: its rows were released already
            if event.kind == "puback":
                rows = link.inflight.pop(event.mid, None)
                if rows is not None:
                    confirmed.extend(rows)
            elif event.kind == "lost":
                lost = event.reason or "disconnected"
        return confirmed, lost

    def _publish(self, link: _Link, rows: list[OutboundMessage]) -> bool:
        groups = list(pack(rows, self._config.bundle_max))
        for index, group in enumerate(groups):
            topic, payload = self._message(group)
            info = link.client.publish(topic, payload, qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                first = group[0]
                log.warning(
                    "publish to the cloud failed (rc=%s) device=%s seq=%s (%d batches in the"
                    " message); resetting the link",
                    info.rc,
                    first.device,
                    first.seq,
                    len(group),
                )
                unsent = [row.id for later in groups[index:] for row in later]
                self.released += self._buffer.release(unsent)
                return False
            faults.checkpoint("published")
            link.inflight[info.mid] = tuple(row.id for row in group)
            self.published += len(group)
            self.messages += 1
            if log.isEnabledFor(logging.DEBUG):
                for row in group:
                    log.debug("sent device=%s seq=%s mid=%d", row.device, row.seq, info.mid)
        return True

    def _message(self, group: list[OutboundMessage]) -> tuple[str, bytes]:
        """The topic and payload that carry ``group``: the envelope itself, or a bundle."""
        if len(group) == 1:
            return group[0].topic, group[0].payload
        try:
            payload = bundles.encode(
                [(row.topic, row.payload) for row in group], compress=self._config.compress
            )
        except BadBundle as exc:  # pack() sized the group, so this is a bug, not bad input
            raise AssertionError(f"a packed group did not fit a bundle: {exc}") from exc
        self.bundles += 1
        return self._bundle_topic, payload

    def _publish_status(self, link: _Link, payload: bytes) -> None:
        info = link.client.publish(self._status_topic, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:  # the link is going: the next status will do
            log.debug("gateway status not published on the cloud broker now (rc=%s)", info.rc)

    def _housekeeping(self) -> None:
        """Purge delivered rows past their retention (bounded transactions, every few seconds)."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        for _ in range(PURGE_ROUNDS):
            purged = self._buffer.purge_expired()
            self.purged += purged
            if purged < PURGE_LIMIT:
                return

    def _close(self, link: _Link, *, graceful: bool) -> None:
        """Stop the client; rows still in flight are not delivered, so they go back to pending."""
        self._set_connected(False)
        if graceful and link.inflight:
            self._drain(link)
        if graceful:
            publish_status(link.client, self._config.gateway_id, OFFLINE, LINK)
        link.client.disconnect()
        link.client.loop_stop()
        if link.inflight:
            self.released += self._buffer.release(link.row_ids())
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

    def _on_subscribe(
        self, _client: mqtt.Client, generation: int, _mid: int, reasons: list[Any], _props: Any
    ) -> None:
        """A broker may refuse a filter in its SUBACK (NATS does while its stream has no leader):
        without the subscription no receipt would come down, so it is asked again shortly."""
        refused = [f for (f, _q), r in zip(self._filters, reasons, strict=False) if r.is_failure]
        if refused:
            log.warning("cloud broker refused the subscription to %s; asking again in %.0fs", ", ".join(refused), RESUBSCRIBE_RETRY_S)
            with self._cond:
                self._resubscribe_due = time.monotonic() + RESUBSCRIBE_RETRY_S
                self._cond.notify()

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
