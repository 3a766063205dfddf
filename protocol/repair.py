"""Repair requests: the cloud asks a device to resend the seqs missing from its chain.

    {"device":"p-001-a","election":"sample-2026","missing":[[11,12]],"type":"repair","v":1}

Published QoS 1, NOT retained, on the device's command topic
(``edgetally/v1/{election}/{device}/command``) and relayed down by the gateway. ``missing`` is
a list of inclusive ``[first, last]`` seq ranges, ascending, disjoint and not adjacent, at most
:data:`MAX_RANGES` of them. A device resends every batch it holds in those ranges; the ledger
absorbs any duplicate. A request is canonical JSON, like a body.
"""

from __future__ import annotations

from collections.abc import Iterable
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
from protocol.election import ID_PATTERN

VERSION = 1
TYPE = "repair"
MAX_RANGES = 64  # keeps a request small; the next request names the ranges left over
REPAIR_FIELDS = frozenset({"v", "type", "election", "device", "missing"})

SeqRange = tuple[int, int]  # inclusive


def missing_ranges(after: int, upto: int, held: Iterable[int], limit: int = MAX_RANGES) -> tuple[SeqRange, ...]:
    """The seq ranges in ``after+1 .. upto-1`` absent from ``held`` (``upto`` is held), at most ``limit``."""
    ranges: list[SeqRange] = []
    expected = after + 1
    for seq in sorted(s for s in set(held) if after < s <= upto):
        if seq > expected:
            ranges.append((expected, seq - 1))
            if len(ranges) >= limit:
                break
        expected = seq + 1
    return tuple(ranges)


@dataclass(frozen=True, slots=True)
class RepairRequest:
    election: str
    device: str
    missing: tuple[SeqRange, ...]
    v: int = VERSION

    @property
    def seqs(self) -> list[int]:
        return [seq for first, last in self.missing for seq in range(first, last + 1)]

    def to_bytes(self) -> bytes:
        return canonical.dumps(
            {
                "v": self.v,
                "type": TYPE,
                "election": self.election,
                "device": self.device,
                "missing": [[first, last] for first, last in self.missing],
            }
        )

    @classmethod
    def parse(cls, payload: bytes) -> RepairRequest:
        """Parse request bytes; raise a :class:`ProtocolError` subclass naming the problem."""
        data = canonical.loads(payload, what="repair request")
        if not isinstance(data, dict):
            raise MalformedJSON(f"repair request must be a JSON object, got {type(data).__name__}")
        require_exact_fields(data, REPAIR_FIELDS, "repair request")
        for name in ("election", "device", "type"):
            if not isinstance(data[name], str):
                raise WrongType(f"repair request {name} must be a string, got {type(data[name]).__name__}")
        if type(data["v"]) is not int or data["v"] != VERSION:
            raise InvalidValue(f"repair request v must be {VERSION}, got {shown(data['v'])}")
        if data["type"] != TYPE:
            raise InvalidValue(f"repair request type must be {TYPE!r}, got {shown(data['type'])}")
        for name in ("election", "device"):
            if not ID_PATTERN.match(data[name]):
                raise InvalidValue(f"repair request {name} {shown(data[name])} is not a valid id")
        missing = data["missing"]
        if not isinstance(missing, list) or not 1 <= len(missing) <= MAX_RANGES:
            raise InvalidValue(f"repair request missing must be a list of 1-{MAX_RANGES} ranges")
        ranges: list[SeqRange] = []
        floor = 0  # the next range must start above floor + 1 (disjoint, not adjacent)
        for item in missing:
            if not (isinstance(item, list) and len(item) == 2 and all(type(x) is int for x in item)):
                raise WrongType(f"repair request range must be [first, last] integers, got {shown(item)}")
            first, last = item
            if not floor + (2 if ranges else 1) <= first <= last:
                raise InvalidValue(f"repair request range {shown(item)} is not ascending and disjoint")
            ranges.append((first, last))
            floor = last
        request = cls(data["election"], data["device"], tuple(ranges))
        if request.to_bytes() != payload:
            raise NonCanonicalBody("repair request is not canonical JSON (sorted keys, no whitespace)")
        return request
