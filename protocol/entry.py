"""Manual entry: the ``entry`` field of a manual source's batch body, and its verification.

A manual source (a data-entry station, ``"source": "manual"`` in the registry) sends ordinary
batch bodies plus one field, allowed on its bodies only (docs/protocol.md section 16)::

    "entry": {"sheet": ID,
              "operators": [{"kid": KID, "operator": ID, "sig": B64}, ...],
              "resolved_by": null | {"kid": KID, "sig": B64, "supervisor": ID},
              "reason": null | "correction: ..."}

Each operator signs the **sheet message**, the canonical JSON of the sheet as keyed::

    {"ballots": n, "counts": {...}, "election": ID, "precinct": ID, "reason": null | TEXT, "sheet": ID}

with the body's own ``ballots`` and ``counts`` (for a correction, the deltas), so a receiver
rebuilds the message from the body alone. A supervisor's resolution signs the same message
(the figures resolved). Verification (:func:`check_entry`): every listed signature verifies
with its signer's registered key and role; there are two distinct operators, or a supervisor
resolution. A correction (``reason`` set) may carry negative deltas; nothing else may.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import canonical
from protocol._errors import (
    BadOperatorSignature,
    EntryNotAllowed,
    InvalidValue,
    MissingEntry,
    NotDoubleKeyed,
    WrongType,
    require_exact_fields,
    shown,
)
from protocol.election import ID_PATTERN
from protocol.keys import SIGNATURE_BYTES, SigningKey, b64decode_strict, b64encode

if TYPE_CHECKING:
    from protocol.batch import BatchBody, Counts
    from protocol.registry import DeviceEntry, Registry

ENTRY_FIELDS = frozenset({"sheet", "operators", "resolved_by", "reason"})
OPERATOR_FIELDS = frozenset({"operator", "kid", "sig"})
SUPERVISOR_FIELDS = frozenset({"supervisor", "kid", "sig"})
MAX_OPERATORS = 8
# A reason is free text, but of printable ASCII without '"' or '\': canonical JSON never escapes.
REASON = re.compile(r"[ !#-\[\]-~]{1,200}\Z")
KID = re.compile(r"[0-9a-f]{16}\Z")
SOURCE_TABULATOR = "tabulator"
SOURCE_MANUAL = "manual"
SOURCES = (SOURCE_TABULATOR, SOURCE_MANUAL)
ROLE_OPERATOR = "operator"
ROLE_SUPERVISOR = "supervisor"


@dataclass(frozen=True, slots=True)
class Signature:
    """One person's signature of a sheet message: an operator's or a supervisor's."""

    signer: str
    kid: str
    sig: bytes

    def to_mapping(self, role: str) -> dict[str, str]:
        return {role: self.signer, "kid": self.kid, "sig": b64encode(self.sig)}


@dataclass(frozen=True, slots=True)
class Entry:
    sheet: str
    operators: tuple[Signature, ...]
    resolved_by: Signature | None = None
    reason: str | None = None

    def to_mapping(self) -> dict[str, Any]:
        return {
            "sheet": self.sheet,
            "operators": [s.to_mapping(ROLE_OPERATOR) for s in self.operators],
            "resolved_by": None if self.resolved_by is None else self.resolved_by.to_mapping(ROLE_SUPERVISOR),
            "reason": self.reason,
        }


def sheet_message(
    election: str, precinct: str, sheet: str, ballots: int, counts: Counts, reason: str | None = None
) -> bytes:
    """The bytes an operator (or a supervisor resolving) signs: the sheet as keyed."""
    return canonical.dumps(
        {
            "ballots": ballots,
            "counts": {c: dict(ch) for c, ch in counts.items()},
            "election": election,
            "precinct": precinct,
            "reason": reason,
            "sheet": sheet,
        }
    )


def sign_sheet(key: SigningKey, signer: str, message: bytes) -> Signature:
    return Signature(signer=signer, kid=key.kid, sig=key.sign(message))


# -- parsing ---------------------------------------------------------------------------


def _id(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise WrongType(f"{where} must be a string, got {type(value).__name__}")
    if not ID_PATTERN.match(value):
        raise InvalidValue(f"{where} {shown(value)} is not a valid id")
    return value


def _signature(value: object, role: str, where: str) -> Signature:
    if not isinstance(value, dict):
        raise WrongType(f"{where} must be an object, got {type(value).__name__}")
    require_exact_fields(value, OPERATOR_FIELDS if role == ROLE_OPERATOR else SUPERVISOR_FIELDS, where)
    kid, sig = value["kid"], value["sig"]
    if not isinstance(kid, str) or not isinstance(sig, str):
        raise WrongType(f"{where} kid and sig must be strings")
    if not KID.match(kid):
        raise InvalidValue(f"{where} kid {shown(kid)} is not 16 lower-case hex digits")
    raw = b64decode_strict(sig, what=f"{where} sig")
    if len(raw) != SIGNATURE_BYTES:
        raise InvalidValue(f"{where} sig must be {SIGNATURE_BYTES} bytes, got {len(raw)}")
    return Signature(signer=_id(value[role], f"{where} {role}"), kid=kid, sig=raw)


def parse_entry(value: object) -> Entry:
    """The ``entry`` field of a body, structurally (no key is consulted)."""
    if not isinstance(value, dict):
        raise WrongType(f"entry must be an object, got {type(value).__name__}")
    require_exact_fields(value, ENTRY_FIELDS, "entry")
    operators = value["operators"]
    if not isinstance(operators, list):
        raise WrongType(f"entry.operators must be a list, got {type(operators).__name__}")
    if len(operators) > MAX_OPERATORS:
        raise InvalidValue(f"entry.operators holds {len(operators)} signatures, at most {MAX_OPERATORS}")
    reason = value["reason"]
    if reason is not None:
        if not isinstance(reason, str):
            raise WrongType(f"entry.reason must be a string or null, got {type(reason).__name__}")
        if not REASON.match(reason):
            raise InvalidValue(
                f"entry.reason {shown(reason)} must be 1-200 printable ASCII characters without \" or \\"
            )
    resolved = value["resolved_by"]
    return Entry(
        sheet=_id(value["sheet"], "entry.sheet"),
        operators=tuple(_signature(op, ROLE_OPERATOR, f"entry.operators[{i}]") for i, op in enumerate(operators)),
        resolved_by=None if resolved is None else _signature(resolved, ROLE_SUPERVISOR, "entry.resolved_by"),
        reason=reason,
    )


# -- verification ----------------------------------------------------------------------


def _check_signature(registry: Registry, signature: Signature, role: str, message: bytes, sheet: str) -> None:
    person = registry.operators.get(signature.signer)
    if person is None:
        raise BadOperatorSignature(f"sheet {sheet!r}: {role} {signature.signer!r} is not in the registry")
    if person.role != role:
        raise BadOperatorSignature(
            f"sheet {sheet!r}: {signature.signer!r} is registered as {person.role}, signs here as {role}"
        )
    if signature.kid != person.kid:
        raise BadOperatorSignature(
            f"sheet {sheet!r}: {role} {signature.signer!r} signs with kid {person.kid}, the entry says {signature.kid}"
        )
    if not person.public_key.verify(signature.sig, message):
        raise BadOperatorSignature(f"sheet {sheet!r}: the signature of {role} {signature.signer!r} does not verify")


def check_entry(body: BatchBody, device: DeviceEntry, registry: Registry) -> None:
    """The ``entry`` rules of docs/protocol.md section 16 for ``body`` from ``device``."""
    entry = body.entry
    if device.source != SOURCE_MANUAL:
        if entry is not None:
            raise EntryNotAllowed(
                f"device {body.device!r} is a {device.source}: only a manual source's body may carry an entry"
            )
        return
    if entry is None:
        raise MissingEntry(f"device {body.device!r} is a manual source: its body must carry an entry")
    message = sheet_message(body.election, body.precinct, entry.sheet, body.ballots, body.counts, entry.reason)
    for signature in entry.operators:
        _check_signature(registry, signature, ROLE_OPERATOR, message, entry.sheet)
    if entry.resolved_by is not None:
        _check_signature(registry, entry.resolved_by, ROLE_SUPERVISOR, message, entry.sheet)
        return
    distinct = {s.signer for s in entry.operators}
    if len(distinct) < 2:
        shown_ops = ", ".join(s.signer for s in entry.operators) or "none"
        raise NotDoubleKeyed(
            f"sheet {entry.sheet!r} is keyed by {len(distinct)} distinct operator(s) ({shown_ops}) and not resolved"
            " by a supervisor: two distinct operators are needed"
        )
