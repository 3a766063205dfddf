"""EdgeTally wire format: batch bodies, envelopes, keys, registry, topics, receipts.

No I/O beyond reading and writing key and registry files; no MQTT. See docs/protocol.md.

The names below are imported from their modules on first use (PEP 562 ``__getattr__``), so
that a command needing only a topic parser or an error class does not import the signature
library and the batch schema: ``edgetally gateway buffer stats`` starts in a fraction of a
second. ``tests/protocol/test_package.py`` checks that every name resolves to its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocol._errors import (
        BadBase64,
        BadBundle,
        BadOperatorSignature,
        BadSignature,
        BadTopic,
        ElectionModelError,
        EntryNotAllowed,
        ExtraField,
        InvalidValue,
        KeyFileError,
        MalformedJSON,
        MissingEntry,
        MissingField,
        NonCanonicalBody,
        NotDoubleKeyed,
        PayloadTooLarge,
        ProtocolError,
        RejectReason,
        SchemaError,
        TopicMismatch,
        UnknownChoice,
        UnknownContest,
        UnknownDevice,
        UnknownElection,
        WrongKey,
        WrongPrecinct,
        WrongType,
    )
    from protocol.batch import BatchBody, Totals, check_against_election, parse_body
    from protocol.canonical import GENESIS_HASH, sha256_hex
    from protocol.election import Choice, Contest, Election, Unit
    from protocol.envelope import (
        Envelope,
        VerifiedBatch,
        body_hash,
        parse_envelope,
        seal,
        verify,
    )
    from protocol.keys import PublicKey, SigningKey
    from protocol.limits import DEFAULT_MAX_BYTES
    from protocol.receipt import Receipt
    from protocol.registry import DeviceEntry, Registry, load_signing_key, provision
    from protocol.repair import RepairRequest, missing_ranges
    from protocol.topics import (
        BATCH_FILTER,
        COMMAND_FILTER,
        GATEWAY_BUNDLE_FILTER,
        GATEWAY_STATUS_FILTER,
        RECEIPT_FILTER,
        BrokerAddress,
        DeviceTopic,
        DeviceTopicKind,
        batch_topic,
        command_topic,
        gateway_bundle_topic,
        gateway_status_topic,
        parse_batch_topic,
        parse_broker_url,
        parse_broker_urls,
        parse_device_topic,
        parse_gateway_topic,
        receipt_topic,
        status_topic,
    )

# module -> the names it gives the package
_MODULES: dict[str, tuple[str, ...]] = {
    "protocol._errors": (
        "BadBase64",
        "BadBundle",
        "BadOperatorSignature",
        "BadSignature",
        "BadTopic",
        "ElectionModelError",
        "EntryNotAllowed",
        "ExtraField",
        "InvalidValue",
        "KeyFileError",
        "MalformedJSON",
        "MissingEntry",
        "MissingField",
        "NonCanonicalBody",
        "NotDoubleKeyed",
        "PayloadTooLarge",
        "ProtocolError",
        "RejectReason",
        "SchemaError",
        "TopicMismatch",
        "UnknownChoice",
        "UnknownContest",
        "UnknownDevice",
        "UnknownElection",
        "WrongKey",
        "WrongPrecinct",
        "WrongType",
    ),
    "protocol.batch": (
        "BatchBody",
        "Totals",
        "check_against_election",
        "parse_body",
    ),
    "protocol.canonical": (
        "GENESIS_HASH",
        "sha256_hex",
    ),
    "protocol.election": (
        "Choice",
        "Contest",
        "Election",
        "Unit",
    ),
    "protocol.envelope": (
        "Envelope",
        "VerifiedBatch",
        "body_hash",
        "parse_envelope",
        "seal",
        "verify",
    ),
    "protocol.limits": ("DEFAULT_MAX_BYTES",),
    "protocol.keys": (
        "PublicKey",
        "SigningKey",
    ),
    "protocol.receipt": (
        "Receipt",
    ),
    "protocol.registry": (
        "DeviceEntry",
        "Registry",
        "load_signing_key",
        "provision",
    ),
    "protocol.repair": (
        "RepairRequest",
        "missing_ranges",
    ),
    "protocol.topics": (
        "BATCH_FILTER",
        "COMMAND_FILTER",
        "GATEWAY_BUNDLE_FILTER",
        "GATEWAY_STATUS_FILTER",
        "RECEIPT_FILTER",
        "BrokerAddress",
        "DeviceTopic",
        "DeviceTopicKind",
        "batch_topic",
        "command_topic",
        "gateway_bundle_topic",
        "gateway_status_topic",
        "parse_batch_topic",
        "parse_broker_url",
        "parse_broker_urls",
        "parse_device_topic",
        "parse_gateway_topic",
        "receipt_topic",
        "status_topic",
    ),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'protocol' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "BATCH_FILTER",
    "COMMAND_FILTER",
    "DEFAULT_MAX_BYTES",
    "GATEWAY_BUNDLE_FILTER",
    "GATEWAY_STATUS_FILTER",
    "GENESIS_HASH",
    "RECEIPT_FILTER",
    "BadBase64",
    "BadBundle",
    "BadOperatorSignature",
    "BadSignature",
    "BadTopic",
    "BatchBody",
    "BrokerAddress",
    "Choice",
    "Contest",
    "DeviceEntry",
    "DeviceTopic",
    "DeviceTopicKind",
    "Election",
    "ElectionModelError",
    "EntryNotAllowed",
    "Envelope",
    "ExtraField",
    "InvalidValue",
    "KeyFileError",
    "MalformedJSON",
    "MissingEntry",
    "MissingField",
    "NonCanonicalBody",
    "NotDoubleKeyed",
    "PayloadTooLarge",
    "ProtocolError",
    "PublicKey",
    "Receipt",
    "Registry",
    "RejectReason",
    "RepairRequest",
    "SchemaError",
    "SigningKey",
    "TopicMismatch",
    "Totals",
    "Unit",
    "UnknownChoice",
    "UnknownContest",
    "UnknownDevice",
    "UnknownElection",
    "VerifiedBatch",
    "WrongKey",
    "WrongPrecinct",
    "WrongType",
    "batch_topic",
    "body_hash",
    "check_against_election",
    "command_topic",
    "gateway_bundle_topic",
    "gateway_status_topic",
    "load_signing_key",
    "missing_ranges",
    "parse_batch_topic",
    "parse_body",
    "parse_broker_url",
    "parse_broker_urls",
    "parse_device_topic",
    "parse_envelope",
    "parse_gateway_topic",
    "provision",
    "receipt_topic",
    "seal",
    "sha256_hex",
    "status_topic",
    "verify",
]
