"""The cloud worker: batches from the cloud broker, into the ledger, acknowledged after commit.

Threads:

- the caller's thread runs the connection loop: one fresh paho client (a :class:`Session`)
  per connection attempt, clean_session=False and manual acks, so the broker keeps the
  subscription and every unacknowledged message across reconnects and worker crashes;
  reconnects use capped exponential backoff with jitter;
- paho's network thread puts each message on a bounded queue (policy when full: block, which
  holds the broker back; nothing is dropped);
- the commit thread takes whatever is queued (up to ``group_max`` envelopes), records it in
  ONE transaction, then publishes the receipts and acknowledges each message, but only on the
  session it arrived on: a packet id from a previous connection is never acknowledged (the
  broker redelivers those messages anyway, and the ledger counts them as duplicates).

Subscriptions: device batches (``edgetally/v1/+/+/batch``), gateway bundles
(``edgetally/v1/_gateway/+/bundle``: unwrapped by :func:`cloud.ledger.unwrap`, every entry
treated as if it had arrived alone; all entries of a bundle go into one transaction, and the
bundle is acknowledged only after it committed) and gateway status
(``edgetally/v1/_gateway/+/status``: the latest per gateway is upserted by
:class:`cloud.status.StatusStore` in its own transaction, then acknowledged; a status that does
not parse is logged and acknowledged, it is informational).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud._exceptions import DatabaseUnavailable
from cloud.chain import Verdict
from cloud.config import CloudConfig
from cloud.ledger import Inbound, Ledger, unwrap
from cloud.receipts import ReceiptSender
from cloud.status import StatusStore, StatusUpdate
from protocol import (
    BATCH_FILTER,
    GATEWAY_BUNDLE_FILTER,
    GATEWAY_STATUS_FILTER,
    ProtocolError,
    parse_gateway_topic,
)
from protocol.gateway_status import GatewayStatus

log = logging.getLogger(__name__)

SUBSCRIPTIONS = [(BATCH_FILTER, 1), (GATEWAY_BUNDLE_FILTER, 1), (GATEWAY_STATUS_FILTER, 1)]
_POLL_S = 0.2  # how often blocked waits look at the stop flag
T = TypeVar("T")


class Backoff:
    """Capped exponential backoff with jitter: each delay is uniform in [ceiling/2, ceiling]."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self._initial = initial
        self._cap = cap
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._cap, self._initial * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message and the session (connection) whose packet id ``mid`` belongs to.

    ``messages`` go to the ledger (a device batch, or every entry of a bundle); ``status`` is a
    gateway status instead; neither: a message that is only acknowledged (a bad status).
    """

    session: Session
    mid: int
    qos: int
    messages: tuple[Inbound, ...] = ()
    status: StatusUpdate | None = None

    @property
    def weight(self) -> int:
        """How much of a commit group this takes: its envelopes (at least 1)."""
        return max(1, len(self.messages))


class Session:
    """One connection attempt to the broker, with its own paho client. Constructing does no I/O."""

    def __init__(self, generation: int, config: CloudConfig, worker: CloudWorker) -> None:
        self.generation = generation
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.subscribed = False
        self._config = config
        self._worker = worker
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
            reconnect_on_failure=False,  # a new Session per connection instead
        )
        client.max_inflight_messages_set(100)  # receipts in flight
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client
        self.receipts = ReceiptSender(client)

    # paho callbacks (paho's network thread) ---------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self._config.broker.url, reason)
            return
        log.info(
            "connected to %s as %s (connection %d, session present: %s)",
            self._config.broker.url,
            self._config.client_id,
            self.generation,
            flags.session_present,
        )
        self.connected.set()
        # Every time: a broker restarted without persistence has forgotten the subscription.
        rc, _ = client.subscribe(SUBSCRIPTIONS)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe to %s failed: %s", _filters(), mqtt.error_string(rc))
            client.disconnect()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused the subscription to %s: %s", _filters(), reasons)
            client.disconnect()
            return
        log.info("subscribed to %s (QoS 1)", _filters())
        self.subscribed = True
        self._worker.subscribed()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_at = datetime.now(UTC)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"  # refused by the ledger as a bad topic
        payload = bytes(message.payload)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("received mid=%d on %s (connection %d)", message.mid, topic, self.generation)
        if parse_gateway_topic(topic, "status") is not None:
            delivery = Delivery(self, message.mid, message.qos, status=_status(topic, payload))
        else:
            delivery = Delivery(
                self, message.mid, message.qos, messages=unwrap(topic, payload, received_at)
            )
            if len(delivery.messages) > 1:
                log.debug("bundle mid=%d holds %d envelopes", message.mid, len(delivery.messages))
        self._worker.enqueue(delivery)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        level = logging.INFO if self._worker.stopping else logging.WARNING
        log.log(
            level,
            "disconnected from %s (connection %d): %s",
            self._config.broker.url,
            self.generation,
            reason,
        )
        self.connected.clear()
        self.ended.set()

    # used by the commit thread -------------------------------------------------------------
    def ack(self, delivery: Delivery) -> bool:
        if delivery.qos == 0:
            return True
        rc = self.client.ack(delivery.mid, delivery.qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("ack of mid %d failed: %s", delivery.mid, mqtt.error_string(rc))
            return False
        return True


class CloudWorker:
    """Runs until ``stop`` is set. Constructing it does no I/O; :meth:`run` does."""

    def __init__(
        self, config: CloudConfig, ledger: Ledger, statuses: StatusStore | None = None
    ) -> None:
        self._config = config
        self._ledger = ledger
        self._statuses = statuses
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=config.queue_size)
        self._stop = threading.Event()
        self._session_lock = threading.Lock()
        self._session: Session | None = None
        self._ready_written = False
        self._totals = dict.fromkeys(Verdict, 0)
        self._stale_acks = 0

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- entry point ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Connect, consume and commit until ``stop`` is set; then stop gracefully."""
        self._stop = stop
        committer = threading.Thread(target=self._supervise_commits, name="cloud-commit")
        committer.start()
        try:
            self._connection_loop()
        finally:
            stop.set()
            committer.join()
            self._shutdown_session()
            log.info(
                "cloud worker stopped: %d accepted, %d duplicates, %d rejected, %d stale acks dropped",
                self._totals[Verdict.ACCEPTED],
                self._totals[Verdict.DUPLICATE],
                self._totals[Verdict.REJECTED],
                self._stale_acks,
            )

    def _connection_loop(self) -> None:
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        generation = 0
        broker = self._config.broker
        while not self._stop.is_set():
            generation += 1
            session = Session(generation, self._config, self)
            with self._session_lock:
                self._session = session
            try:
                session.client.connect(broker.host, broker.port, keepalive=self._config.keepalive_s)
            except OSError as err:
                delay = backoff.next()
                log.warning(
                    "cannot reach broker %s (%s); retrying in %.1fs", broker.url, err, delay
                )
                self._stop.wait(delay)
                continue
            session.client.loop_start()
            while not self._stop.is_set() and not session.ended.wait(_POLL_S):
                pass
            if self._stop.is_set():
                return  # the session stays up: run() drains the commit thread, then disconnects
            session.client.loop_stop()
            if session.subscribed:
                backoff.reset()  # it was up: start again from the shortest delay
            delay = backoff.next()
            log.info("reconnecting to %s in %.1fs", broker.url, delay)
            self._stop.wait(delay)

    def _shutdown_session(self) -> None:
        with self._session_lock:
            session = self._session
        if session is None:
            return
        if session.connected.is_set():
            left = session.receipts.wait(self._config.drain_timeout_s)
            if left:
                log.warning(
                    "%d receipts unconfirmed at stop (retained ones are republished on resend)",
                    left,
                )
            session.client.disconnect()
        session.client.loop_stop()

    # -- called from paho's thread -----------------------------------------------------------
    def subscribed(self) -> None:
        if self._ready_written or self._config.ready_file is None:
            return
        write_ready_file(self._config.ready_file, self._config)
        self._ready_written = True

    def enqueue(self, delivery: Delivery) -> None:
        """Queue a message for commit. When the queue is full, block (backpressure)."""
        warned = False
        while not self._stop.is_set():
            try:
                self._queue.put(delivery, timeout=_POLL_S)
                return
            except queue.Full:
                if not warned:
                    log.warning(
                        "commit queue full (%d): holding the broker back", self._config.queue_size
                    )
                    warned = True
        # Stopping: the message stays unacknowledged and the broker redelivers it.

    # -- commit thread ---------------------------------------------------------------------
    def _supervise_commits(self) -> None:
        """Restart the commit loop after an unexpected failure (the one broad except)."""
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        while not self._stop.is_set():
            try:
                self._commit_loop()
            except Exception:
                delay = backoff.next()
                log.exception("commit loop failed; restarting in %.1fs after a reconnect", delay)
                self._force_redelivery()
                self._stop.wait(delay)

    def _force_redelivery(self) -> None:
        """Drop what is queued and reconnect: the broker redelivers every unacked message."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._session_lock:
            session = self._session
        if session is not None:
            session.client.disconnect()

    def _commit_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            group = [first]
            weight = first.weight
            while weight < self._config.group_max:  # a bundle is never split across groups
                try:
                    delivery = self._queue.get_nowait()
                except queue.Empty:
                    break
                group.append(delivery)
                weight += delivery.weight
            self._commit(group)

    def _commit(self, group: list[Delivery]) -> None:
        inbound = [m for d in group for m in d.messages]
        updates = [d.status for d in group if d.status is not None]
        result = None
        if inbound:
            result = self._retry(lambda: self._ledger.record(inbound), len(group))
            if result is None:
                return
        if updates and self._statuses is not None:
            statuses = self._statuses
            if self._retry(lambda: statuses.record(updates), len(updates)) is None:
                group = [d for d in group if d.status is None]  # the committed part is acked
        with self._session_lock:
            session = self._session
        if result is not None:
            for verdict in Verdict:
                self._totals[verdict] += result.count(verdict)
            if session is not None and session.connected.is_set():
                session.receipts.publish(result.receipts)
        for delivery in group:
            if delivery.session is session and session.connected.is_set():
                session.ack(delivery)
            else:
                self._stale_acks += 1
                log.debug(
                    "not acking mid %d of connection %d", delivery.mid, delivery.session.generation
                )
        if result is not None:
            log.debug(
                "committed %d: %d accepted, %d duplicates, %d rejected",
                len(inbound),
                result.count(Verdict.ACCEPTED),
                result.count(Verdict.DUPLICATE),
                result.count(Verdict.REJECTED),
            )

    def _retry(self, commit: Callable[[], T], messages: int) -> T | None:
        """``commit()`` until it succeeds; ``None`` if the worker stops first (nothing acked)."""
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        while True:
            try:
                return commit()
            except DatabaseUnavailable as err:
                delay = backoff.next()
                log.warning(
                    "group of %d messages not committed (%s); retrying in %.1fs",
                    messages,
                    err,
                    delay,
                )
                if self._stop.wait(delay):
                    log.warning(
                        "stopping: %d uncommitted messages left to the broker to redeliver",
                        messages,
                    )
                    return None


def _filters() -> str:
    return ", ".join(topic for topic, _qos in SUBSCRIPTIONS)


def _status(topic: str, payload: bytes) -> StatusUpdate | None:
    """A gateway status to store; ``None`` (logged) if it does not parse or names another gateway."""
    try:
        status = GatewayStatus.parse(payload)
    except ProtocolError as err:
        log.warning("ignored a gateway status on %s: %s (%s)", topic, err, err.reason)
        return None
    if status.gateway != parse_gateway_topic(topic, "status"):
        log.warning("ignored a gateway status of %r on %s", status.gateway, topic)
        return None
    return StatusUpdate(status, payload, datetime.now(UTC))


def write_ready_file(path: Path, config: CloudConfig) -> None:
    """Atomically: write a temporary file, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    info = {"pid": os.getpid(), "client_id": config.client_id, "broker": config.broker.url}
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log.info("ready (wrote %s)", path)
