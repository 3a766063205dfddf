"""The batch body: its canonical bytes, strict parsing, and the check against the election."""

from __future__ import annotations

import pytest

from protocol import (
    GENESIS_HASH,
    BatchBody,
    InvalidValue,
    NonCanonicalBody,
    Totals,
    UnknownChoice,
    UnknownContest,
    UnknownElection,
    canonical,
    check_against_election,
    parse_body,
)
from protocol.batch import BODY_FIELDS
from tests.protocol.builders import ELECTION, body_mapping, make_body, make_final_body


def test_body_bytes_are_canonical_json_with_every_field() -> None:
    raw = make_body().to_bytes()
    assert raw == (
        b'{"ballots":8,"counts":{"mayor":{"ada":4,"bo":3,"write-in":1},"measure-1":{"no":3,"yes":5}},'
        b'"device":"north-p1-a","election":"tiny-2026","final":false,"issued_at":"2026-11-03T20:01:00Z",'
        b'"precinct":"north-p1","prev":"' + GENESIS_HASH.encode() + b'","seq":1,"totals":null,"v":1}'
    )
    assert set(canonical.loads(raw)) == BODY_FIELDS


def test_final_body_carries_totals() -> None:
    data = canonical.loads(make_final_body().to_bytes())
    assert data["final"] is True
    assert data["totals"] == {"ballots": 16, "counts": make_final_body().to_mapping()["counts"]}


@pytest.mark.parametrize("body", [make_body(), make_final_body(), make_body(counts={}, ballots=0)])
def test_parse_body_gives_back_the_body(body: BatchBody) -> None:
    parsed = parse_body(body.to_bytes())
    assert parsed == body
    assert parsed.to_bytes() == body.to_bytes()


def test_key_is_election_device_seq() -> None:
    assert make_body(seq=1).key == ("tiny-2026", "north-p1-a", 1)


def test_prev_with_a_trailing_newline_is_refused() -> None:
    # The escaped newline is canonical JSON, so only the hex check can catch it.
    raw = canonical.dumps(body_mapping(seq=2, prev="ab" * 32 + "\n"))
    with pytest.raises(InvalidValue, match="prev must be 64 lower-case hex digits"):
        parse_body(raw)


@pytest.mark.parametrize("field", ["election", "device", "precinct"])
def test_id_with_a_trailing_newline_is_refused(field: str) -> None:
    value = f"{body_mapping()[field]}\n"
    with pytest.raises(InvalidValue, match=f"{field} .* is not a valid id"):
        parse_body(canonical.dumps(body_mapping(**{field: value})))


def test_issued_at_with_non_ascii_digits_is_refused() -> None:
    raw = canonical.dumps(body_mapping(issued_at="\uff12026-11-03T20:01:00Z"))
    with pytest.raises(InvalidValue, match=r"issued_at: .* is not a timestamp"):
        parse_body(raw)


def test_escaped_characters_make_a_body_non_canonical() -> None:
    raw = make_body().to_bytes().replace(b"north-p1-a", b"north\\u002dp1-a")
    assert canonical.loads(raw) == canonical.loads(make_body().to_bytes())  # same value...
    with pytest.raises(NonCanonicalBody):  # ...other bytes
        parse_body(raw)


def test_errors_quote_at_most_a_short_excerpt_of_the_value() -> None:
    raw = canonical.dumps(body_mapping(device="x" * 10_000))
    with pytest.raises(InvalidValue) as caught:
        parse_body(raw)
    assert len(str(caught.value)) < 120
    assert "..." in str(caught.value)


def test_check_against_election_accepts_known_contests_and_choices() -> None:
    check_against_election(make_body(), ELECTION)
    check_against_election(make_final_body(), ELECTION)
    check_against_election(make_body(counts={"mayor": {"bo": 1}}), ELECTION)  # a subset is fine


def test_check_against_election_refuses_another_election() -> None:
    with pytest.raises(UnknownElection, match="body names election 'other', the registry holds election 'tiny-2026'"):
        check_against_election(make_body(election="other"), ELECTION)


def test_check_against_election_refuses_unknown_contest_and_choice() -> None:
    with pytest.raises(UnknownContest, match="counts: unknown contest 'dogcatcher'"):
        check_against_election(make_body(counts={"dogcatcher": {"rex": 1}}), ELECTION)
    with pytest.raises(UnknownChoice, match="counts: contest 'mayor' has no choice 'zed'"):
        check_against_election(make_body(counts={"mayor": {"zed": 1}}), ELECTION)


def test_check_against_election_looks_at_totals_too() -> None:
    totals = Totals(ballots=1, counts={"measure-1": {"maybe": 1}})
    with pytest.raises(UnknownChoice, match=r"totals\.counts: contest 'measure-1' has no choice 'maybe'"):
        check_against_election(make_final_body(totals=totals), ELECTION)
