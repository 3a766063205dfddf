"""Batches and bundles from a NATS JetStream cluster: durable pull consumers, acked after commit.

On a NATS cloud broker (:mod:`edgetally.nats`) gateways publish over MQTT as ever; nats-server
stores each QoS 1 message in the ``$MQTT_msgs`` stream, replicated, before its PUBACK. Workers
do not take batches over MQTT there (MQTT shared subscriptions deliver nothing on NATS 2.9:
docs/cloud-scaleout.md): each worker pulls from the same two durable consumers
(:data:`CONSUMERS`), so JetStream hands every message to one worker at a time, and

- a worker acknowledges a message only after the transaction holding it committed (the commit
  thread calls :meth:`JetStreamIntake.ack`, as it acks an MQTT message on its session);
- a message not acknowledged within ``ack_wait_s`` (its worker was SIGKILLed, hung, or lost the
  database) is delivered again, to whichever worker pulls next: the survivors;
- ``max_deliver`` is unlimited: dropping a batch after N tries would lose a vote count; a batch
  the ledger refuses is recorded as a rejection and acknowledged like any other, so nothing is
  redelivered forever;
- at most ``max_ack_pending`` messages per consumer are out unacknowledged (all workers
  together); past it the server holds back, as Mosquitto does at ``max_inflight_messages``.

The worker's MQTT session stays for everything else (gateway statuses, receipts, repair
requests, republishes). This module's thread runs an asyncio loop with nats-py; deliveries go
to the worker's bounded queue through :meth:`_Worker.enqueue` (blocking when full, off the loop).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cloud.ledger.ledger import unwrap
from cloud.worker.session import Delivery
from protocol.topics import BATCH_FILTER, GATEWAY_BUNDLE_FILTER

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from cloud.worker.session import _Worker

log = logging.getLogger(__name__)

MSGS_STREAM = "$MQTT_msgs"
MSGS_PREFIX = "$MQTT.msgs."  # + the MQTT topic as a NATS subject
# The durable pull consumers every worker shares (2.9 allows one filter subject per consumer).
CONSUMERS = {"edgetally-batches": BATCH_FILTER, "edgetally-bundles": GATEWAY_BUNDLE_FILTER}
DEFAULT_ACK_WAIT_S = 10.0
DEFAULT_MAX_ACK_PENDING = 8192
_FETCH = 256  # messages asked for per pull
_CLOSE_WAIT_S = 30.0  # how long the intake waits at stop for the commit thread's last acks
_FETCH_WAIT_S = 0.5  # a pull with nothing to give returns after this (the loop looks at stop)


def topic_subject(topic: str) -> str:
    """An MQTT topic filter as the NATS subject nats-server maps it to (``/`` → ``.``)."""
    return topic.replace("/", ".").replace("+", "*").replace("#", ">")


def subject_topic(subject: str) -> str:
    """Back from a ``$MQTT_msgs`` subject (``$MQTT.msgs.a.b``) to the MQTT topic (``a/b``)."""
    return subject.removeprefix(MSGS_PREFIX).replace(".", "/")


def consumer_config(name: str, *, replicas: int, ack_wait_s: float, max_ack_pending: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        filter_subject=MSGS_PREFIX + topic_subject(CONSUMERS[name]),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        num_replicas=replicas,
    )


async def ensure_consumers(
    js: JetStreamContext,
    *,
    replicas: int,
    ack_wait_s: float | None,
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
) -> None:
    """Create the durable consumers unless they exist. ``ack_wait_s`` None leaves an existing
    one as it is (a new one gets 10 s); a value is set on an existing one that differs."""
    for name in CONSUMERS:
        try:
            info = await js.consumer_info(MSGS_STREAM, name)
        except nats.js.errors.NotFoundError:
            wait = DEFAULT_ACK_WAIT_S if ack_wait_s is None else ack_wait_s
            config = consumer_config(name, replicas=replicas, ack_wait_s=wait, max_ack_pending=max_ack_pending)
            await js.add_consumer(MSGS_STREAM, config)
            log.info("created JetStream consumer %s on %s (R%d, ack wait %.0fs)", name, MSGS_STREAM, replicas, wait)
            continue
        had = info.config.ack_wait
        if ack_wait_s is not None and (had is None or abs(had - ack_wait_s) > 1e-3):
            # An update: the same config it was created with (consumer_config), another ack wait.
            held = info.config.max_ack_pending or max_ack_pending
            config = consumer_config(name, replicas=replicas, ack_wait_s=ack_wait_s, max_ack_pending=held)
            await js.add_consumer(MSGS_STREAM, config)
            log.warning(
                "JetStream consumer %s: ack wait changed from %ss to %gs (--ack-wait), for every worker",
                name, had, ack_wait_s,
            )  # fmt: skip


class JetStreamIntake:
    """Pulls from the shared consumers and acks after commit. Constructing it does no I/O.

    It stands where a :class:`cloud.worker.session.Session` stands for the commit thread:
    ``generation``, ``connected`` and :meth:`ack`."""

    generation = 0

    def __init__(
        self, servers: list[str], worker: _Worker, tls: ssl.SSLContext | None, *, ack_wait_s: float | None = None
    ) -> None:
        self._servers = servers
        self._ack_wait_s = ack_wait_s
        self._worker = worker
        self._tls = tls
        self.connected = threading.Event()
        self.bound = threading.Event()  # both consumers bound: batches flow
        self._intake_open = threading.Event()
        self._intake_open.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._commits_done = threading.Event()  # the commit thread has ended: no ack comes after
        self._done = threading.Event()
        self.received = 0

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(stop,), name="cloud-jetstream", daemon=True)
        self._thread.start()

    def stop_intake(self) -> bool:
        """Pull nothing more (what was pulled is committed and acked, the rest stays queued)."""
        self._intake_open.clear()
        return True

    def join(self, timeout: float) -> None:
        """After the commit thread ended: send its last acks, close the connection, end."""
        self._commits_done.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the JetStream intake did not stop within %.1fs", timeout)

    # -- the commit thread ------------------------------------------------------------------
    def ack(self, delivery: Delivery) -> bool:
        loop = self._loop
        handle: Msg | None = delivery.handle
        if loop is None or handle is None or loop.is_closed():
            return False
        future: Future[None] = asyncio.run_coroutine_threadsafe(handle.ack(), loop)
        future.add_done_callback(_log_ack_failure)
        return True

    # -- the intake thread --------------------------------------------------------------------
    def _run(self, stop: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(stop))
        finally:
            self.connected.clear()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._done.set()

    async def _main(self, stop: threading.Event) -> None:
        async def disconnected() -> None:
            self.connected.clear()
            log.warning("JetStream connection lost; nats-py reconnects to %s", ", ".join(self._servers))

        async def reconnected() -> None:
            self.connected.set()
            log.info("JetStream connection back")

        async def error(err: Exception) -> None:
            log.warning("JetStream connection: %s", err)

        options: dict[str, Any] = {
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 2,
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "error_cb": error,
        }
        if self._tls is not None:
            options["tls"] = self._tls
        nc: NatsClient | None = None
        while nc is None and not stop.is_set():
            try:
                nc = await nats.connect(self._servers, **options)
            except (nats.errors.NoServersError, OSError, TimeoutError) as err:
                log.warning("cannot reach the JetStream cluster %s (%s); retrying", ", ".join(self._servers), err)
                await asyncio.sleep(1.0)
        if nc is None:
            return
        self.connected.set()
        try:
            js = nc.jetstream()
            pulls = await self._bind(js, stop)
            if pulls is None:
                return
            self.bound.set()
            self._worker.subscribed()
            await asyncio.gather(*(self._pull(name, sub, stop) for name, sub in pulls.items()))
        finally:
            await self._close(nc)

    async def _close(self, nc: NatsClient) -> None:
        """Close once the commit thread has ended, its acks sent first.

        Not ``drain()``: nats-py's drain of a pull subscription waits out its whole drain timeout
        (30 s), and there is nothing to drain, since what was pulled and not acked comes again
        after the ack wait anyway.
        """
        # run() joins only after the commit thread ended; bounded all the same
        await asyncio.get_running_loop().run_in_executor(None, self._commits_done.wait, _CLOSE_WAIT_S)
        await asyncio.sleep(0)  # acks scheduled from the commit thread run before the flush
        if nc.is_connected:
            try:
                await nc.flush(timeout=2)
            except (nats.errors.Error, TimeoutError) as err:
                log.warning("JetStream acks not flushed at stop (%s): they come again after the ack wait", err)
        await nc.close()

    async def _bind(self, js: JetStreamContext, stop: threading.Event) -> dict[str, Any] | None:
        while not stop.is_set():
            try:
                info = await js.stream_info(MSGS_STREAM)
                replicas = info.config.num_replicas or 1
                await ensure_consumers(js, replicas=replicas, ack_wait_s=self._ack_wait_s)
                subs = {name: await js.pull_subscribe_bind(name, stream=MSGS_STREAM) for name in CONSUMERS}
                log.info("pulling from JetStream consumers %s of %s (R%d)", ", ".join(CONSUMERS), MSGS_STREAM, replicas)
                return subs
            except (nats.errors.Error, TimeoutError) as err:
                log.warning("JetStream consumers not ready (%s); retrying", err)
                await asyncio.sleep(1.0)
        return None

    async def _pull(self, name: str, sub: Any, stop: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set() and self._intake_open.is_set():
            try:
                msgs: list[Msg] = await sub.fetch(_FETCH, timeout=_FETCH_WAIT_S)
            except TimeoutError:
                continue
            except nats.errors.Error as err:
                log.warning("pull from %s failed (%s); pulling again", name, err)
                await asyncio.sleep(0.2)
                continue
            if not msgs:
                continue
            self.received += len(msgs)
            deliveries = [self._delivery(msg) for msg in msgs]
            # enqueue blocks while the commit queue is full: off the loop, which keeps pinging.
            await loop.run_in_executor(None, self._enqueue_all, deliveries)

    def _enqueue_all(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._worker.enqueue(delivery)

    def _delivery(self, msg: Msg) -> Delivery:
        topic = subject_topic(msg.subject)
        delivery = Delivery(self, 0, 1, messages=unwrap(topic, msg.data, datetime.now(UTC)), handle=msg)
        if log.isEnabledFor(logging.DEBUG):
            meta = msg.metadata
            log.debug("pulled stream seq %d on %s (delivery %d)", meta.sequence.stream, topic, meta.num_delivered)
        return delivery


def _log_ack_failure(future: Future[None]) -> None:
    err = future.exception()
    if err is not None:
        log.warning("JetStream ack not sent (%s): the message comes again after the ack wait, a duplicate", err)
