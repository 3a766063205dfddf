"""A tiny election, deterministic device keys and envelope builders for the protocol tests.

Everything here is built in memory (no key files), so hypothesis tests can use it freely.
``signed(raw)`` signs arbitrary body bytes with a registered key: a test of a body-level
reject then proves that the reject comes from the body check, not from the signature.
"""

from __future__ import annotations

import hashlib
from typing import Any

from protocol import (
    GENESIS_HASH,
    BatchBody,
    DeviceEntry,
    Election,
    Registry,
    SigningKey,
    Totals,
    canonical,
    seal,
)
from protocol.keys import b64encode

ELECTION_MAPPING: dict[str, Any] = {
    "id": "tiny-2026",
    "name": "Tiny Test Election",
    "polls_close": "2026-11-03T20:00:00Z",
    "contests": [
        {
            "id": "mayor",
            "name": "Mayor",
            "kind": "candidate",
            "choices": [
                {"id": "ada", "name": "Ada"},
                {"id": "bo", "name": "Bo"},
                {"id": "write-in", "name": "Write-in"},
            ],
        },
        {
            "id": "measure-1",
            "name": "Measure 1",
            "kind": "measure",
            "choices": [{"id": "yes", "name": "Yes"}, {"id": "no", "name": "No"}],
        },
    ],
    "units": {
        "id": "tiny-state",
        "name": "Tiny State",
        "kind": "state",
        "children": [
            {
                "id": "north",
                "name": "North County",
                "kind": "county",
                "children": [
                    {
                        "id": "north-p1",
                        "name": "North 1",
                        "kind": "precinct",
                        "registered": 120,
                        "devices": ["north-p1-a", "north-p1-b"],
                    },
                    {
                        "id": "north-p2",
                        "name": "North 2",
                        "kind": "precinct",
                        "registered": 80,
                        "devices": ["north-p2-a"],
                    },
                ],
            },
            {
                "id": "south",
                "name": "South County",
                "kind": "county",
                "children": [
                    {
                        "id": "south-p1",
                        "name": "South 1",
                        "kind": "precinct",
                        "registered": 200,
                        "devices": ["south-p1-a"],
                    }
                ],
            },
        ],
    },
}

ELECTION = Election.from_mapping(ELECTION_MAPPING)
DEVICE = "north-p1-a"
PRECINCT = "north-p1"


def seed_for(device: str) -> bytes:
    """A fixed 32-byte Ed25519 seed per device name."""
    return hashlib.sha256(f"edgetally-test-key/{device}".encode()).digest()


KEYS: dict[str, SigningKey] = {d: SigningKey.from_seed(seed_for(d)) for d in ELECTION.devices}
OUTSIDER_KEY = SigningKey.from_seed(seed_for("not-registered"))


def make_registry(election: Election = ELECTION) -> Registry:
    devices = {}
    for device in election.devices:
        precinct = election.precinct_of(device)
        assert precinct is not None
        devices[device] = DeviceEntry(device, precinct, KEYS[device].public)
    return Registry(election=election, devices=devices)


REGISTRY = make_registry()

COUNTS = {"mayor": {"ada": 4, "bo": 3, "write-in": 1}, "measure-1": {"yes": 5, "no": 3}}


def make_body(**overrides: Any) -> BatchBody:
    """A valid non-final seq 1 batch of ``DEVICE``; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "election": ELECTION.id,
        "device": DEVICE,
        "precinct": PRECINCT,
        "seq": 1,
        "prev": GENESIS_HASH,
        "issued_at": "2026-11-03T20:01:00Z",
        "ballots": 8,
        "counts": COUNTS,
        "final": False,
        "totals": None,
    }
    fields.update(overrides)
    return BatchBody(**fields)


def make_final_body(**overrides: Any) -> BatchBody:
    """A valid final seq 2 batch of ``DEVICE`` carrying totals."""
    fields: dict[str, Any] = {
        "seq": 2,
        "prev": "ab" * 32,
        "final": True,
        "totals": Totals(ballots=16, counts=COUNTS),
    }
    fields.update(overrides)
    return make_body(**fields)


def body_mapping(**overrides: Any) -> dict[str, Any]:
    """``make_body().to_mapping()`` with raw JSON values replaced (any type, for rejects)."""
    data = make_body().to_mapping()
    data.update(overrides)
    return data


def payload(body: BatchBody, key: SigningKey | None = None) -> bytes:
    """The envelope bytes a device sends for ``body``."""
    return seal(body, key or KEYS[body.device]).to_bytes()


def signed(raw_body: bytes | str, key: SigningKey | None = None, *, kid: str | None = None) -> bytes:
    """A canonical envelope around arbitrary body bytes, correctly signed by ``key``."""
    raw = raw_body.encode() if isinstance(raw_body, str) else raw_body
    signer = key or KEYS[DEVICE]
    return envelope_bytes(raw.decode(), kid or signer.kid, b64encode(signer.sign(raw)))


def signed_mapping(data: dict[str, Any], key: SigningKey | None = None) -> bytes:
    """``signed`` over the canonical bytes of a raw body mapping."""
    return signed(canonical.dumps(data), key)


def envelope_bytes(body: Any, kid: Any, sig: Any) -> bytes:
    """A canonical envelope with arbitrary field values."""
    return canonical.dumps({"body": body, "kid": kid, "sig": sig})
