"""Receipts: the cloud's word on how much of a device's chain it holds, committed.

    {"device":"p-001-a","election":"sample-2026","hash":"<hex sha256 of body seq>","seq":7,"v":1}

``seq`` is the highest seq such that the cloud holds every batch 1..seq of the device; ``hash``
is the SHA-256 of that batch's body (64 zeros when seq is 0). A device may forget every batch
at or below ``seq`` whose hash chain leads to ``hash``. A receipt is canonical JSON, like a body.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import canonical
from protocol._errors import (
    InvalidValue,
    MalformedJSON,
    NonCanonicalBody,
    WrongType,
    require_exact_fields,
    shown,
)
from protocol.batch import HEX64
from protocol.election import ID_PATTERN

VERSION = 1
RECEIPT_FIELDS = frozenset({"v", "election", "device", "seq", "hash"})


@dataclass(frozen=True, slots=True)
class Receipt:
    election: str
    device: str
    seq: int
    hash: str
    v: int = VERSION

    def to_bytes(self) -> bytes:
        return canonical.dumps(
            {"v": self.v, "election": self.election, "device": self.device, "seq": self.seq, "hash": self.hash}
        )

    @classmethod
    def parse(cls, payload: bytes) -> Receipt:
        """Parse receipt bytes; raise a :class:`ProtocolError` subclass naming the problem."""
        data = canonical.loads(payload, what="receipt")
        if not isinstance(data, dict):
            raise MalformedJSON(f"receipt must be a JSON object, got {type(data).__name__}")
        require_exact_fields(data, RECEIPT_FIELDS, "receipt")
        for name in ("election", "device", "hash"):
            if not isinstance(data[name], str):
                raise WrongType(f"receipt {name} must be a string, got {type(data[name]).__name__}")
        for name in ("v", "seq"):
            if type(data[name]) is not int:
                raise WrongType(
                    f"receipt {name} must be an integer, got {type(data[name]).__name__} {shown(data[name])}"
                )
        if data["v"] != VERSION:
            raise InvalidValue(f"receipt v must be {VERSION}, got {data['v']}")
        if data["seq"] < 0:
            raise InvalidValue(f"receipt seq must be >= 0, got {data['seq']}")
        for name in ("election", "device"):
            if not ID_PATTERN.match(data[name]):
                raise InvalidValue(f"receipt {name} {shown(data[name])} is not a valid id")
        if not HEX64.match(data["hash"]):
            raise InvalidValue(f"receipt hash must be 64 lower-case hex digits, got {shown(data['hash'])}")
        if data["seq"] == 0 and data["hash"] != canonical.GENESIS_HASH:
            raise InvalidValue("receipt hash must be 64 zeros when seq is 0")
        receipt = cls(data["election"], data["device"], data["seq"], data["hash"])
        if receipt.to_bytes() != payload:
            raise NonCanonicalBody("receipt is not canonical JSON (sorted keys, no whitespace)")
        return receipt
