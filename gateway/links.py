"""What the gateway's two MQTT links share: client construction, status messages, backoff."""

from __future__ import annotations

import random
import threading
import weakref
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from gateway._exceptions import ConfigError
from gateway.status import link_payload
from protocol import ProtocolError, gateway_status_topic
from protocol.gateway_status import OFFLINE, ONLINE
from protocol.tls import ClientTls, client_context

__all__ = [
    "OFFLINE",
    "ONLINE",
    "Backoff",
    "is_connected",
    "new_client",
    "publish_status",
    "set_offline_will",
    "status_payload",
]


def new_client(
    client_id: str,
    *,
    clean_session: bool,
    manual_ack: bool = False,
    reconnect: bool = True,
    userdata: Any = None,
    tls: ClientTls | None = None,
) -> mqtt.Client:
    """A paho 2.x client speaking MQTT 3.1.1. Creating it does no I/O (``tls``: the context
    :func:`check_tls` loaded at start).

    ``reconnect=False`` makes paho's network thread end when the connection drops, for
    links that replace the whole client instead.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        userdata=userdata,
        protocol=MQTTProtocolVersion.MQTTv311,
        manual_ack=manual_ack,
        reconnect_on_failure=reconnect,
    )
    if tls is not None:
        client.tls_set_context(client_context(tls))
    with _newest_lock:
        _newest[client_id] = weakref.ref(client)
    return client


def check_tls(files: ClientTls) -> None:
    """Load the gateway's TLS context now (the service, at start): a bad certificate stops it, named."""
    try:
        client_context(files)
    except ProtocolError as exc:
        raise ConfigError(f"--pki: {exc}") from exc


# The newest client made for each client id in this process (a link that replaces its client
# makes a new one): lets the status reporter say whether a link is up without reaching into it.
_newest: dict[str, weakref.ref[mqtt.Client]] = {}
_newest_lock = threading.Lock()


def is_connected(client_id: str) -> bool | None:
    """Whether the newest client made for ``client_id`` is connected; ``None`` if there is none."""
    with _newest_lock:
        ref = _newest.get(client_id)
    client = None if ref is None else ref()
    return None if client is None else bool(client.is_connected())


def status_payload(gateway_id: str, state: str, link: str) -> bytes:
    """A status from one link's point of view (its hello, goodbye or last will).

    The periodic full status comes from :class:`gateway.status.StatusReporter`; both use the
    format of :class:`protocol.gateway_status.GatewayStatus` on
    ``protocol.gateway_status_topic(gateway_id)``.
    """
    return link_payload(gateway_id, state, link)


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
