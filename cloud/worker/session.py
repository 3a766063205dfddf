"""One connection of the cloud worker to the broker, and what arrives on it.

A :class:`Session` is one connection attempt with its own paho client (manual acks; paho's
own reconnect off: the worker makes a new Session per attempt, with :class:`Backoff` between
them). Its callbacks run on paho's network thread: each message becomes a :class:`Delivery`
(tied to the session whose packet id it carries) and is handed to the worker's queue; the
commit thread acknowledges it on the same session only. :class:`_Taken` is a group of
deliveries taken off that queue while its envelopes are verified. What a session needs of its
worker is :class:`_Worker` (:class:`cloud.worker.worker.CloudWorker` is one).

Subscriptions: device batches (``edgetally/v1/+/+/batch``), gateway bundles
(``edgetally/v1/_gateway/+/bundle``: unwrapped by :func:`cloud.ledger.ledger.unwrap`, every entry
treated as if it had arrived alone; all entries of a bundle go into one transaction, and the
bundle is acknowledged only after it committed) and gateway status
(``edgetally/v1/_gateway/+/status``: the latest per gateway is upserted by
:class:`cloud.worker.status.StatusStore` in its own transaction, then acknowledged; a status that does
not parse is logged and acknowledged, it is informational).
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud._exceptions import ConfigError
from cloud.config import CloudConfig
from cloud.ledger.ledger import Checked, Inbound, unwrap
from cloud.worker.status import StatusUpdate
from protocol import BrokerAddress, ProtocolError, parse_gateway_topic
from protocol.gateway_status import GatewayStatus
from protocol.tls import ClientTls, client_context

log = logging.getLogger(__name__)


class _Worker(Protocol):
    """What a session calls on its worker from paho's thread."""

    @property
    def stopping(self) -> bool: ...
    def subscribed(self) -> None: ...
    def enqueue(self, delivery: Delivery) -> None: ...


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


class Source(Protocol):
    """Where a delivery came from and is acknowledged: a :class:`Session` (an MQTT connection's
    packet id) or :class:`cloud.worker.jetstream.JetStreamIntake` (a JetStream message)."""

    generation: int
    connected: threading.Event

    def ack(self, delivery: Delivery) -> bool: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message and the session (connection) whose packet id ``mid`` belongs to.

    ``messages`` go to the ledger (a device batch, or every entry of a bundle); ``status`` is a
    gateway status instead; neither: a message that is only acknowledged (a bad status).
    """

    session: Source
    mid: int
    qos: int
    messages: tuple[Inbound, ...] = ()
    status: StatusUpdate | None = None
    handle: Any = None  # a JetStream message (nats.aio.msg.Msg), acked through it

    @property
    def weight(self) -> int:
        """How much of a commit group this takes: its envelopes (at least 1)."""
        return max(1, len(self.messages))


@dataclass(frozen=True, slots=True)
class _Taken:
    """A group taken off the queue, its envelopes being verified in the pool."""

    group: list[Delivery]
    inbound: list[Inbound]
    futures: list[Future[list[Checked]]]

    def checked(self) -> list[Checked]:
        return [item for future in self.futures for item in future.result()]


def check_tls(files: ClientTls) -> None:
    """Load the worker's TLS context now (the CLI, before it starts the worker): a bad certificate stops it, named."""
    try:
        client_context(files)
    except ProtocolError as exc:
        raise ConfigError(f"--pki: {exc}") from exc


class Session:
    """One connection attempt to the broker, with its own paho client. Constructing does no I/O."""

    def __init__(
        self, generation: int, config: CloudConfig, worker: _Worker, address: BrokerAddress | None = None
    ) -> None:
        self.generation = generation
        self.address = address or config.broker  # the node this connection goes to
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.subscribed = False
        self._config = config
        self._worker = worker
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=config.clean_session,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
            reconnect_on_failure=False,  # a new Session per connection instead
        )
        if config.tls is not None:
            client.tls_set_context(client_context(config.tls))
        client.max_inflight_messages_set(100)  # receipts in flight
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client

    # paho callbacks (paho's network thread) ---------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.address.url, reason)
            return
        log.info(
            "connected to %s as %s (connection %d, session present: %s)",
            self.address.url,
            self._config.client_id,
            self.generation,
            flags.session_present,
        )
        self.connected.set()
        # Every time: a broker restarted without persistence has forgotten the subscription.
        rc, _ = client.subscribe(self._config.subscriptions)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe to %s failed: %s", _filters(self._config), mqtt.error_string(rc))
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
            log.error("broker refused the subscription to %s: %s", _filters(self._config), reasons)
            client.disconnect()
            return
        log.info("subscribed to %s (QoS 1)", _filters(self._config))
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
            self.address.url,
            self.generation,
            reason,
        )
        self.connected.clear()
        self.ended.set()

    def stop_intake(self) -> bool:
        """Unsubscribe the shared filters: the broker routes no new batch here. True if sent."""
        if not self.connected.is_set():
            return False
        rc, _ = self.client.unsubscribe(self._config.shared_filters)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("unsubscribe before stopping failed: %s", mqtt.error_string(rc))
            return False
        return True

    # used by the commit thread -------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        """A rules republish (never retained); paho's rc, for the engine to check."""
        return self.client.publish(topic, payload, qos=qos, retain=False).rc

    def ack(self, delivery: Delivery) -> bool:
        if delivery.qos == 0:
            return True
        rc = self.client.ack(delivery.mid, delivery.qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("ack of mid %d failed: %s", delivery.mid, mqtt.error_string(rc))
            return False
        return True


def _filters(config: CloudConfig) -> str:
    return ", ".join(topic for topic, _qos in config.subscriptions)


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
