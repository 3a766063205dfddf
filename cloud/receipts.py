"""Publishing receipts: retained, QoS 1, to each device's receipt topic on the cloud broker,
coalesced so that they do not flood the brokers.

A receipt is the cloud's committed word on a device (highest contiguous seq and its hash),
so it is only ever offered after the transaction that produced it committed. Losing one
is harmless: the device resends what is not receipted, the resend lands as a duplicate, and
the duplicate produces the receipt again.

Coalescing (:class:`ReceiptCoalescer`, no I/O): at most one receipt per device per
``interval_s``, always the latest. A receipt for a device that had none published within the
interval goes out at the next flush (the worker flushes right after each commit); otherwise it
is held, a newer receipt replacing the held one, and it goes out once the interval since that
device's last publish has passed. An older seq is never published after a newer one for the
same device. Memory: one entry per device with a receipt held or published within the last
interval. Interval 0: every receipt goes out at the next flush, as before coalescing.

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

from protocol import Receipt, receipt_topic

log = logging.getLogger(__name__)

DEFAULT_RECEIPT_INTERVAL_S = 0.25

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

    def due(self, now: float, *, everything: bool = False) -> list[Receipt]:
        """The held receipts to publish now (all of them with ``everything``), marked sent at
        ``now``; devices published longer than an interval ago with nothing held are forgotten."""
        ready: list[DeviceKey] = []
        for key, last in self._last.items():
            if now - last.at < self._interval:
                break
            ready.append(key)
        if everything:
            ready += [
                k for k in self._held if k in self._last and now - self._last[k].at < self._interval
            ]
        ready += self._fresh
        self._fresh.clear()
        out: list[Receipt] = []
        for key in ready:
            receipt = self._held.pop(key, None)
            if receipt is None:
                del self._last[key]
                continue
            self._last[key] = _Last(now, receipt.seq)
            self._last.move_to_end(key)
            out.append(receipt)
        return out

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
    """Coalesces receipts and publishes them, retained and QoS 1, on the current connection.

    The held receipts belong to the sender, not to a connection: :meth:`flush` takes the client
    to publish on, so what is held while disconnected goes out on the next connection. Receipts
    published on a connection that ended before the broker acknowledged them are held again.
    ``max_pending`` bounds the memory of unacknowledged ones: past it, the oldest are forgotten
    (not unpublished: paho still delivers them; we only stop waiting for them).
    """

    def __init__(
        self, interval_s: float = DEFAULT_RECEIPT_INTERVAL_S, *, max_pending: int = 10_000
    ) -> None:
        self._coalescer = ReceiptCoalescer(interval_s)
        self._client: mqtt.Client | None = None
        self._pending: deque[tuple[Receipt, mqtt.MQTTMessageInfo]] = deque(maxlen=max_pending)
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

    def flush(self, client: mqtt.Client, now: float, *, everything: bool = False) -> int:
        """Publish the receipts due (every held one with ``everything``) on ``client``, which
        must be connected; return how many paho accepted (rc checked for every one)."""
        if client is not self._client:
            self._switch(client)
        while self._pending and self._pending[0][1].is_published():
            self._pending.popleft()
        sent = 0
        for receipt in self._coalescer.due(now, everything=everything):
            info = client.publish(
                receipt_topic(receipt.election, receipt.device),
                receipt.to_bytes(),
                qos=1,
                retain=True,
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.failed += 1
                self._coalescer.restore(receipt)  # again once the device is next due
                log.warning(
                    "receipt device=%s seq=%d not published now: %s",
                    receipt.device,
                    receipt.seq,
                    mqtt.error_string(info.rc),
                )
                continue
            self._pending.append((receipt, info))
            sent += 1
            log.debug("receipt device=%s seq=%d published", receipt.device, receipt.seq)
        self.published += sent
        return sent

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
