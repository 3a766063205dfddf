"""Canonical JSON: the one byte form of a value that EdgeTally signs and hashes.

Rules (docs/protocol.md): UTF-8, object keys sorted by code point, no insignificant
whitespace, integers only (no floats), strings with the minimal JSON escaping. Every
identifier in a batch is restricted to ``[A-Za-z0-9_.-]`` so that implementations in
other languages cannot disagree on escaping.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from protocol._errors import MalformedJSON

GENESIS_HASH = "0" * 64


def dumps(value: Any) -> bytes:
    """Serialise ``value`` canonically (sorted keys, compact)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def loads(data: bytes | str, *, what: str = "payload") -> Any:
    """Parse JSON, translating the library error into :class:`MalformedJSON`."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"{what} is not valid UTF-8 JSON: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256, the hash used by the chain (``prev``) and receipts."""
    return hashlib.sha256(data).hexdigest()
