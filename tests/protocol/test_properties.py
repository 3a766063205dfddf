"""Hypothesis properties: seal/verify round trip, and no single corrupted byte gets through."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    GENESIS_HASH,
    BatchBody,
    NonCanonicalBody,
    ProtocolError,
    Totals,
    parse_body,
    seal,
    verify,
)
from protocol.batch import MAX_COUNT
from protocol.election import format_timestamp
from tests.protocol.builders import (
    ELECTION,
    KEYS,
    REGISTRY,
    make_body,
    make_final_body,
    payload,
    signed,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

counts_values = st.integers(min_value=0, max_value=MAX_COUNT)


@st.composite
def counts(draw: st.DrawFn) -> dict[str, dict[str, int]]:
    """Any subset of the election's contests, each with any subset of its choices."""
    out: dict[str, dict[str, int]] = {}
    for contest in ELECTION.contests:
        if draw(st.booleans()):
            choices = draw(st.lists(st.sampled_from(contest.choice_ids), unique=True))
            out[contest.id] = {c: draw(counts_values) for c in choices}
    return out


timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(format_timestamp)
hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)


@st.composite
def bodies(draw: st.DrawFn) -> BatchBody:
    """Any body the registry accepts: a registered device, its precinct, known contests."""
    device = draw(st.sampled_from(ELECTION.devices))
    seq = draw(st.integers(min_value=1, max_value=MAX_COUNT))
    final = draw(st.booleans())
    precinct = ELECTION.precinct_of(device)
    assert precinct is not None
    return BatchBody(
        election=ELECTION.id,
        device=device,
        precinct=precinct,
        seq=seq,
        prev=GENESIS_HASH if seq == 1 else draw(hashes),
        issued_at=draw(timestamps),
        ballots=draw(counts_values),
        counts=draw(counts()),
        final=final,
        totals=Totals(draw(counts_values), draw(counts())) if final else None,
    )


@FAST
@given(bodies())
def test_seal_then_verify_gives_back_the_same_body_and_bytes(body: BatchBody) -> None:
    raw = payload(body)
    verified = verify(raw, REGISTRY, topic_device=body.device)
    assert verified.body == body
    assert verified.envelope.body == body.to_bytes()
    assert verified.payload == raw
    assert verified.envelope.to_bytes() == raw
    assert parse_body(body.to_bytes()).to_bytes() == body.to_bytes()


@FAST
@given(bodies())
def test_sealing_is_deterministic(body: BatchBody) -> None:
    assert seal(body, KEYS[body.device]) == seal(body, KEYS[body.device])


VALID_PAYLOADS = [
    payload(make_body()),
    payload(make_final_body()),
    payload(make_body(device="south-p1-a", precinct="south-p1", seq=3, prev="cd" * 32, counts={})),
]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(VALID_PAYLOADS), st.data())
def test_any_single_flipped_byte_is_rejected_with_a_protocol_error(raw: bytes, data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="position")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="xor mask")
    corrupted = bytearray(raw)
    corrupted[position] ^= mask
    try:
        verify(bytes(corrupted), REGISTRY)
    except ProtocolError:
        return
    raise AssertionError(f"byte {position} ^ {mask:#04x} was accepted: {bytes(corrupted)!r}")


def test_every_byte_position_flipped_by_every_single_bit_is_rejected() -> None:
    """The exhaustive companion of the property above, for single-bit flips of one envelope."""
    raw = VALID_PAYLOADS[1]
    for position in range(len(raw)):
        for bit in range(8):
            corrupted = bytearray(raw)
            corrupted[position] ^= 1 << bit
            try:
                verify(bytes(corrupted), REGISTRY)
            except ProtocolError:
                continue
            raise AssertionError(f"bit {bit} of byte {position} flipped was accepted")


@FAST
@given(st.sampled_from(VALID_PAYLOADS), st.data())
def test_any_truncation_is_rejected_with_a_protocol_error(raw: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    try:
        verify(raw[:cut], REGISTRY)
    except ProtocolError:
        return
    raise AssertionError(f"a payload cut at {cut} bytes was accepted")


@FAST
@given(bodies(), st.integers(min_value=0, max_value=6))
def test_a_signed_body_with_added_whitespace_is_non_canonical(body: BatchBody, where: int) -> None:
    raw = body.to_bytes()
    separators = [i for i, b in enumerate(raw) if b in b",:"]
    at = separators[where % len(separators)] + 1
    try:
        verify(signed(raw[:at] + b" " + raw[at:], KEYS[body.device]), REGISTRY)
    except NonCanonicalBody:
        return
    raise AssertionError("a body with whitespace was accepted")
