"""Publishing receipts: retained, QoS 1, to each device's receipt topic on the cloud broker.

A receipt is the cloud's committed word on a device (highest contiguous seq and its hash),
so it is only ever published after the transaction that produced it committed. Losing one
is harmless: the device resends what is not receipted, the resend lands as a duplicate, and
the duplicate produces the receipt again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

import paho.mqtt.client as mqtt

from protocol import Receipt, receipt_topic

log = logging.getLogger(__name__)


class ReceiptSender:
    """Publishes receipts on one connection and remembers those not yet acknowledged.

    ``max_pending`` bounds the memory: when more are unacknowledged, the oldest are
    forgotten (not unpublished: paho still delivers them; we only stop waiting for them).
    """

    def __init__(self, client: mqtt.Client, *, max_pending: int = 10_000) -> None:
        self._client = client
        self._pending: deque[tuple[Receipt, mqtt.MQTTMessageInfo]] = deque(maxlen=max_pending)

    def publish(self, receipts: Sequence[Receipt]) -> int:
        """Publish each receipt; return how many paho accepted (rc checked for every one)."""
        while self._pending and self._pending[0][1].is_published():
            self._pending.popleft()
        sent = 0
        for receipt in receipts:
            info = self._client.publish(
                receipt_topic(receipt.election, receipt.device),
                receipt.to_bytes(),
                qos=1,
                retain=True,
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning(
                    "receipt device=%s seq=%d not published: %s",
                    receipt.device,
                    receipt.seq,
                    mqtt.error_string(info.rc),
                )
                continue
            self._pending.append((receipt, info))
            sent += 1
            log.debug("receipt device=%s seq=%d published", receipt.device, receipt.seq)
        return sent

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
