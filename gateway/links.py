"""What the gateway's two MQTT links share: client construction, status messages, backoff."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from protocol import gateway_status_topic

ONLINE = "online"
OFFLINE = "offline"


def new_client(
    client_id: str,
    *,
    clean_session: bool,
    manual_ack: bool = False,
    reconnect: bool = True,
    userdata: Any = None,
) -> mqtt.Client:
    """A paho 2.x client speaking MQTT 3.1.1. Creating it does no I/O.

    ``reconnect=False`` makes paho's network thread end when the connection drops, for
    links that replace the whole client instead.
    """
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        userdata=userdata,
        protocol=MQTTProtocolVersion.MQTTv311,
        manual_ack=manual_ack,
        reconnect_on_failure=reconnect,
    )


def status_payload(gateway_id: str, state: str, link: str) -> bytes:
    """The retained status message on ``protocol.gateway_status_topic(gateway_id)``."""
    data: dict[str, Any] = {"gateway": gateway_id, "link": link, "state": state}
    if state == ONLINE:
        data["since"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data["pid"] = os.getpid()
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def set_offline_will(client: mqtt.Client, gateway_id: str, link: str) -> None:
    client.will_set(
        gateway_status_topic(gateway_id),
        status_payload(gateway_id, OFFLINE, link),
        qos=1,
        retain=True,
    )


def publish_status(client: mqtt.Client, gateway_id: str, state: str, link: str) -> MQTTErrorCode:
    info = client.publish(
        gateway_status_topic(gateway_id),
        status_payload(gateway_id, state, link),
        qos=1,
        retain=True,
    )
    return info.rc


class Backoff:
    """Capped exponential backoff with jitter: each delay is uniform in [d/2, d], d doubling to the cap."""

    def __init__(self, initial: float, cap: float, *, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = self._next
        self._next = min(self.cap, self._next * 2)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._next = self.initial
