"""MQTT topic names and broker addresses. Pure string handling; no MQTT client here.

    edgetally/v1/{election}/{device}/batch     device -> edge broker; forwarded unchanged to the cloud
    edgetally/v1/{election}/{device}/status    device status, retained, and the device's last will
    edgetally/v1/{election}/{device}/receipt   cloud -> device (relayed by the gateway), retained
    edgetally/v1/_gateway/{gateway}/status     gateway status, retained, and its last will
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from protocol._errors import InvalidValue

PREFIX = "edgetally/v1"


class DeviceTopicKind(StrEnum):
    BATCH = "batch"
    STATUS = "status"
    RECEIPT = "receipt"


BATCH_FILTER = f"{PREFIX}/+/+/{DeviceTopicKind.BATCH}"
RECEIPT_FILTER = f"{PREFIX}/+/+/{DeviceTopicKind.RECEIPT}"
STATUS_FILTER = f"{PREFIX}/+/+/{DeviceTopicKind.STATUS}"


def device_topic(election: str, device: str, kind: DeviceTopicKind) -> str:
    return f"{PREFIX}/{election}/{device}/{kind}"


def batch_topic(election: str, device: str) -> str:
    return device_topic(election, device, DeviceTopicKind.BATCH)


def status_topic(election: str, device: str) -> str:
    return device_topic(election, device, DeviceTopicKind.STATUS)


def receipt_topic(election: str, device: str) -> str:
    return device_topic(election, device, DeviceTopicKind.RECEIPT)


def gateway_status_topic(gateway: str) -> str:
    return f"{PREFIX}/_gateway/{gateway}/status"


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    election: str
    device: str
    kind: DeviceTopicKind


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """Split a device topic; ``None`` for anything that is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    try:
        kind = DeviceTopicKind(parts[4])
    except ValueError:
        return None
    if parts[2].startswith("_"):
        return None
    return DeviceTopic(parts[2], parts[3], kind)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` (port defaults to 1883) or ``host:port``."""
    text = url if "://" in url else f"mqtt://{url}"
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise InvalidValue(f"broker URL {url!r} must look like mqtt://host:port")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise InvalidValue(f"broker URL {url!r} has a bad port") from exc
    return BrokerAddress(parts.hostname, port)
