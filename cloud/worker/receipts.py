"""Publishing receipts: retained, QoS 1, to each device's receipt topic on the cloud broker,
coalesced so that they do not flood the brokers.

A receipt is the cloud's committed word on a device (highest contiguous seq and its hash),
so it is only ever offered after the transaction that produced it committed. Losing one
is harmless: the device resends what is not receipted, the resend lands as a duplicate, and
the duplicate produces the receipt again.

Coalescing (:class:`ReceiptCoalescer`, no I/O; :class:`ReceiptSender` publishes): at most one receipt per device per
``interval_s``, always the latest. A receipt for a device that had none published within the
interval goes out at the next flush (the worker flushes right after each commit); otherwise it
is held, a newer receipt replacing the held one, and it goes out once the interval since that
device's last publish has passed. An older seq is never published after a newer one for the
same device. Memory: one entry per device with a receipt held or published within the last
interval. Interval 0: every receipt goes out at the next flush, as before coalescing. The
sender also holds back while ``max_in_flight`` receipts await the broker's PUBACK: a broker
slower than the commits gets fewer, fresher receipts rather than a growing queue.

Every method that looks at the clock takes it (``now``, seconds, e.g. ``time.monotonic()``,
never decreasing) as an argument, so the rules are testable without sleeping. Neither class is thread-safe: the
cloud worker calls them from its commit thread only (and at stop, after that thread ended).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from cloud.config import DEFAULT_RECEIPT_INTERVAL_S
from cloud.elections import Elections, key_for
from protocol import Receipt, SigningKey, receipt_topic
from protocol.signed import sign_receipt

log = logging.getLogger(__name__)


DeviceKey = tuple[str, str]  # (election, device)


@dataclass(slots=True)
class _Last:
    """When a device's receipt was last published, and its seq."""

    at: float
    seq: int


class ReceiptCoalescer:
    """Decides which receipts to publish when: at most one per device per interval, the latest."""

    def __init__(self, interval_s: float = DEFAULT_RECEIPT_INTERVAL_S) -> None:
        if not interval_s >= 0 or math.isinf(interval_s):
            raise ValueError(f"receipt interval must be a finite number >= 0, got {interval_s}")
        self._interval = interval_s
        # Devices published within memory, ordered by ``at``, oldest first (a device moves to
        # the end when published): the devices due are a prefix, and a scan stops at the first
        # device that is not.
        self._last: OrderedDict[DeviceKey, _Last] = OrderedDict()
        # Devices with a receipt held and none published within memory: due at once, in order.
        self._fresh: dict[DeviceKey, None] = {}
        self._held: dict[DeviceKey, Receipt] = {}
        self.superseded = 0  # receipts replaced by a newer one before they went out

    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def held(self) -> int:
        """Receipts waiting to go out (one per device at most)."""
        return len(self._held)

    @property
    def tracked(self) -> int:
        """Devices remembered: a receipt held, or one published within the last interval."""
        return len(self._last) + len(self._fresh)

    def offer(self, receipts: Iterable[Receipt]) -> None:
        """Receipts a commit produced: each replaces the device's held one, if any. A device
        with nothing published within the interval is due at once (at the next :meth:`due`)."""
        for receipt in receipts:
            key = (receipt.election, receipt.device)
            last = self._last.get(key)
            if last is not None and receipt.seq < last.seq:
                self.superseded += 1  # a newer one already went out: never go back
                continue
            held = self._held.get(key)
            if held is not None:
                self.superseded += 1
                if receipt.seq < held.seq:
                    continue  # the held one is newer: it stays
            self._held[key] = receipt
            if last is None:
                self._fresh[key] = None

    def due(
        self, now: float, *, everything: bool = False, limit: int | None = None
    ) -> list[Receipt]:
        """The held receipts to publish now, marked sent at ``now``: those of devices whose
        interval has passed (oldest first), then those of devices with none published within
        memory; with ``everything``, then every other held one too. At most ``limit``: the
        others stay held, and due. Devices published longer than an interval ago with nothing
        held are forgotten."""
        cap = math.inf if limit is None else limit
        out: list[Receipt] = []
        expired: list[DeviceKey] = []
        for key, last in self._last.items():
            if now - last.at < self._interval:
                break
            expired.append(key)
        for key in expired:
            receipt = self._held.get(key)
            if receipt is None:
                del self._last[key]
            elif len(out) < cap:
                self._take(key, receipt, now, out)
            else:
                break  # the rest stay at the front: due at the next call
        for key in list(self._fresh):
            if len(out) >= cap:
                break
            del self._fresh[key]
            self._take(key, self._held[key], now, out)
        if everything:
            for key in list(self._held):
                if len(out) >= cap:
                    break
                self._fresh.pop(key, None)
                self._take(key, self._held[key], now, out)
        return out

    def _take(self, key: DeviceKey, receipt: Receipt, now: float, out: list[Receipt]) -> None:
        del self._held[key]
        self._last[key] = _Last(now, receipt.seq)
        self._last.move_to_end(key)
        out.append(receipt)

    def restore(self, receipt: Receipt) -> None:
        """Hold ``receipt`` again (it was not published after all), unless the device has a
        newer one held; it goes out when the device is next due."""
        key = (receipt.election, receipt.device)
        held = self._held.get(key)
        if held is not None and held.seq >= receipt.seq:
            return
        last = self._last.get(key)
        if last is not None and last.seq > receipt.seq:
            return
        self._held[key] = receipt
        if last is None:
            self._fresh[key] = None


class ReceiptSender:
    """Coalesces receipts and publishes them, signed by the cloud ``key`` (protocol/signed.py,
    docs/protocol.md §9b), retained and QoS 1, on the current connection.

    The held receipts belong to the sender, not to a connection: :meth:`flush` takes the client
    to publish on, so what is held while disconnected goes out on the next connection. Receipts
    published on a connection that ended before the broker acknowledged them are held again.

    Backpressure: at most ``max_in_flight`` receipts are handed to paho and not yet acknowledged
    by the broker; while that many are, the due ones stay held (and keep coalescing) instead of
    piling up in paho's queue, which refuses publishes past 65,535 unacknowledged messages.
    """

    def __init__(
        self,
        key: SigningKey | Elections,
        interval_s: float = DEFAULT_RECEIPT_INTERVAL_S,
        *,
        max_in_flight: int = 1_000,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be positive, got {max_in_flight}")
        self._key_for = key_for(key)
        self._coalescer = ReceiptCoalescer(interval_s)
        self._client: mqtt.Client | None = None
        self._max_in_flight = max_in_flight
        self._pending: deque[tuple[Receipt, mqtt.MQTTMessageInfo]] = deque()
        self.published = 0  # publishes paho accepted (rc checked)
        self.failed = 0  # publishes paho refused (held again)

    @property
    def interval_s(self) -> float:
        return self._coalescer.interval_s

    @property
    def held(self) -> int:
        return self._coalescer.held

    @property
    def superseded(self) -> int:
        return self._coalescer.superseded

    def offer(self, receipts: Iterable[Receipt]) -> None:
        """Receipts of a commit that has committed; they go out at the next :meth:`flush`
        that finds them due."""
        self._coalescer.offer(receipts)

    @property
    def in_flight(self) -> int:
        """Receipts handed to paho and not known to be acknowledged (an upper bound)."""
        while self._pending and self._pending[0][1].is_published():
            self._pending.popleft()
        return len(self._pending)

    def flush(self, client: mqtt.Client, now: float, *, everything: bool = False) -> int:
        """Publish the receipts due (every held one with ``everything``) on ``client``, which
        must be connected, as many as ``max_in_flight`` allows; return how many paho accepted
        (rc checked for every one; on a refusal, that one and the rest are held again)."""
        if client is not self._client:
            self._switch(client)
        room = self._max_in_flight - self.in_flight
        if room <= 0:
            return 0
        due = self._coalescer.due(now, everything=everything, limit=room)
        sent = 0
        for index, receipt in enumerate(due):
            key = self._key_for(receipt.election)
            if key is None:  # cannot happen for a batch the ledger accepted; never unsigned
                log.error("receipt device=%s seq=%d dropped: no signing key for election %s", receipt.device, receipt.seq, receipt.election)
                continue
            info = client.publish(
                receipt_topic(receipt.election, receipt.device),
                sign_receipt(receipt, key),
                qos=1,
                retain=True,
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._refused(due[index:], mqtt.error_string(info.rc))
                break
            self._pending.append((receipt, info))
            sent += 1
            log.debug("receipt device=%s seq=%d published", receipt.device, receipt.seq)
        self.published += sent
        return sent

    def _refused(self, receipts: list[Receipt], reason: str) -> None:
        """Paho refused a publish: hold it and the rest again (due after the interval)."""
        self.failed += len(receipts)
        for receipt in receipts:
            self._coalescer.restore(receipt)
        first = receipts[0]
        if len(receipts) == 1:
            log.warning(
                "receipt device=%s seq=%d not published now: %s", first.device, first.seq, reason
            )
        else:
            log.warning(
                "%d receipts not published now (device=%s seq=%d and others): %s; held again",
                len(receipts),
                first.device,
                first.seq,
                reason,
            )

    def drain(self, client: mqtt.Client, timeout: float) -> int:
        """At a stop: publish every held receipt (in rounds of ``max_in_flight``) and wait for
        the broker's acknowledgements, for at most ``timeout`` seconds. Returns how many were
        not confirmed: still unacknowledged, or never published (paho refused, or no time)."""
        deadline = time.monotonic() + timeout
        while True:
            sent = self.flush(client, time.monotonic(), everything=True)
            left = self.wait(deadline - time.monotonic())
            if not self.held or sent == 0 or time.monotonic() >= deadline:
                return left + self.held

    def _switch(self, client: mqtt.Client) -> None:
        """A new connection: what the previous one never got acknowledged is held again."""
        unconfirmed = [r for r, info in self._pending if not info.is_published()]
        self._pending.clear()
        for receipt in unconfirmed:
            self._coalescer.restore(receipt)
        if unconfirmed:
            log.info(
                "%d receipts unconfirmed by the previous connection held again", len(unconfirmed)
            )
        self._client = client

    def wait(self, timeout: float) -> int:
        """Wait until the broker acknowledged every pending receipt or ``timeout`` passes.

        Returns how many are still unacknowledged.
        """
        deadline = time.monotonic() + timeout
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            receipt, info = self._pending[0]
            try:
                info.wait_for_publish(timeout=min(remaining, 0.5))
            except (RuntimeError, ValueError):  # paho: connection gone, or publish refused
                log.warning(
                    "receipt device=%s seq=%d unconfirmed: connection lost",
                    receipt.device,
                    receipt.seq,
                )
                self._pending.popleft()
                continue
            if info.is_published():
                self._pending.popleft()
        return len(self._pending)

    def summary(self) -> str:
        return (
            f"{self.published} receipts published, {self.superseded} superseded (coalesced away),"
            f" {self.held} held (interval {self.interval_s:g}s)"
        )
