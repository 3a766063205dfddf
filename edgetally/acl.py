"""Mosquitto ACL files generated from the registry: each client may touch only its own topics.

The usernames are the clients' certificate identities (:func:`protocol.pki.identity`; the
broker takes them from the certificate with ``use_identity_as_username``). Per broker:

- **edge** (devices and gateways): a device publishes only its own ``batch`` and ``status`` and
  reads only its own ``receipt`` and ``command``; a gateway reads its election's batches and
  statuses, writes their receipts and commands, and its own gateway status.
- **cloud** (gateways and cloud workers): a gateway forwards batches and its bundles and status,
  and reads receipts and commands to relay them down; a cloud worker reads batches, bundles
  and gateway statuses and writes receipts and commands, and what its rules republish (under
  ``edgetally-out/``, protocol.topics.RULES_OUTPUT_ROOT).

- **monitors** (on both, only those named): read every EdgeTally topic, write nothing: a
  dashboard or an auditor's tap that cannot change what it watches (and the rules' outputs).

Anyone else, and anything not listed, gets nothing: Mosquitto denies what no line allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum

from protocol import Registry
from protocol.tls import Role, identity
from protocol.topics import (
    PREFIX,
    RULES_OUTPUT_ROOT,
    DeviceTopicKind,
    device_topic,
    gateway_bundle_topic,
    gateway_status_topic,
)


class BrokerKind(StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


Rule = tuple[str, str]  # ("read" | "write", MQTT topic filter)


def _user(name: str, rules: Iterable[Rule]) -> list[str]:
    return [f"user {name}", *(f"topic {access} {topic}" for access, topic in rules), ""]


def acl_text(
    registry: Registry | Sequence[Registry],
    kind: BrokerKind,
    *,
    gateways: Iterable[str],
    clouds: Iterable[str] = (),
    monitors: Iterable[str] = (),
) -> str:
    """The Mosquitto ACL file of a ``kind`` broker serving ``registry``'s election (or each of
    several elections': a gateway then carries all of them)."""
    registries = _registries(registry)
    ids = ", ".join(r.election.id for r in registries)
    lines = [f"# EdgeTally {kind.value} broker ACL for election {ids}: generated, do not edit", ""]
    for name, rules in broker_rules(registries, kind, gateways=gateways, clouds=clouds, monitors=monitors).items():
        lines += _user(name, rules)
    return "\n".join(lines)


def _registries(registry: Registry | Sequence[Registry]) -> list[Registry]:
    return [registry] if isinstance(registry, Registry) else list(registry)


def broker_rules(
    registry: Registry | Sequence[Registry],
    kind: BrokerKind,
    *,
    gateways: Iterable[str],
    clouds: Iterable[str] = (),
    monitors: Iterable[str] = (),
) -> dict[str, list[Rule]]:
    """Each identity's topics on a ``kind`` broker: the one source of the Mosquitto ACL and of
    the NATS cluster's permissions (:mod:`edgetally.nats`).

    Several elections: each device keeps to its own election's topics, each gateway gets every
    election's. A cloud worker reads and answers every election's batches (``+`` for the
    election), so that an election added to a running cloud (``cloud elections add``) needs no
    new ACL on the cloud broker; its gateways do need one naming it."""
    registries = _registries(registry)
    gateways, clouds = sorted(gateways), sorted(clouds)
    users: dict[str, list[Rule]] = {}
    for monitor in sorted(monitors):
        users[identity(Role.MONITOR, monitor)] = [("read", f"{PREFIX}/#"), ("read", f"{RULES_OUTPUT_ROOT}/#")]
    if kind is BrokerKind.EDGE:
        for reg in registries:
            election = reg.election.id
            for device in sorted(reg.devices):
                users.setdefault(identity(Role.DEVICE, device), []).extend([
                    ("write", device_topic(election, device, DeviceTopicKind.BATCH)),
                    ("write", device_topic(election, device, DeviceTopicKind.STATUS)),
                    ("read", device_topic(election, device, DeviceTopicKind.RECEIPT)),
                    ("read", device_topic(election, device, DeviceTopicKind.COMMAND)),
                ])  # fmt: skip
        for gateway in gateways:
            for reg in registries:
                every = f"{PREFIX}/{reg.election.id}/+"
                users.setdefault(identity(Role.GATEWAY, gateway), []).extend([
                    ("read", f"{every}/{DeviceTopicKind.BATCH}"),
                    ("read", f"{every}/{DeviceTopicKind.STATUS}"),
                    ("write", f"{every}/{DeviceTopicKind.RECEIPT}"),
                    ("write", f"{every}/{DeviceTopicKind.COMMAND}"),
                ])  # fmt: skip
            users[identity(Role.GATEWAY, gateway)].append(("write", gateway_status_topic(gateway)))
        return users
    for gateway in gateways:
        for reg in registries:
            every = f"{PREFIX}/{reg.election.id}/+"
            users.setdefault(identity(Role.GATEWAY, gateway), []).extend([
                ("write", f"{every}/{DeviceTopicKind.BATCH}"),
                ("read", f"{every}/{DeviceTopicKind.RECEIPT}"),
                ("read", f"{every}/{DeviceTopicKind.COMMAND}"),
            ])  # fmt: skip
        users[identity(Role.GATEWAY, gateway)] += [
            ("write", gateway_bundle_topic(gateway)),
            ("write", gateway_status_topic(gateway)),
        ]
    every = f"{PREFIX}/+/+"
    for cloud in clouds:
        users[identity(Role.CLOUD, cloud)] = [
            ("read", f"{every}/{DeviceTopicKind.BATCH}"),
            ("read", gateway_bundle_topic("+")),
            ("read", gateway_status_topic("+")),
            ("write", f"{every}/{DeviceTopicKind.RECEIPT}"),
            ("write", f"{every}/{DeviceTopicKind.COMMAND}"),
            ("write", f"{RULES_OUTPUT_ROOT}/#"),
        ]  # fmt: skip
    return users
