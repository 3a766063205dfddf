"""Receipts: exact bytes out, strict parse in, every reject with its type and a clear message."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    GENESIS_HASH,
    ExtraField,
    InvalidValue,
    MalformedJSON,
    MissingField,
    NonCanonicalBody,
    ProtocolError,
    Receipt,
    WrongType,
    canonical,
)

HASH = "0123456789abcdef" * 4


def test_receipt_bytes_are_canonical_json() -> None:
    receipt = Receipt("sample-2026", "p-001-a", 7, HASH)
    assert receipt.to_bytes() == (
        b'{"device":"p-001-a","election":"sample-2026","hash":"' + HASH.encode() + b'","seq":7,"v":1}'
    )


@pytest.mark.parametrize("receipt", [Receipt("e", "d", 7, HASH), Receipt("e", "d", 0, GENESIS_HASH)])
def test_parse_gives_back_the_receipt(receipt: Receipt) -> None:
    assert Receipt.parse(receipt.to_bytes()) == receipt


def _raw(**overrides: Any) -> bytes:
    data: dict[str, Any] = {"v": 1, "election": "e", "device": "d", "seq": 3, "hash": HASH}
    data.update(overrides)
    return canonical.dumps({k: v for k, v in data.items() if v is not _DROP})


_DROP = object()

REJECTS: list[tuple[str, bytes, type[ProtocolError], str]] = [
    ("not JSON", b"{receipt", MalformedJSON, "receipt is not valid UTF-8 JSON"),
    ("not an object", b"[1]", MalformedJSON, "receipt must be a JSON object, got list"),
    ("missing field", _raw(hash=_DROP), MissingField, "receipt is missing field(s): hash"),
    ("extra field", _raw(extra=1), ExtraField, "receipt has unexpected field(s): extra"),
    ("string seq", _raw(seq="3"), WrongType, "receipt seq must be an integer, got str"),
    ("bool seq", _raw(seq=True), WrongType, "receipt seq must be an integer, got bool"),
    ("float seq", _raw(seq=3.0), WrongType, "receipt seq must be an integer, got float"),
    ("int hash", _raw(hash=5), WrongType, "receipt hash must be a string, got int"),
    ("negative seq", _raw(seq=-1), InvalidValue, "receipt seq must be >= 0, got -1"),
    ("version 2", _raw(v=2), InvalidValue, "receipt v must be 1, got 2"),
    ("bad device id", _raw(device="a/b"), InvalidValue, "receipt device 'a/b' is not a valid id"),
    ("bad election id", _raw(election=""), InvalidValue, "receipt election '' is not a valid id"),
    ("upper-case hash", _raw(hash=HASH.upper()), InvalidValue, "receipt hash must be 64 lower-case hex"),
    ("short hash", _raw(hash=HASH[:-1]), InvalidValue, "receipt hash must be 64 lower-case hex"),
    ("hash with newline", _raw(hash=HASH + "\n"), InvalidValue, "receipt hash must be 64 lower-case hex"),
    ("seq 0 with a hash", _raw(seq=0), InvalidValue, "receipt hash must be 64 zeros when seq is 0"),
    ("whitespace", _raw().replace(b",", b", "), NonCanonicalBody, "receipt is not canonical JSON"),
    (
        "unsorted keys",
        b'{"v":1,"device":"d","election":"e","hash":"' + HASH.encode() + b'","seq":3}',
        NonCanonicalBody,
        "receipt is not canonical JSON",
    ),
]


@pytest.mark.parametrize(("raw", "error", "message"), [r[1:] for r in REJECTS], ids=[r[0] for r in REJECTS])
def test_bad_receipts_are_rejected_with_type_and_message(
    raw: bytes, error: type[ProtocolError], message: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        Receipt.parse(raw)
    assert type(caught.value) is error
    assert caught.value.reason is error.reason
    assert message in str(caught.value)
