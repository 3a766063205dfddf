"""When a NATS cluster is ready for EdgeTally: a JetStream meta leader, the MQTT streams, and the
workers' durable consumers over ``$MQTT_msgs`` (without them, interest retention would delete
every batch a gateway forwards before the first worker starts).

nats-server creates an account's MQTT streams on its first MQTT connection, so the probe
connects once over MQTT (clean session, its own client id), then makes the consumers with
nats-py, R(N), the ack wait of :class:`edgetally.nats.NatsCluster`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats
import nats.errors
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.worker.jetstream import ensure_consumers
from edgetally.brokers import BrokerError
from protocol.tls import ClientTls, client_context

if TYPE_CHECKING:
    from edgetally.nats import NatsCluster

log = logging.getLogger(__name__)

_POLL_S = 0.1


def ensure_ready(cluster: NatsCluster, probe: ClientTls | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(f"NATS cluster not ready within {timeout:.0f}s (see {cluster.workdir}/n*.log)")
        return remaining

    while not _answers(cluster):
        left()
        time.sleep(_POLL_S)
    # A single node has no meta group: JetStream answering is enough.
    while len(cluster.nodes) > 1 and cluster.meta_leader() is None:
        left()
        time.sleep(_POLL_S)
    _mqtt_probe(cluster, probe, left)
    asyncio.run(_consumers(cluster, probe, left))


def _answers(cluster: NatsCluster) -> bool:
    try:
        cluster.jsz()
    except BrokerError:
        return False
    return True


def _mqtt_probe(cluster: NatsCluster, probe: ClientTls | None, left: Callable[[], float]) -> None:
    """One MQTT connection and disconnection: nats-server then makes the MQTT streams.

    To whichever node's MQTT listener answers first: the streams belong to the account, not to
    a node, and a node just restarted may open its MQTT listener only once it has caught up
    with the cluster's JetStream state (seen: long after the others)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"edgetally-probe-{os.getpid()}", clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    if probe is not None:
        client.tls_set_context(client_context(probe))
    attempt = 0
    while True:
        node = cluster.nodes[attempt % len(cluster.nodes)]
        attempt += 1
        try:
            client.connect("127.0.0.1", node.mqtt_port, keepalive=10)
            break
        except OSError as err:
            if left() < 0.2:
                ports = ", ".join(str(n.mqtt_port) for n in cluster.nodes)
                raise BrokerError(f"no NATS MQTT listener ({ports}) accepted the probe: {err}") from err
            if attempt % len(cluster.nodes) == 0:
                time.sleep(_POLL_S)
    client.loop_start()
    try:
        while not client.is_connected():
            left()
            time.sleep(_POLL_S)
    finally:
        client.disconnect()
        client.loop_stop()


async def _consumers(cluster: NatsCluster, probe: ClientTls | None, left: Callable[[], float]) -> None:
    options: dict[str, object] = {"connect_timeout": 2, "max_reconnect_attempts": 2}
    if probe is not None:
        options["tls"] = client_context(probe)
    nc = await nats.connect(cluster.nats_urls, **options)
    try:
        js = nc.jetstream()
        while True:
            try:
                await ensure_consumers(js, replicas=len(cluster.nodes), ack_wait_s=cluster.ack_wait_s)
                return
            except (nats.errors.Error, TimeoutError) as err:
                log.debug("MQTT streams not there yet (%s)", err)
                left()
                await asyncio.sleep(_POLL_S)
    finally:
        await nc.close()
