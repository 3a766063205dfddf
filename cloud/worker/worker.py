"""The cloud worker: batches from the cloud broker, into the ledger, acknowledged after commit.

Threads:

- the caller's thread runs the connection loop: one fresh paho client (a :class:`Session`)
  per connection attempt, with manual acks; by default clean_session=False, so the broker
  keeps the subscription and every unacknowledged message across reconnects and worker
  crashes; reconnects use capped exponential backoff with jitter;
- paho's network thread puts each message on a bounded queue (policy when full: block, which
  holds the broker back; nothing is dropped);
- the commit thread takes whatever is queued (up to ``group_max`` envelopes) and hands it to
  ``verify_threads`` verification threads, then records the group verified before it in ONE
  transaction (so verification of group N+1 overlaps the commit of group N; groups commit in
  arrival order), then publishes the receipts and acknowledges each message, but only on the
  session it arrived on: a packet id from a previous connection is never acknowledged (the
  broker redelivers those messages anyway, and the ledger counts them as duplicates).

Receipts (:class:`cloud.worker.receipts.ReceiptSender`, owned by the worker, not by a connection):
after each commit, a device's receipt goes out at once unless one went out for it within
``receipt_interval_s``; then it is held, a newer one replacing it, and the commit loop publishes
it when due (the loop turns at least every ``_POLL_S``, idle or not). Held receipts wait for the
next connection; a graceful stop publishes every held receipt, then waits for the PUBACKs.

Rules: with a :class:`cloud.engine.engine.RulesEngine` (``cloud run`` always passes one: ``--rules FILE``
or the default rules) a group goes through the engine instead of straight to the ledger: the
ledger rule's messages are recorded and the other rules' alerts, stored rows and dead letters
are written in the same transaction; republishes are published after the commit, then the
receipts, then the acknowledgements.

Scale-out (``share_group``): batches and bundles are subscribed as
``$share/GROUP/edgetally/v1/+/+/batch`` and ``$share/GROUP/edgetally/v1/_gateway/+/bundle``, so
the broker hands each message to one of the group's workers; correctness rests on the ledger's
unique key, never on which worker got a message. Gateway statuses stay a plain subscription.
With a clean session (the default with ``--share``), a graceful stop first unsubscribes, so the
broker routes nothing new here, and commits what was already routed (up to
``drain_timeout_s``) before disconnecting: a clean session's unacknowledged messages are
dropped by the broker at disconnect, and only device resends would bring them back.

Subscriptions, and how each message becomes a :class:`cloud.worker.session.Delivery`: see
:mod:`cloud.worker.session`; sending repair requests: :mod:`cloud.worker.repairs`. What is left
stays whole (a little over 400 lines): :class:`CloudWorker`'s connection loop, commit thread and
graceful stop share the session lock, the queue and the stop flags, and the stop order (drain,
close intake, join the commit thread, publish held receipts) reads best beside the loops it stops.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from cloud import faults
from cloud._exceptions import DatabaseUnavailable
from cloud.config import CloudConfig
from cloud.elections import Elections
from cloud.engine.engine import RulesEngine
from cloud.engine.stats import EngineResult
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import Checked, GroupResult, Inbound, Ledger
from cloud.ledger.repairs import RepairScheduler
from cloud.worker.jetstream import JetStreamIntake
from cloud.worker.receipts import ReceiptSender
from cloud.worker.repairs import RepairSender
from cloud.worker.session import Backoff, Delivery, Session, _Taken
from cloud.worker.status import StatusStore
from protocol import SigningKey
from protocol.tls import client_context

log = logging.getLogger(__name__)

_POLL_S = 0.2  # how often blocked waits look at the stop flag
_DRAIN_QUIET_S = 0.5  # a clean-session drain ends after this long with nothing left to commit
T = TypeVar("T")


class CloudWorker:
    """Runs until ``stop`` is set. Constructing it does no I/O; :meth:`run` does."""

    def __init__(
        self,
        config: CloudConfig,
        ledger: Ledger,
        statuses: StatusStore | None = None,
        rules: RulesEngine | None = None,
        *,
        signing_key: SigningKey | Elections,  # signs receipts and repair requests (protocol/signed.py)
    ) -> None:
        self._config = config
        self._ledger = ledger
        self._rules = rules  # None: every message straight to the ledger, no rules
        self._statuses = statuses
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=config.queue_size)
        self._stop = threading.Event()  # asked to stop: no new connection, no DB retries
        self._closed = threading.Event()  # intake closed: the commit loop ends
        self._session_lock = threading.Lock()
        self._session: Session | None = None
        # On a NATS JetStream broker batches come from here, not from the MQTT session.
        self._intake = (
            JetStreamIntake(
                list(config.jetstream), self, None if config.tls is None else client_context(config.tls),
                ack_wait_s=config.ack_wait_s,
            )
            if config.jetstream
            else None
        )
        self._ready_lock = threading.Lock()
        self._mqtt_subscribed = False
        self._ready_written = False
        self._totals = dict.fromkeys(Verdict, 0)
        self._stale_acks = 0
        self._repairs = RepairScheduler(config.repair_interval_s, config.repair_grace_s)
        self._repair_sender = RepairSender(self._repairs, ledger, signing_key)
        # Held receipts outlive a connection: they go out on the next one (commit thread only).
        self._receipts = ReceiptSender(signing_key, config.receipt_interval_s)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- entry point ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Connect, consume and commit until ``stop`` is set; then stop gracefully."""
        self._stop = stop
        committer = threading.Thread(target=self._supervise_commits, name="cloud-commit")
        committer.start()
        if self._intake is not None:
            self._intake.start(stop)
        try:
            self._connection_loop()
        finally:
            stop.set()
            try:
                self._drain()
            finally:
                self._closed.set()
                committer.join()
                if self._intake is not None:
                    self._intake.join(self._config.drain_timeout_s)
                self._shutdown_session()
            log.info(
                "cloud worker stopped: %d accepted, %d duplicates, %d rejected, %d stale acks dropped,"
                " %d repair requests",
                self._totals[Verdict.ACCEPTED],
                self._totals[Verdict.DUPLICATE],
                self._totals[Verdict.REJECTED],
                self._stale_acks,
                self._repair_sender.sent,
            )
            log.info("receipts: %s", self._receipts.summary())
            if self._rules is not None:
                log.info("rules engine: %s", self._rules.stats.summary())

    def _connection_loop(self) -> None:
        backoff = Backoff(self._config.backoff_initial_s, self._config.backoff_max_s)
        generation = 0
        nodes = (self._config.broker, *self._config.broker_alternates)
        while not self._stop.is_set():
            generation += 1
            broker = nodes[(generation - 1) % len(nodes)]  # one cluster: after a failure, the next node
            session = Session(generation, self._config, self, broker)
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

    def _drain(self) -> None:
        """Clean session: stop intake, commit what the broker already routed here, then return.

        A persistent session needs none of it: what is not acknowledged stays in the session
        for the next run, so the commit loop only finishes the group it is committing.
        """
        if self._intake is not None:
            self._intake.stop_intake()  # JetStream redelivers the rest after the ack wait
        elif not self._config.clean_session:
            return
        else:
            with self._session_lock:
                session = self._session
            if session is None or not session.stop_intake():
                return
        deadline = time.monotonic() + self._config.drain_timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= _DRAIN_QUIET_S:
                return
            time.sleep(0.05)
        log.warning(
            "stopping with %d messages uncommitted: the broker drops them with this clean"
            " session, device resends bring them back",
            self._queue.unfinished_tasks,
        )

    def _shutdown_session(self) -> None:
        with self._session_lock:
            session = self._session
        if session is None:
            return
        if session.connected.is_set():
            # Every held receipt goes out now, then we wait for the broker's acknowledgements.
            left = self._receipts.drain(session.client, self._config.drain_timeout_s)
            if left:
                log.warning(
                    "%d receipts unconfirmed at stop (devices resend, and the duplicates bring"
                    " the receipts again)",
                    left,
                )
            session.client.disconnect()
        elif self._receipts.held:
            log.warning(
                "%d held receipts not published: not connected at stop (devices resend, and the"
                " duplicates bring the receipts again)",
                self._receipts.held,
            )
        session.client.loop_stop()

    # -- called from paho's thread -----------------------------------------------------------
    def subscribed(self) -> None:
        """The MQTT subscriptions are granted, or the JetStream consumers bound (its thread)."""
        with self._ready_lock:
            self._mqtt_subscribed |= self._session is not None and self._session.subscribed
            if self._ready_written or self._config.ready_file is None or not self._mqtt_subscribed:
                return
            if self._intake is not None and not self._intake.bound.is_set():
                return
            write_ready_file(self._config.ready_file, self._config)
            self._ready_written = True

    def enqueue(self, delivery: Delivery) -> None:
        """Queue a message for commit. When the queue is full, block (backpressure)."""
        warned = False
        while not self._closed.is_set():
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
        while not self._closed.is_set():
            try:
                self._commit_loop()
            except Exception:
                delay = backoff.next()
                log.exception("commit loop failed; restarting in %.1fs after a reconnect", delay)
                self._force_redelivery()
                self._closed.wait(delay)

    def _force_redelivery(self) -> None:
        """Drop what is queued and reconnect: the broker redelivers every unacked message
        (a persistent session's; a clean session's are dropped, and devices resend them)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
        with self._session_lock:
            session = self._session
        if session is not None:
            session.client.disconnect()

    def _commit_loop(self) -> None:
        """Take group N+1 and start verifying it, then commit group N: two stages overlap."""
        threads = self._config.verify_threads
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cloud-verify") as pool:
            ahead: _Taken | None = None
            try:
                while not self._closed.is_set():
                    # Idle, this blocks at most _POLL_S: held receipts and repair requests
                    # still go out when due.
                    group = self._take_group(block=ahead is None)
                    if group is not None or ahead is not None:
                        following = None if group is None else self._verify_async(pool, group)
                        current, ahead = ahead, following
                        if current is not None:
                            self._commit(current)
                    self._send_repairs()
                    self._flush_receipts()
            finally:
                if ahead is not None:  # stopping, or failed: left to the broker to redeliver
                    for _ in ahead.group:
                        self._queue.task_done()

    def _take_group(self, *, block: bool) -> list[Delivery] | None:
        """Up to ``group_max`` queued envelopes (a bundle is never split); None if none."""
        try:
            first = self._queue.get(timeout=_POLL_S) if block else self._queue.get_nowait()
        except queue.Empty:
            return None
        group = [first]
        weight = first.weight
        while weight < self._config.group_max:
            try:
                delivery = self._queue.get_nowait()
            except queue.Empty:
                break
            group.append(delivery)
            weight += delivery.weight
        return group

    def _verify_async(self, pool: ThreadPoolExecutor, group: list[Delivery]) -> _Taken:
        inbound = [m for d in group for m in d.messages]
        size = max(1, -(-len(inbound) // self._config.verify_threads))
        futures = [
            pool.submit(self._ledger.check, inbound[i : i + size])
            for i in range(0, len(inbound), size)
        ]
        return _Taken(group, inbound, futures)

    def _commit(self, taken: _Taken) -> None:
        """Commit and acknowledge a verified group; whatever happens, it leaves the queue."""
        try:
            self._commit_group(taken.group, taken.inbound, taken.checked())
        finally:
            for _ in taken.group:
                self._queue.task_done()

    def _commit_group(
        self, group: list[Delivery], inbound: list[Inbound], checked: list[Checked]
    ) -> None:
        updates = [d.status for d in group if d.status is not None]
        result: GroupResult | EngineResult | None = None
        if inbound:
            record = self._ledger.record if self._rules is None else self._rules.record
            result = self._retry(lambda: record(inbound, checked), len(group))
            if result is None:
                return
            faults.checkpoint("committed")  # test-only (cloud/faults.py)
        if updates and self._statuses is not None:
            statuses = self._statuses
            if self._retry(lambda: statuses.record(updates), len(updates)) is None:
                group = [d for d in group if d.status is None]  # the committed part is acked
        with self._session_lock:
            session = self._session
        if result is not None:
            for verdict in Verdict:
                self._totals[verdict] += result.count(verdict)
            live = session if session is not None and session.connected.is_set() else None
            if isinstance(result, EngineResult) and self._rules is not None:
                # republish actions, after the commit (a failure goes to the error action)
                self._rules.after_commit(result, None if live is None else live.publish)
            # Only now, after the commit: held (coalesced) if the device had one published
            # within the interval, else published at once if connected.
            self._receipts.offer(result.receipts)
            if live is not None:
                self._receipts.flush(live.client, time.monotonic())
            self._repairs.observe(result.gaps, time.monotonic())
        for delivery in group:
            source = delivery.session
            if (source is session or source is self._intake) and source.connected.is_set():
                source.ack(delivery)
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

    def _flush_receipts(self) -> None:
        """Publish the held receipts that are due; kept while not connected."""
        with self._session_lock:
            session = self._session
        if session is not None and session.connected.is_set():
            self._receipts.flush(session.client, time.monotonic())

    def _send_repairs(self) -> None:
        """Publish the repair requests due (:mod:`cloud.worker.repairs`); kept while not connected."""
        with self._session_lock:
            session = self._session
        if session is None or not session.connected.is_set():
            return  # kept: due again once connected
        self._repair_sender.send(session.client)

    def _retry(self, commit: Callable[[], T], messages: int) -> T | None:
        """``commit()`` until it succeeds; ``None`` if intake closes first (nothing acked).

        A clean session's drain keeps intake open while it waits, so a group held back by a
        busy database still commits if the database returns within ``drain_timeout_s``.
        """
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
                if self._closed.wait(delay):
                    log.warning(
                        "stopping: %d uncommitted messages left to the broker to redeliver",
                        messages,
                    )
                    return None


def write_ready_file(path: Path, config: CloudConfig) -> None:
    """Atomically: write a temporary file, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    info = {"pid": os.getpid(), "client_id": config.client_id, "broker": config.broker.url}
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log.info("ready (wrote %s)", path)
