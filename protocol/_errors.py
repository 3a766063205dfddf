"""Errors raised while decoding and verifying EdgeTally wire messages.

Every error carries a machine-readable :class:`RejectReason` (stored next to a
quarantined or rejected message) and a human sentence naming the problem.

    ProtocolError                     root: anything wrong with a message or key file
    ├── PayloadTooLarge               oversize   payload above the configured limit
    ├── MalformedJSON                 malformed_json  not UTF-8 JSON, or not an object
    ├── SchemaError                   (abstract) a field is wrong
    │   ├── MissingField              missing_field
    │   ├── ExtraField                extra_field
    │   ├── WrongType                 wrong_type
    │   ├── InvalidValue              invalid_value  negative count, bad id, bad timestamp, …
    │   ├── NonCanonicalBody          non_canonical  body, envelope or receipt not in canonical JSON form
    │   ├── UnknownElection           unknown_election
    │   ├── UnknownContest            unknown_contest
    │   └── UnknownChoice             unknown_choice
    ├── BadBase64                     bad_base64
    ├── UnknownDevice                 unknown_device  device not in the registry
    ├── WrongPrecinct                 wrong_precinct  body names another precinct than the registry
    ├── BadTopic                      bad_topic   a message on a topic that is not a device batch topic
    ├── TopicMismatch                 topic_mismatch  a device's batch on another device's topic
    ├── WrongKey                      wrong_key   kid is not the device's registered key
    ├── BadSignature                  bad_signature
    ├── EntryNotAllowed               entry_not_allowed  a tabulator's body carries the manual ``entry``
    ├── MissingEntry                  missing_entry  a manual source's body without its ``entry``
    ├── BadOperatorSignature          bad_operator_signature  an operator's or supervisor's signature
    │                                             of the sheet does not verify (unknown, wrong kid or role)
    ├── NotDoubleKeyed                not_double_keyed  fewer than two distinct operators and no
    │                                             supervisor resolution
    ├── KeyFileError                  key_file    unreadable key or registry file
    ├── BadBundle                     bad_bundle  an uplink bundle whose framing is corrupt; its
    │                                             subclasses are in protocol/bundle.py
    └── ElectionModelError            election_model  an election definition that does not hold together
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class RejectReason(StrEnum):
    """Why a message was refused. Values are stable: they are stored in databases."""

    OVERSIZE = "oversize"
    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    NON_CANONICAL = "non_canonical"
    UNKNOWN_ELECTION = "unknown_election"
    UNKNOWN_CONTEST = "unknown_contest"
    UNKNOWN_CHOICE = "unknown_choice"
    BAD_BASE64 = "bad_base64"
    UNKNOWN_DEVICE = "unknown_device"
    WRONG_PRECINCT = "wrong_precinct"
    BAD_TOPIC = "bad_topic"
    TOPIC_MISMATCH = "topic_mismatch"
    WRONG_KEY = "wrong_key"
    BAD_SIGNATURE = "bad_signature"
    KEY_FILE = "key_file"
    ELECTION_MODEL = "election_model"
    BAD_BUNDLE = "bad_bundle"  # an uplink bundle whose framing cannot be decoded (protocol/bundle.py)
    # Manual entry (protocol/entry.py, docs/protocol.md section 16):
    ENTRY_NOT_ALLOWED = "entry_not_allowed"  # a tabulator's body carries the manual "entry" field
    MISSING_ENTRY = "missing_entry"  # a manual source's body without its "entry" field
    BAD_OPERATOR_SIGNATURE = "bad_operator_signature"  # an operator's/supervisor's signature fails
    NOT_DOUBLE_KEYED = "not_double_keyed"  # < 2 distinct operators and no supervisor resolution
    # Stateful reasons, decided by whoever holds the history (cloud ledger):
    CONFLICT = "conflict"  # another body already holds this (election, device, seq)
    BROKEN_CHAIN = "broken_chain"  # prev does not match the hash of seq - 1
    AFTER_FINAL = "after_final"  # seq above the device's final batch


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: messages are stored, payloads can be 64 KiB."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class ProtocolError(Exception):
    """Root of every protocol error. ``reason`` is stable, ``str(err)`` is for people."""

    reason: RejectReason = RejectReason.MALFORMED_JSON

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PayloadTooLarge(ProtocolError):
    reason = RejectReason.OVERSIZE


class MalformedJSON(ProtocolError):
    reason = RejectReason.MALFORMED_JSON


class SchemaError(ProtocolError):
    reason = RejectReason.INVALID_VALUE


class MissingField(SchemaError):
    reason = RejectReason.MISSING_FIELD


class ExtraField(SchemaError):
    reason = RejectReason.EXTRA_FIELD


class WrongType(SchemaError):
    reason = RejectReason.WRONG_TYPE


class InvalidValue(SchemaError):
    reason = RejectReason.INVALID_VALUE


class NonCanonicalBody(SchemaError):
    reason = RejectReason.NON_CANONICAL


class UnknownElection(SchemaError):
    reason = RejectReason.UNKNOWN_ELECTION


class UnknownContest(SchemaError):
    reason = RejectReason.UNKNOWN_CONTEST


class UnknownChoice(SchemaError):
    reason = RejectReason.UNKNOWN_CHOICE


class BadBase64(ProtocolError):
    reason = RejectReason.BAD_BASE64


class UnknownDevice(ProtocolError):
    reason = RejectReason.UNKNOWN_DEVICE


class WrongPrecinct(ProtocolError):
    reason = RejectReason.WRONG_PRECINCT


class BadTopic(ProtocolError):
    reason = RejectReason.BAD_TOPIC


class TopicMismatch(ProtocolError):
    reason = RejectReason.TOPIC_MISMATCH


class WrongKey(ProtocolError):
    reason = RejectReason.WRONG_KEY


class BadSignature(ProtocolError):
    reason = RejectReason.BAD_SIGNATURE


class EntryNotAllowed(ProtocolError):
    reason = RejectReason.ENTRY_NOT_ALLOWED


class MissingEntry(ProtocolError):
    reason = RejectReason.MISSING_ENTRY


class BadOperatorSignature(ProtocolError):
    reason = RejectReason.BAD_OPERATOR_SIGNATURE


class NotDoubleKeyed(ProtocolError):
    reason = RejectReason.NOT_DOUBLE_KEYED


class KeyFileError(ProtocolError):
    reason = RejectReason.KEY_FILE


class BadBundle(ProtocolError):
    """A gateway's uplink bundle that cannot be decoded (protocol/bundle.py has the subclasses)."""

    reason = RejectReason.BAD_BUNDLE


class ElectionModelError(ProtocolError):
    reason = RejectReason.ELECTION_MODEL


def require_exact_fields(data: Mapping[str, Any], expected: frozenset[str], where: str) -> None:
    if data.keys() == expected:  # the usual case: one set comparison, nothing to report
        return
    missing = sorted(expected - data.keys())
    if missing:
        raise MissingField(f"{where} is missing field(s): {', '.join(missing)}")
    extra = sorted(data.keys() - expected)
    if extra:
        raise ExtraField(f"{where} has unexpected field(s): {', '.join(extra)}")
