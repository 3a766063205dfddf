"""MQTT topic names and broker addresses. Pure string handling; no MQTT client here.

    edgetally/v1/{election}/{device}/batch     device -> edge broker; forwarded unchanged to the cloud
    edgetally/v1/{election}/{device}/status    device status, retained, and the device's last will
    edgetally/v1/{election}/{device}/receipt   cloud -> device (relayed by the gateway), retained
    edgetally/v1/{election}/{device}/command   cloud -> device (relayed by the gateway), NOT retained:
                                               repair requests (protocol/repair.py)
    edgetally/v1/_gateway/{gateway}/status     gateway status, retained, and its last will
    edgetally/v1/_gateway/{gateway}/bundle     gateway -> cloud broker: several envelopes in one
                                               message (protocol/bundle.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from protocol._errors import BadTopic, InvalidValue, shown
from protocol.election import ID_PATTERN

PREFIX = "edgetally/v1"
# Where the cloud's rules may republish (cloud/engine: ``republish``): outside EdgeTally's own
# topics, and the one tree a locked-down cloud broker's ACL lets a cloud worker write.
RULES_OUTPUT_ROOT = "edgetally-out"
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


class DeviceTopicKind(StrEnum):
    BATCH = "batch"
    STATUS = "status"
    RECEIPT = "receipt"
    COMMAND = "command"


BATCH_FILTER = f"{PREFIX}/+/+/{DeviceTopicKind.BATCH}"
RECEIPT_FILTER = f"{PREFIX}/+/+/{DeviceTopicKind.RECEIPT}"
STATUS_FILTER = f"{PREFIX}/+/+/{DeviceTopicKind.STATUS}"
COMMAND_FILTER = f"{PREFIX}/+/+/{DeviceTopicKind.COMMAND}"
GATEWAY_SEGMENT = "_gateway"  # not an identifier, so never mistaken for an election
GATEWAY_STATUS_FILTER = f"{PREFIX}/{GATEWAY_SEGMENT}/+/status"
GATEWAY_BUNDLE_FILTER = f"{PREFIX}/{GATEWAY_SEGMENT}/+/bundle"


def device_topic(election: str, device: str, kind: DeviceTopicKind) -> str:
    return f"{PREFIX}/{election}/{device}/{kind}"


def batch_topic(election: str, device: str) -> str:
    return device_topic(election, device, DeviceTopicKind.BATCH)


def status_topic(election: str, device: str) -> str:
    return device_topic(election, device, DeviceTopicKind.STATUS)


def receipt_topic(election: str, device: str) -> str:
    return device_topic(election, device, DeviceTopicKind.RECEIPT)


def command_topic(election: str, device: str) -> str:
    return device_topic(election, device, DeviceTopicKind.COMMAND)


def gateway_status_topic(gateway: str) -> str:
    return f"{PREFIX}/{GATEWAY_SEGMENT}/{gateway}/status"


def gateway_bundle_topic(gateway: str) -> str:
    return f"{PREFIX}/{GATEWAY_SEGMENT}/{gateway}/bundle"


def parse_gateway_topic(topic: str, kind: str) -> str | None:
    """The gateway id of ``edgetally/v1/_gateway/{gateway}/{kind}``; ``None`` for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != GATEWAY_SEGMENT:
        return None
    if parts[4] != kind or not ID_PATTERN.match(parts[3]):
        return None
    return parts[3]


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    election: str
    device: str
    kind: DeviceTopicKind


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """Split a device topic; ``None`` for anything that is not one.

    The election and device segments must be valid ids (``_gateway/...`` is not, by design).
    """
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    try:
        kind = DeviceTopicKind(parts[4])
    except ValueError:
        return None
    if not (ID_PATTERN.match(parts[2]) and ID_PATTERN.match(parts[3])):
        return None
    return DeviceTopic(parts[2], parts[3], kind)


def parse_batch_topic(topic: str) -> DeviceTopic:
    """The election and device of a batch topic; :class:`BadTopic` for any other topic."""
    parsed = parse_device_topic(topic)
    if parsed is None or parsed.kind is not DeviceTopicKind.BATCH:
        raise BadTopic(
            f"topic {shown(topic)} is not a device batch topic ({PREFIX}/<election>/<device>/batch)"
        )
    return parsed


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False  # mqtts://: the client verifies the broker and shows its own certificate

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_urls(text: str) -> tuple[BrokerAddress, ...]:
    """Comma-separated addresses of ONE broker cluster (any node serves every client; a client
    connects to the next when one is down), e.g. ``mqtts://127.0.0.1:1,mqtts://127.0.0.1:2``.
    All must share one scheme: a cluster is locked or plain as a whole."""
    addresses = tuple(parse_broker_url(part.strip()) for part in text.split(",") if part.strip())
    if not addresses:
        raise InvalidValue(f"broker URL {text!r} names no address")
    if len({a.tls for a in addresses}) > 1:
        raise InvalidValue(f"broker URLs {text!r} mix mqtts:// and mqtt://: one cluster is locked or plain")
    return addresses


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtts://host:port`` (TLS, port defaults to 8883), ``mqtt://host:port`` or
    ``tcp://host:port`` (plain TCP, port defaults to 1883), or ``host[:port]`` (plain).

    IPv6 literals go in brackets (``mqtt://[::1]:1883``). Credentials, paths and queries are
    refused rather than silently ignored: nothing here would use them.
    """
    text = url if "://" in url else f"mqtt://{url}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # bad port, unbalanced IPv6 brackets
        raise InvalidValue(f"broker URL {url!r} is not valid: {exc}") from exc
    if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
        raise InvalidValue(f"broker URL {url!r} must look like mqtts://host:port or mqtt://host:port")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue(f"broker URL {url!r}: credentials in the URL are not supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidValue(f"broker URL {url!r}: a path, query or fragment is not supported")
    if port == 0:
        raise InvalidValue(f"broker URL {url!r}: port must be 1-65535, got 0")
    tls = parts.scheme == "mqtts"
    default = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    return BrokerAddress(parts.hostname, default if port is None else port, tls)
