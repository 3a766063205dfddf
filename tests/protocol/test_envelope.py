"""Sealing and verifying envelopes; every decoding reject with its type and a message naming it.

Body-level rejects are built with ``signed()``: the bad body carries a valid signature of
a registered key, so the test proves the body check refuses it, not the signature check.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from protocol import (
    DEFAULT_MAX_BYTES,
    BadBase64,
    BadSignature,
    Envelope,
    ExtraField,
    InvalidValue,
    MalformedJSON,
    MissingField,
    NonCanonicalBody,
    PayloadTooLarge,
    ProtocolError,
    RejectReason,
    TopicMismatch,
    Totals,
    UnknownChoice,
    UnknownContest,
    UnknownDevice,
    UnknownElection,
    WrongKey,
    WrongPrecinct,
    WrongType,
    body_hash,
    canonical,
    parse_envelope,
    seal,
    verify,
)
from protocol.batch import MAX_COUNT
from protocol.keys import b64encode
from tests.protocol.builders import (
    COUNTS,
    DEVICE,
    KEYS,
    OUTSIDER_KEY,
    REGISTRY,
    body_mapping,
    envelope_bytes,
    make_body,
    make_final_body,
    payload,
    signed,
    signed_mapping,
)

# -- the happy path ---------------------------------------------------------------------


def test_seal_signs_the_exact_body_bytes_with_the_device_kid() -> None:
    body = make_body()
    envelope = seal(body, KEYS[DEVICE])
    assert envelope.body == body.to_bytes()
    assert envelope.kid == KEYS[DEVICE].kid
    assert KEYS[DEVICE].public.verify(envelope.sig, body.to_bytes())


def test_envelope_bytes_embed_the_body_as_a_json_string() -> None:
    envelope = seal(make_body(), KEYS[DEVICE])
    raw = envelope.to_bytes()
    sig = b64encode(envelope.sig).encode()
    escaped = envelope.body.replace(b'"', b'\\"')
    assert raw == b'{"body":"' + escaped + b'","kid":"' + envelope.kid.encode() + b'","sig":"' + sig + b'"}'


def test_parse_envelope_gives_back_the_envelope() -> None:
    envelope = seal(make_final_body(), KEYS[DEVICE])
    assert parse_envelope(envelope.to_bytes()) == envelope


@pytest.mark.parametrize("body", [make_body(), make_final_body()], ids=["batch", "final"])
def test_verify_returns_the_checked_batch(body: Any) -> None:
    raw = payload(body)
    verified = verify(raw, REGISTRY, topic_device=DEVICE)
    assert verified.payload == raw
    assert verified.body == body
    assert verified.envelope == parse_envelope(raw)
    assert verified.body_hash == body_hash(body.to_bytes()) == canonical.sha256_hex(body.to_bytes())


def test_verify_accepts_a_payload_exactly_at_the_limit() -> None:
    raw = payload(make_body())
    assert verify(raw, REGISTRY, max_bytes=len(raw)).body == make_body()


# -- rejects ------------------------------------------------------------------------------


def _tampered_counts() -> bytes:
    """A valid envelope whose body counts were changed after signing."""
    envelope = seal(make_body(), KEYS[DEVICE])
    changed = make_body(counts={**COUNTS, "mayor": {"ada": 40, "bo": 3, "write-in": 1}}).to_bytes()
    return Envelope(body=changed, sig=envelope.sig, kid=envelope.kid).to_bytes()


def _sig(text: str) -> bytes:
    envelope = seal(make_body(), KEYS[DEVICE])
    return envelope_bytes(envelope.body.decode(), envelope.kid, text)


def _respelled_sig() -> bytes:
    """The right signature bytes, spelled with different unused bits in its last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    text = b64encode(seal(make_body(), KEYS[DEVICE]).sig)
    head, last = text[:-3], text[-3]
    respelled = head + alphabet[alphabet.index(last) ^ 1] + "=="
    assert base64.b64decode(respelled) == base64.b64decode(text)
    return _sig(respelled)


def _without(data: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != field}


def _counts(value: Any) -> dict[str, Any]:
    return {"mayor": {"ada": value, "bo": 3, "write-in": 1}, "measure-1": {"yes": 5, "no": 3}}


_ENVELOPE = canonical.loads(payload(make_body()))
_PRETTY_BODY = canonical.dumps(body_mapping()).replace(b",", b", ")
_UNSORTED_BODY = b'{"v":1,' + canonical.dumps(_without(body_mapping(), "v"))[1:]
_DUPLICATE_KEY_BODY = canonical.dumps(body_mapping())[:-1] + b',"v":1}'

# (id, payload, verify keyword arguments, error type, message fragment)
REJECTS: list[tuple[str, bytes, dict[str, Any], type[ProtocolError], str]] = [
    # size
    ("oversize default limit", b" " * (DEFAULT_MAX_BYTES + 1), {}, PayloadTooLarge,
     f"payload is {DEFAULT_MAX_BYTES + 1} bytes, the limit is {DEFAULT_MAX_BYTES}"),
    ("oversize configured limit", payload(make_body()), {"max_bytes": 100}, PayloadTooLarge,
     f"payload is {len(payload(make_body()))} bytes, the limit is 100"),
    # envelope structure
    ("malformed JSON", b'{"body":', {}, MalformedJSON, "envelope is not valid UTF-8 JSON"),
    ("not UTF-8", b'{"body":"\xff"}', {}, MalformedJSON, "envelope is not valid UTF-8 JSON"),
    ("empty payload", b"", {}, MalformedJSON, "envelope is not valid UTF-8 JSON"),
    ("envelope not an object", b"[1,2]", {}, MalformedJSON, "envelope must be a JSON object, got list"),
    ("envelope missing field", canonical.dumps(_without(_ENVELOPE, "sig")), {}, MissingField,
     "envelope is missing field(s): sig"),
    ("envelope extra field", canonical.dumps({**_ENVELOPE, "note": "hi"}), {}, ExtraField,
     "envelope has unexpected field(s): note"),
    ("envelope sig not a string", envelope_bytes(_ENVELOPE["body"], _ENVELOPE["kid"], 7), {}, WrongType,
     "envelope sig must be a string, got int"),
    ("envelope body not a string", envelope_bytes(body_mapping(), _ENVELOPE["kid"], _ENVELOPE["sig"]), {},
     WrongType, "envelope body must be a string, got dict"),
    ("non-canonical envelope", payload(make_body()).replace(b'","kid"', b'", "kid"'), {}, NonCanonicalBody,
     "envelope is not canonical JSON"),
    ("bad base64", _sig("not base64!"), {}, BadBase64, "envelope sig is not valid base64"),
    ("base64 without padding", _sig(_ENVELOPE["sig"].rstrip("=")), {}, BadBase64,
     "envelope sig is not valid base64"),
    ("non-canonical base64", _respelled_sig(), {}, BadBase64, "envelope sig is not in canonical base64 form"),
    ("signature too short", _sig(b64encode(bytes(63))), {}, InvalidValue, "envelope sig must be 64 bytes, got 63"),
    ("signature too long", _sig(b64encode(bytes(65))), {}, InvalidValue, "envelope sig must be 64 bytes, got 65"),
    # body structure (all correctly signed)
    ("body malformed JSON", signed("{not json"), {}, MalformedJSON, "batch body is not valid UTF-8 JSON"),
    ("body empty", signed(""), {}, MalformedJSON, "batch body is not valid UTF-8 JSON"),
    ("body not an object", signed("[1]"), {}, MalformedJSON, "batch body must be a JSON object, got list"),
    ("body missing field", signed_mapping(_without(body_mapping(), "counts")), {}, MissingField,
     "batch body is missing field(s): counts"),
    ("body extra field", signed_mapping(body_mapping(note="hi")), {}, ExtraField,
     "batch body has unexpected field(s): note"),
    ("string seq", signed_mapping(body_mapping(seq="1")), {}, WrongType, "seq must be an integer, got str '1'"),
    ("bool seq", signed_mapping(body_mapping(seq=True)), {}, WrongType, "seq must be an integer, got bool True"),
    ("float count", signed_mapping(body_mapping(counts=_counts(4.0))), {}, WrongType,
     "counts.mayor.ada must be an integer, got float 4.0"),
    ("non-integer count", signed_mapping(body_mapping(counts=_counts(4.5))), {}, WrongType,
     "counts.mayor.ada must be an integer, got float 4.5"),
    ("string count", signed_mapping(body_mapping(counts=_counts("4"))), {}, WrongType,
     "counts.mayor.ada must be an integer, got str '4'"),
    ("negative count", signed_mapping(body_mapping(counts=_counts(-1))), {}, InvalidValue,
     "counts.mayor.ada must be >= 0, got -1"),
    ("count above the maximum", signed_mapping(body_mapping(counts=_counts(MAX_COUNT + 1))), {}, InvalidValue,
     f"counts.mayor.ada must be <= {MAX_COUNT}"),
    ("negative ballots", signed_mapping(body_mapping(ballots=-5)), {}, InvalidValue, "ballots must be >= 0, got -5"),
    ("seq zero", signed_mapping(body_mapping(seq=0)), {}, InvalidValue, "seq must be >= 1, got 0"),
    ("counts not an object", signed_mapping(body_mapping(counts=[1])), {}, WrongType,
     "counts must be an object of contests, got list"),
    ("choices not an object", signed_mapping(body_mapping(counts={"mayor": [1]})), {}, WrongType,
     "counts.mayor must be an object of choices"),
    ("final not a bool", signed_mapping(body_mapping(final=0)), {}, WrongType, "final must be true or false, got int"),
    ("version 2", signed_mapping(body_mapping(v=2)), {}, InvalidValue, "v must be 1, got 2"),
    ("prev not hex", signed_mapping(body_mapping(seq=2, prev="AB" * 32)), {}, InvalidValue,
     "prev must be 64 lower-case hex digits"),
    ("prev of seq 1 not zeros", signed_mapping(body_mapping(prev="ab" * 32)), {}, InvalidValue,
     "prev of seq 1 must be 64 zeros"),
    ("issued_at not a timestamp", signed_mapping(body_mapping(issued_at="2026-11-03T20:01:00+00:00")), {},
     InvalidValue, "issued_at: '2026-11-03T20:01:00+00:00' is not a timestamp"),
    ("issued_at impossible date", signed_mapping(body_mapping(issued_at="2026-13-03T20:01:00Z")), {},
     InvalidValue, "is not a valid date and time"),
    ("device not an id", signed_mapping(body_mapping(device="a b")), {}, InvalidValue,
     "device 'a b' is not a valid id"),
    ("non-canonical body: whitespace", signed(_PRETTY_BODY), {}, NonCanonicalBody,
     "batch body is not canonical JSON"),
    ("non-canonical body: unsorted keys", signed(_UNSORTED_BODY), {}, NonCanonicalBody,
     "batch body is not canonical JSON"),
    ("non-canonical body: duplicate key", signed(_DUPLICATE_KEY_BODY), {}, NonCanonicalBody,
     "batch body is not canonical JSON"),
    ("totals on a non-final batch", signed_mapping(body_mapping(totals={"ballots": 8, "counts": COUNTS})), {},
     InvalidValue, "totals must be null on a non-final batch (seq 1), got dict"),
    ("missing totals on the final batch", signed_mapping(body_mapping(seq=2, prev="ab" * 32, final=True)), {},
     MissingField, "the final batch (seq 2) must carry cumulative totals, got null"),
    ("totals not an object", signed_mapping(body_mapping(seq=2, prev="ab" * 32, final=True, totals=[8])), {},
     WrongType, "totals must be an object on the final batch, got list"),
    ("totals missing counts", signed_mapping(body_mapping(seq=2, prev="ab" * 32, final=True, totals={"ballots": 8})),
     {}, MissingField, "totals is missing field(s): counts"),
    # keys and signature
    ("unknown device", payload(make_body(device="ghost-1"), OUTSIDER_KEY), {}, UnknownDevice,
     "device 'ghost-1' is not in the registry"),
    ("wrong key id", signed(make_body().to_bytes(), kid="0123456789abcdef"), {}, WrongKey,
     f"device 'north-p1-a' signs with kid {KEYS[DEVICE].kid}, envelope says '0123456789abcdef'"),
    ("bad signature: counts changed after signing", _tampered_counts(), {}, BadSignature,
     "signature of device 'north-p1-a' seq 1 does not verify"),
    ("bad signature: another device's key", signed(make_body().to_bytes(), KEYS["north-p1-b"], kid=KEYS[DEVICE].kid),
     {}, BadSignature, "signature of device 'north-p1-a' seq 1 does not verify"),
    # registry and election (all correctly signed)
    ("topic mismatch", payload(make_body()), {"topic_device": "north-p1-b"}, TopicMismatch,
     "batch of device 'north-p1-a' arrived on the topic of device 'north-p1-b'"),
    ("topic of another election", payload(make_body()), {"topic_device": DEVICE, "topic_election": "other-2026"},
     TopicMismatch, "batch of election 'tiny-2026' arrived on a topic of election 'other-2026'"),
    ("wrong precinct", payload(make_body(precinct="north-p2")), {}, WrongPrecinct,
     "device 'north-p1-a' belongs to precinct 'north-p1', body says 'north-p2'"),
    ("unknown election", payload(make_body(election="other-2026")), {}, UnknownElection,
     "body names election 'other-2026', the registry holds election 'tiny-2026'"),
    ("unknown contest", payload(make_body(counts={"dogcatcher": {"rex": 1}})), {}, UnknownContest,
     "counts: unknown contest 'dogcatcher'"),
    ("unknown choice", payload(make_body(counts={"mayor": {"zed": 1}})), {}, UnknownChoice,
     "counts: contest 'mayor' has no choice 'zed'"),
    ("unknown choice in totals",
     payload(make_final_body(totals=Totals(1, {"measure-1": {"maybe": 1}}))), {}, UnknownChoice,
     "totals.counts: contest 'measure-1' has no choice 'maybe'"),
]


@pytest.mark.parametrize(
    ("raw", "kwargs", "error", "message"), [r[1:] for r in REJECTS], ids=[r[0] for r in REJECTS]
)
def test_verify_rejects_with_a_specific_error_naming_the_problem(
    raw: bytes, kwargs: dict[str, Any], error: type[ProtocolError], message: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        verify(raw, REGISTRY, **kwargs)
    assert type(caught.value) is error
    assert caught.value.reason is error.reason
    assert isinstance(caught.value.reason, RejectReason)
    assert message in str(caught.value)
    assert caught.value.message == str(caught.value)


def test_size_is_checked_before_anything_is_parsed() -> None:
    # One byte over the limit is refused for its size, although it is not even JSON.
    with pytest.raises(PayloadTooLarge):
        verify(b"x" * 1025, REGISTRY, max_bytes=1024)
    # At the limit it is parsed, and refused for what it is.
    with pytest.raises(MalformedJSON):
        verify(b"x" * 1024, REGISTRY, max_bytes=1024)
    with pytest.raises(MalformedJSON):
        verify(b" " * DEFAULT_MAX_BYTES, REGISTRY)


def test_a_registered_device_body_signed_by_an_outsider_is_a_bad_signature() -> None:
    raw = signed(make_body().to_bytes(), OUTSIDER_KEY, kid=KEYS[DEVICE].kid)
    with pytest.raises(BadSignature):
        verify(raw, REGISTRY)


def test_every_reject_reason_of_verify_is_covered() -> None:
    stateless = set(RejectReason) - {
        RejectReason.KEY_FILE,
        RejectReason.ELECTION_MODEL,
        RejectReason.CONFLICT,
        RejectReason.BROKEN_CHAIN,
        RejectReason.AFTER_FINAL,
        RejectReason.BAD_TOPIC,  # raised by parse_batch_topic (tests/protocol/test_topics.py)
        RejectReason.BAD_BUNDLE,  # raised by protocol.bundle.decode (tests/protocol/test_bundle.py)
        # manual entry: tests/protocol/test_entry.py covers each with a registry holding operators
        RejectReason.ENTRY_NOT_ALLOWED,
        RejectReason.MISSING_ENTRY,
        RejectReason.BAD_OPERATOR_SIGNATURE,
        RejectReason.NOT_DOUBLE_KEYED,
    }
    assert {error.reason for _, _, _, error, _ in REJECTS} == stateless
