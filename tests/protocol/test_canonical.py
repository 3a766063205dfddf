"""Canonical JSON: one byte form per value, and JSON errors translated at the boundary."""

from __future__ import annotations

import hashlib

import pytest

from protocol import GENESIS_HASH, MalformedJSON, RejectReason, canonical, sha256_hex


def test_dumps_sorts_keys_at_every_level_without_whitespace() -> None:
    value = {"b": 1, "a": {"z": True, "y": None, "x": [3, 2]}, "c": "s"}
    assert canonical.dumps(value) == b'{"a":{"x":[3,2],"y":null,"z":true},"b":1,"c":"s"}'


def test_dumps_does_not_depend_on_insertion_order() -> None:
    assert canonical.dumps({"seq": 1, "device": "d"}) == canonical.dumps({"device": "d", "seq": 1})


def test_dumps_writes_integers_in_plain_decimal() -> None:
    assert canonical.dumps([0, 7, 1_000_000_000, -3]) == b"[0,7,1000000000,-3]"


def test_dumps_is_utf8_without_ascii_escaping() -> None:
    assert canonical.dumps({"name": "Zoë"}) == '{"name":"Zoë"}'.encode()


def test_loads_round_trips_dumps() -> None:
    value = {"counts": {"mayor": {"ada": 1}}, "final": False, "totals": None}
    assert canonical.loads(canonical.dumps(value)) == value


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "not valid UTF-8 JSON"),
        (b'{"a":', "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b'"\\ud800"', "not valid UTF-8 JSON"),  # lone surrogate
        (b"NaN", "not valid UTF-8 JSON"),
        (b"[" * 2000, "not valid UTF-8 JSON"),  # nesting depth limit
    ],
)
def test_loads_raises_malformed_json_naming_what_was_parsed(raw: bytes, problem: str) -> None:
    with pytest.raises(MalformedJSON) as caught:
        canonical.loads(raw, what="widget")
    assert caught.value.reason is RejectReason.MALFORMED_JSON
    assert str(caught.value).startswith(f"widget is {problem}")
    assert isinstance(caught.value.__cause__, ValueError)


def test_sha256_hex_is_lower_case_hex_of_the_bytes() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_genesis_hash_is_64_zeros() -> None:
    assert GENESIS_HASH == "0" * 64
