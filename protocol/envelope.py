"""The envelope: signed body bytes plus signature and key id, and its verification.

Wire form (canonical JSON)::

    {"body": "<the exact body bytes as a JSON string>", "kid": "<16 hex>", "sig": "<base64>"}

``sig`` is Ed25519 over the UTF-8 bytes of ``body``. Verification checks the signature over
exactly those bytes; nothing is re-serialised before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import canonical
from protocol._errors import (
    BadSignature,
    InvalidValue,
    MalformedJSON,
    NonCanonicalBody,
    PayloadTooLarge,
    TopicMismatch,
    WrongKey,
    WrongPrecinct,
    WrongType,
    require_exact_fields,
    shown,
)
from protocol.batch import BatchBody, check_against_election, parse_body
from protocol.entry import check_entry
from protocol.keys import SIGNATURE_BYTES, SigningKey, b64decode_strict, b64encode
from protocol.limits import DEFAULT_MAX_BYTES
from protocol.registry import Registry

ENVELOPE_FIELDS = frozenset({"body", "kid", "sig"})


@dataclass(frozen=True, slots=True)
class Envelope:
    body: bytes
    sig: bytes
    kid: str

    def to_bytes(self) -> bytes:
        return canonical.dumps(
            {"body": self.body.decode("utf-8"), "kid": self.kid, "sig": b64encode(self.sig)}
        )


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    """An envelope whose signature, key and body were all checked against a registry."""

    payload: bytes
    envelope: Envelope
    body: BatchBody
    body_hash: str


def seal(body: BatchBody, key: SigningKey) -> Envelope:
    raw = body.to_bytes()
    return Envelope(body=raw, sig=key.sign(raw), kid=key.kid)


def body_hash(body_bytes: bytes) -> str:
    return canonical.sha256_hex(body_bytes)


def parse_envelope(payload: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Structural parse: size, JSON, exact fields, types, base64. No key is consulted."""
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(payload)} bytes, the limit is {max_bytes}")
    data = canonical.loads(payload, what="envelope")
    if not isinstance(data, dict):
        raise MalformedJSON(f"envelope must be a JSON object, got {type(data).__name__}")
    require_exact_fields(data, ENVELOPE_FIELDS, "envelope")
    for name in ("body", "kid", "sig"):
        if not isinstance(data[name], str):
            raise WrongType(f"envelope {name} must be a string, got {type(data[name]).__name__}")
    if canonical.dumps(data) != payload:
        raise NonCanonicalBody("envelope is not canonical JSON (sorted keys, no whitespace)")
    sig = b64decode_strict(data["sig"], what="envelope sig")
    if len(sig) != SIGNATURE_BYTES:
        raise InvalidValue(f"envelope sig must be {SIGNATURE_BYTES} bytes, got {len(sig)}")
    return Envelope(body=data["body"].encode("utf-8"), sig=sig, kid=data["kid"])


def verify(
    payload: bytes,
    registry: Registry,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    topic_device: str | None = None,
    topic_election: str | None = None,
) -> VerifiedBatch:
    """Decode and verify ``payload``; raise a :class:`ProtocolError` subclass naming the problem.

    Order: size, envelope structure, body structure, device and key, signature, then the
    body against the election, then a manual source's ``entry`` (protocol/entry.py). ``topic_device`` and ``topic_election``, when given, must match
    the body's device and election (a batch published on another device's topic is refused).
    """
    envelope = parse_envelope(payload, max_bytes=max_bytes)
    body = parse_body(envelope.body)
    entry = registry.lookup(body.device)
    if envelope.kid != entry.kid:
        raise WrongKey(
            f"device {body.device!r} signs with kid {entry.kid}, envelope says {shown(envelope.kid)}"
        )
    if not entry.public_key.verify(envelope.sig, envelope.body):
        raise BadSignature(f"signature of device {body.device!r} seq {body.seq} does not verify")
    if topic_device is not None and topic_device != body.device:
        raise TopicMismatch(
            f"batch of device {body.device!r} arrived on the topic of device {topic_device!r}"
        )
    if topic_election is not None and topic_election != body.election:
        raise TopicMismatch(
            f"batch of election {body.election!r} arrived on a topic of election {shown(topic_election)}"
        )
    if body.precinct != entry.precinct:
        raise WrongPrecinct(
            f"device {body.device!r} belongs to precinct {entry.precinct!r}, body says {body.precinct!r}"
        )
    check_against_election(body, registry.election)
    if body.entry is not None or entry.source != "tabulator":
        check_entry(body, entry, registry)  # docs/protocol.md section 16
    return VerifiedBatch(payload=payload, envelope=envelope, body=body, body_hash=body_hash(envelope.body))
