"""Sending repair requests: the ones :class:`cloud.ledger.repairs.RepairScheduler` says are due,
re-checked against the database, signed by the cloud key (protocol/signed.py, docs/protocol.md
§9b), published QoS 1 (not retained) on each device's command topic, then noted in the database.

What one worker saw may be stale (with ``--share`` another worker may have committed the
missing seqs), so only the ranges the database still misses are asked for. Not thread-safe:
the cloud worker calls :meth:`RepairSender.send` from its commit thread only, and only while
connected (a request not sent stays due).
"""

from __future__ import annotations

import logging
import time

import paho.mqtt.client as mqtt

from cloud._exceptions import DatabaseUnavailable
from cloud.elections import Elections, key_for
from cloud.ledger.ledger import Ledger
from cloud.ledger.repairs import RepairScheduler
from protocol import RepairRequest, SigningKey, command_topic
from protocol.signed import sign_repair

log = logging.getLogger(__name__)


class RepairSender:
    """Publishes the due repair requests of ``scheduler`` on a client; ``sent`` counts them."""

    def __init__(self, scheduler: RepairScheduler, ledger: Ledger, key: SigningKey | Elections) -> None:
        self._scheduler = scheduler
        self._ledger = ledger
        self._key_for = key_for(key)
        self.sent = 0

    def send(self, client: mqtt.Client) -> None:
        """Publish the repair requests due (QoS 1, not retained), then note them in the DB."""
        now = time.monotonic()
        requests = self._scheduler.due(now)
        if not requests:
            return
        # What this worker saw may be stale: with --share another worker may have committed
        # the missing seqs. Ask only for what the database still misses, as it is now.
        try:
            current = self._ledger.current_gaps([(r.election, r.device) for r in requests])
        except DatabaseUnavailable as err:
            log.warning("repair requests held back, seq gaps not readable: %s", err)
            return  # due again after their interval
        self._scheduler.observe(current.items(), now)  # forgets the gaps closed meanwhile
        requests = [
            RepairRequest(r.election, r.device, ranges)
            for r in requests
            if (ranges := current.get((r.election, r.device)))
        ]
        sent: list[RepairRequest] = []
        for request in requests:
            key = self._key_for(request.election)
            if key is None:
                log.error("repair request device=%s not sent: no signing key for election %s", request.device, request.election)
                continue
            rc = client.publish(
                command_topic(request.election, request.device),
                sign_repair(request, key),
                qos=1,
                retain=False,
            ).rc
            if rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning(
                    "repair request device=%s not published: %s",
                    request.device,
                    mqtt.error_string(rc),
                )
                continue
            sent.append(request)
            log.info(
                "repair request device=%s seq=%s published",
                request.device,
                ",".join(f"{a}-{b}" for a, b in request.missing),
            )
        self.sent += len(sent)
        try:
            self._ledger.mark_requested(sent)
        except DatabaseUnavailable as err:  # informational only: the request went out
            log.warning("repair requests not noted in the database: %s", err)
