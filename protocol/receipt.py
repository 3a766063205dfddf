"""Receipts: the cloud's word on how much of a device's chain it holds, committed.

    {"device": "p-001-a", "election": "sample-2026", "hash": "<hex sha256 of body seq>",
     "seq": 7, "v": 1}

``seq`` is the highest seq such that the cloud holds every batch 1..seq of the device; ``hash``
is the SHA-256 of that batch's body (64 zeros when seq is 0). A device may forget every batch
at or below ``seq`` whose hash chain leads to ``hash``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol import canonical
from protocol._errors import InvalidValue, MalformedJSON, WrongType
from protocol.batch import require_exact_fields
from protocol.election import ID_PATTERN

RECEIPT_FIELDS = frozenset({"v", "election", "device", "seq", "hash"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Receipt:
    election: str
    device: str
    seq: int
    hash: str
    v: int = 1

    def to_bytes(self) -> bytes:
        return canonical.dumps(
            {"v": self.v, "election": self.election, "device": self.device, "seq": self.seq, "hash": self.hash}
        )

    @classmethod
    def parse(cls, payload: bytes) -> Receipt:
        data = canonical.loads(payload, what="receipt")
        if not isinstance(data, dict):
            raise MalformedJSON("receipt must be a JSON object")
        require_exact_fields(data, RECEIPT_FIELDS, "receipt")
        for name in ("election", "device", "hash"):
            if not isinstance(data[name], str):
                raise WrongType(f"receipt {name} must be a string")
        for name in ("v", "seq"):
            if type(data[name]) is not int:
                raise WrongType(f"receipt {name} must be an integer")
        if data["v"] != 1 or data["seq"] < 0:
            raise InvalidValue("receipt v must be 1 and seq >= 0")
        if not ID_PATTERN.match(data["election"]) or not ID_PATTERN.match(data["device"]):
            raise InvalidValue("receipt election and device must be ids")
        if not _HEX64.match(data["hash"]):
            raise InvalidValue("receipt hash must be 64 lower-case hex digits")
        return cls(data["election"], data["device"], data["seq"], data["hash"])
