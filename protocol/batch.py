"""The batch body: what a tabulator signs.

A body is canonical JSON with exactly these fields (docs/protocol.md)::

    v          1
    election   election id
    device     device id
    precinct   precinct id of the device
    seq        1, 2, 3, ... per device
    prev       hex SHA-256 of the previous body's bytes; 64 zeros for seq 1
    issued_at  RFC 3339 UTC, second precision ("2026-11-03T20:01:00Z")
    ballots    ballots counted in this batch (delta)
    counts     {contest: {choice: votes}} counted in this batch (deltas)
    final      true on the device's last batch
    totals     null, or on the final batch {"ballots": n, "counts": {...}} cumulative

A manual source's body has one more field, ``entry`` (protocol/entry.py); a correction's
(``entry.reason`` set) ``ballots`` and ``counts`` are deltas that may be negative.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from protocol import canonical
from protocol._errors import (
    ElectionModelError,
    InvalidValue,
    MalformedJSON,
    MissingField,
    NonCanonicalBody,
    UnknownChoice,
    UnknownContest,
    UnknownElection,
    WrongType,
    require_exact_fields,
    shown,
)
from protocol.election import ID_PATTERN, Election, parse_timestamp
from protocol.entry import Entry, parse_entry

VERSION = 1
MAX_COUNT = 1_000_000_000
BODY_FIELDS = frozenset(
    {"v", "election", "device", "precinct", "seq", "prev", "issued_at", "ballots", "counts", "final", "totals"}
)
MANUAL_BODY_FIELDS = BODY_FIELDS | {"entry"}
TOTALS_FIELDS = frozenset({"ballots", "counts"})
HEX64 = re.compile(r"[0-9a-f]{64}\Z")  # use with .match; \Z so that a trailing newline fails

Counts = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True, slots=True)
class Totals:
    ballots: int
    counts: Counts


@dataclass(frozen=True, slots=True)
class BatchBody:
    election: str
    device: str
    precinct: str
    seq: int
    prev: str
    issued_at: str
    ballots: int
    counts: Counts
    final: bool = False
    totals: Totals | None = None
    v: int = VERSION
    entry: Entry | None = None  # a manual source's bodies only

    def to_mapping(self) -> dict[str, Any]:
        mapping: dict[str, Any] = {
            "v": self.v,
            "election": self.election,
            "device": self.device,
            "precinct": self.precinct,
            "seq": self.seq,
            "prev": self.prev,
            "issued_at": self.issued_at,
            "ballots": self.ballots,
            "counts": {c: dict(ch) for c, ch in self.counts.items()},
            "final": self.final,
            "totals": None
            if self.totals is None
            else {
                "ballots": self.totals.ballots,
                "counts": {c: dict(ch) for c, ch in self.totals.counts.items()},
            },
        }
        if self.entry is not None:
            mapping["entry"] = self.entry.to_mapping()
        return mapping

    def to_bytes(self) -> bytes:
        """The canonical bytes: what is signed, hashed, and carried in the envelope."""
        return canonical.dumps(self.to_mapping())

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.election, self.device, self.seq)


# -- parsing ---------------------------------------------------------------------------


def _int(value: object, where: str, *, minimum: int = 0) -> int:
    if type(value) is not int:
        raise WrongType(f"{where} must be an integer, got {type(value).__name__} {shown(value)}")
    if value < minimum:
        raise InvalidValue(f"{where} must be >= {minimum}, got {value}")
    if value > MAX_COUNT:
        raise InvalidValue(f"{where} must be <= {MAX_COUNT}, got {value}")
    return value


@lru_cache(maxsize=8192)
def _is_id(value: str) -> bool:
    """Ids repeat in every batch (contests, choices, devices): match each spelling once."""
    return ID_PATTERN.match(value) is not None


@lru_cache(maxsize=8192)
def _is_timestamp(value: str) -> bool:
    """issued_at values repeat across a fleet's batches (second precision): check each once."""
    try:
        parse_timestamp(value, "issued_at")
    except ElectionModelError:
        return False
    return True


def _ident(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise WrongType(f"{where} must be a string, got {type(value).__name__}")
    if not _is_id(value):
        raise InvalidValue(f"{where} {shown(value)} is not a valid id")
    return value


def _counts(value: object, where: str, minimum: int = 0) -> dict[str, dict[str, int]]:
    # The hot path of every verification: messages are only formatted when something is wrong.
    if not isinstance(value, dict):
        raise WrongType(f"{where} must be an object of contests, got {type(value).__name__}")
    out: dict[str, dict[str, int]] = {}
    for contest, choices in value.items():
        if not _is_id(contest):
            _ident(contest, f"{where} contest")
        if not isinstance(choices, dict):
            raise WrongType(f"{where}.{contest} must be an object of choices")
        for choice, n in choices.items():
            if not (type(n) is int and minimum <= n <= MAX_COUNT and _is_id(choice)):
                _ident(choice, f"{where}.{contest} choice")
                _int(n, f"{where}.{contest}.{choice}", minimum=minimum)
        out[contest] = choices  # fresh from the JSON parser: nobody else holds it
    return out


def parse_body(raw: bytes) -> BatchBody:
    """Parse and type-check body bytes. Does not consult the election or any key."""
    data = canonical.loads(raw, what="batch body")
    if not isinstance(data, dict):
        raise MalformedJSON(f"batch body must be a JSON object, got {type(data).__name__}")
    entry: Entry | None = None
    if "entry" in data and data.keys() == MANUAL_BODY_FIELDS:
        entry = parse_entry(data["entry"])
    else:
        require_exact_fields(data, BODY_FIELDS, "batch body")
    # A correction's deltas may lower a figure; every other count is >= 0.
    minimum = -MAX_COUNT if entry is not None and entry.reason is not None else 0
    v = _int(data["v"], "v")
    if v != VERSION:
        raise InvalidValue(f"v must be {VERSION}, got {v}")
    prev = data["prev"]
    if not isinstance(prev, str):
        raise WrongType(f"prev must be a string, got {type(prev).__name__}")
    if not HEX64.match(prev):
        raise InvalidValue(f"prev must be 64 lower-case hex digits, got {shown(prev)}")
    issued_at = data["issued_at"]
    if not isinstance(issued_at, str):
        raise WrongType(f"issued_at must be a string, got {type(issued_at).__name__}")
    if not _is_timestamp(issued_at):
        try:
            parse_timestamp(issued_at, "issued_at")
        except ElectionModelError as exc:
            raise InvalidValue(str(exc)) from exc
    final = data["final"]
    if not isinstance(final, bool):
        raise WrongType(f"final must be true or false, got {type(final).__name__}")
    seq = _int(data["seq"], "seq", minimum=1)
    if seq == 1 and prev != canonical.GENESIS_HASH:
        raise InvalidValue(f"prev of seq 1 must be 64 zeros, got {shown(prev)}")
    totals_raw = data["totals"]
    totals: Totals | None = None
    if final:
        if totals_raw is None:
            raise MissingField(f"the final batch (seq {seq}) must carry cumulative totals, got null")
        if not isinstance(totals_raw, dict):
            raise WrongType(
                f"totals must be an object on the final batch, got {type(totals_raw).__name__}"
            )
        require_exact_fields(totals_raw, TOTALS_FIELDS, "totals")
        totals = Totals(
            ballots=_int(totals_raw["ballots"], "totals.ballots"),
            counts=_counts(totals_raw["counts"], "totals.counts"),
        )
    elif totals_raw is not None:
        raise InvalidValue(
            f"totals must be null on a non-final batch (seq {seq}), got {type(totals_raw).__name__}"
        )
    body = BatchBody(
        v=v,
        election=_ident(data["election"], "election"),
        device=_ident(data["device"], "device"),
        precinct=_ident(data["precinct"], "precinct"),
        seq=seq,
        prev=prev,
        issued_at=issued_at,
        ballots=_int(data["ballots"], "ballots", minimum=minimum),
        counts=_counts(data["counts"], "counts", minimum),
        final=final,
        totals=totals,
        entry=entry,
    )
    if canonical.dumps(data) != raw:
        raise NonCanonicalBody("batch body is not canonical JSON (sorted keys, no whitespace)")
    return body


def check_against_election(body: BatchBody, election: Election) -> None:
    """Every contest and choice named by the body exists in ``election``."""
    if body.election != election.id:
        raise UnknownElection(
            f"body names election {body.election!r}, the registry holds election {election.id!r}"
        )
    sections: list[tuple[str, Counts]] = [("counts", body.counts)]
    if body.totals is not None:
        sections.append(("totals.counts", body.totals.counts))
    for where, counts in sections:
        for contest_id, choices in counts.items():
            contest = election.contests_by_id.get(contest_id)
            if contest is None:
                raise UnknownContest(f"{where}: unknown contest {contest_id!r}")
            known = contest.known_choices
            for choice in choices:
                if choice not in known:
                    raise UnknownChoice(f"{where}: contest {contest_id!r} has no choice {choice!r}")
