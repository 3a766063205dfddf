"""Publishing a station's signed batches to the edge broker, as a tabulator does: QoS 1 on the
manual source's batch topic, over the devices' MQTT client (devices/connection.py), each batch
done only when its PUBACK arrives. TLS with the manual source's certificate for ``mqtts://``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from devices._exceptions import DeviceError
from devices.connection import ConnectOptions, KeepaliveWheel, connect
from devices.tls import DeviceTls, fleet_tls
from edgetally.entry.errors import SendFailed
from edgetally.entry.state import PendingBatch
from protocol import BrokerAddress, batch_topic
from protocol.tls import Role, ca_cert_path, client_tls

log = logging.getLogger(__name__)

CLIENT_PREFIX = "edgetally-entry-"


async def _publish(
    broker: BrokerAddress, keys: Path, election: str, batches: Sequence[PendingBatch],
    on_acked: Callable[[PendingBatch], None], timeout: float,
) -> None:
    by_device: dict[str, list[PendingBatch]] = {}
    for batch in batches:
        by_device.setdefault(batch.device, []).append(batch)
    wheel = KeepaliveWheel()
    try:
        for device, mine in by_device.items():
            tls = DeviceTls(fleet_tls(ca_cert_path(keys)), client_tls(keys, Role.DEVICE, device)) if broker.tls else None
            options = ConnectOptions(broker.host, broker.port, f"{CLIENT_PREFIX}{device}", timeout=timeout, tls=tls)
            conn = await connect(options, wheel)
            try:
                for batch in mine:
                    async with asyncio.timeout(timeout):
                        await conn.publish(batch_topic(election, device), batch.payload, qos=1)
                    on_acked(batch)
            finally:
                await conn.disconnect()
    finally:
        wheel.close()


def publish(
    broker: BrokerAddress, keys: Path, election: str, batches: Sequence[PendingBatch],
    on_acked: Callable[[PendingBatch], None], timeout: float = 10.0,
) -> None:
    """Publish ``batches`` in order; ``on_acked`` after each PUBACK. :class:`SendFailed` otherwise."""
    if not batches:
        return
    try:
        asyncio.run(_publish(broker, keys, election, batches, on_acked, timeout))
    except (DeviceError, OSError) as exc:
        raise SendFailed(f"the edge broker {broker.url} did not take the batch: {exc}") from exc
    except TimeoutError as exc:
        raise SendFailed(f"no PUBACK from {broker.url} within {timeout:.0f}s") from exc
