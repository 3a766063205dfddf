"""Manual entry on the wire (docs/protocol.md section 16): the test vector recomputed from its
seeds, and every reject of a manual body or of an entry field where it does not belong."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from protocol import (
    GENESIS_HASH,
    BadOperatorSignature,
    BatchBody,
    EntryNotAllowed,
    InvalidValue,
    KeyFileError,
    MissingEntry,
    NotDoubleKeyed,
    ProtocolError,
    Registry,
    RejectReason,
    SigningKey,
    body_hash,
    parse_body,
    seal,
    verify,
)
from protocol.entry import Entry, Signature, sheet_message, sign_sheet
from protocol.keys import b64encode
from tests.helpers import REPO
from tests.protocol.test_vector import read_vector

DOC = REPO / "docs" / "protocol.md"
_FENCE = re.compile(r"^```(entry-vector-[a-z0-9-]+)\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
COUNTS = {"mayor": {"ada": 2, "bo": 3}, "measure-1": {"yes": 3, "no": 2}}


def _entry_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for match in _FENCE.finditer(DOC.read_text(encoding="utf-8")):
        assert match.group(1) not in blocks
        blocks[match.group(1)] = match.group(2)
    return blocks


BLOCKS = _entry_blocks()
KEYS_DOC: dict[str, dict[str, str]] = json.loads(BLOCKS["entry-vector-keys"])
KEYS = {name: SigningKey.from_seed(bytes.fromhex(k["seed"])) for name, k in KEYS_DOC.items()}


def _registry_mapping() -> dict[str, Any]:
    mapping: dict[str, Any] = json.loads(read_vector()["vector-registry"])
    additions = json.loads(BLOCKS["entry-vector-registry-additions"])
    mapping["devices"].update(additions["devices"])
    mapping["operators"] = additions["operators"]
    return mapping


REGISTRY = Registry.from_mapping(_registry_mapping(), source="docs/protocol.md")
MANUAL, TABULATOR = "manual-town-p1", "town-p1-a"
TABULATOR_KEY = SigningKey.from_seed(bytes(range(32)))  # section 13's device key


def _body(entry: Entry | None, *, device: str = MANUAL, ballots: int = 5, counts: Any = None) -> BatchBody:
    return BatchBody(
        election="demo-2026", device=device, precinct="town-p1", seq=1, prev=GENESIS_HASH,
        issued_at="2026-11-03T21:00:00Z", ballots=ballots, counts=counts or COUNTS, entry=entry,
    )


def _signed(*signers: str, reason: str | None = None, ballots: int = 5, counts: Any = None,
            resolved_by: str | None = None) -> BatchBody:
    message = sheet_message("demo-2026", "town-p1", "T-1", ballots, counts or COUNTS, reason)
    entry = Entry("T-1", tuple(sign_sheet(KEYS[s], s, message) for s in signers),
                  None if resolved_by is None else sign_sheet(KEYS[resolved_by], resolved_by, message), reason)
    return _body(entry, ballots=ballots, counts=counts)


def _payload(body: BatchBody, key: SigningKey | None = None) -> bytes:
    return seal(body, key or KEYS[body.device] if body.device in KEYS else TABULATOR_KEY).to_bytes()


# -- the vector ------------------------------------------------------------------------


def test_the_documented_keys_come_from_their_seeds() -> None:
    for name, key in KEYS.items():
        assert key.public.hex == KEYS_DOC[name]["public_key"]
        assert key.kid == KEYS_DOC[name]["kid"]


def test_provisioning_adds_exactly_the_documented_registry_entries() -> None:
    additions = json.loads(BLOCKS["entry-vector-registry-additions"])
    mapping = REGISTRY.to_mapping()
    assert mapping["devices"][MANUAL] == additions["devices"][MANUAL]
    assert mapping["operators"] == additions["operators"]
    assert REGISTRY.manual_source("town-p1") == REGISTRY.devices[MANUAL]


def test_code_produces_exactly_the_documented_sheet_signatures_body_and_envelope() -> None:
    message = sheet_message("demo-2026", "town-p1", "T-1", 5, COUNTS)
    assert message.decode() == BLOCKS["entry-vector-sheet"]
    for n in (1, 2):
        sig = sign_sheet(KEYS[f"operator-{n}"], f"operator-{n}", message).sig
        assert b64encode(sig) == BLOCKS[f"entry-vector-operator-{n}-sig"]
    body = _signed("operator-1", "operator-2")
    assert body.to_bytes().decode() == BLOCKS["entry-vector-body"]
    assert body_hash(body.to_bytes()) == BLOCKS["entry-vector-body-sha256"]
    assert seal(body, KEYS[MANUAL]).to_bytes().decode() == BLOCKS["entry-vector-envelope"]


def test_the_documented_envelope_verifies_and_parses_back() -> None:
    verified = verify(BLOCKS["entry-vector-envelope"].encode(), REGISTRY, topic_device=MANUAL)
    assert verified.body == parse_body(BLOCKS["entry-vector-body"].encode())
    assert verified.body.entry is not None
    assert [s.signer for s in verified.body.entry.operators] == ["operator-1", "operator-2"]


def test_a_tabulator_body_is_unchanged_by_the_entry_field() -> None:
    vector = read_vector()
    assert parse_body(vector["vector-body-1"].encode()).to_bytes().decode() == vector["vector-body-1"]


# -- accepted ----------------------------------------------------------------------------


def test_a_supervisor_resolution_needs_no_second_operator() -> None:
    assert verify(_payload(_signed(resolved_by="supervisor-1")), REGISTRY).body.entry is not None
    assert verify(_payload(_signed("operator-1", resolved_by="supervisor-1")), REGISTRY)


def test_a_correction_carries_negative_deltas_and_its_reason() -> None:
    deltas = {"mayor": {"ada": -1, "bo": 0}}
    body = _signed("operator-1", "operator-2", reason="correction: ada misread", ballots=-1, counts=deltas)
    verified = verify(_payload(body), REGISTRY)
    assert verified.body.counts == deltas and verified.body.ballots == -1


# -- refused -----------------------------------------------------------------------------


def _forged() -> BatchBody:
    body = _signed("operator-1", "operator-2")
    assert body.entry is not None
    bad = Signature("operator-2", KEYS["operator-2"].kid, KEYS["operator-1"].sign(b"anything else"))
    return replace(body, entry=replace(body.entry, operators=(body.entry.operators[0], bad)))


def _tabulator_with_entry() -> bytes:
    body = replace(_signed("operator-1", "operator-2"), device=TABULATOR)
    return seal(body, TABULATOR_KEY).to_bytes()


REFUSED: list[tuple[str, bytes, type[ProtocolError], str]] = [
    ("a tabulator's body carrying an entry", _tabulator_with_entry(), EntryNotAllowed,
     "device 'town-p1-a' is a tabulator: only a manual source's body may carry an entry"),
    ("a manual body without its entry", _payload(_body(None)), MissingEntry,
     "device 'manual-town-p1' is a manual source: its body must carry an entry"),
    ("one operator", _payload(_signed("operator-1")), NotDoubleKeyed, "keyed by 1 distinct operator(s) (operator-1)"),
    ("the same operator twice", _payload(_signed("operator-1", "operator-1")), NotDoubleKeyed,
     "keyed by 1 distinct operator(s) (operator-1, operator-1)"),
    ("a forged operator signature", _payload(_forged()), BadOperatorSignature,
     "the signature of operator 'operator-2' does not verify"),
    ("figures changed after the operators signed",
     _payload(replace(_signed("operator-1", "operator-2"), ballots=6)), BadOperatorSignature,
     "the signature of operator 'operator-1' does not verify"),
    ("a supervisor signing as an operator", _payload(_signed("operator-1", "supervisor-1")), BadOperatorSignature,
     "'supervisor-1' is registered as supervisor, signs here as operator"),
    ("an operator resolving", _payload(_signed(resolved_by="operator-2")), BadOperatorSignature,
     "'operator-2' is registered as operator, signs here as supervisor"),
    ("a negative count on a sheet that is not a correction",
     _payload(_signed("operator-1", "operator-2", counts={"mayor": {"ada": -1}})), InvalidValue,
     "counts.mayor.ada must be >= 0, got -1"),
]


@pytest.mark.parametrize(("raw", "error", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_with_a_named_reason(raw: bytes, error: type[ProtocolError], message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        verify(raw, REGISTRY)
    assert type(caught.value) is error
    assert isinstance(caught.value.reason, RejectReason)
    assert message in str(caught.value)


def test_an_unknown_operator_is_refused() -> None:
    stranger = SigningKey.from_seed(bytes(32))
    body = _signed("operator-1", "operator-2")
    assert body.entry is not None
    message = sheet_message("demo-2026", "town-p1", "T-1", 5, COUNTS)
    entry = replace(body.entry, operators=(*body.entry.operators, sign_sheet(stranger, "mallory", message)))
    with pytest.raises(BadOperatorSignature, match="operator 'mallory' is not in the registry"):
        verify(_payload(replace(body, entry=entry)), REGISTRY)


def test_every_manual_entry_reason_is_covered() -> None:
    covered = {error.reason for _, _, error, _ in REFUSED}
    assert {
        RejectReason.ENTRY_NOT_ALLOWED, RejectReason.MISSING_ENTRY,
        RejectReason.BAD_OPERATOR_SIGNATURE, RejectReason.NOT_DOUBLE_KEYED,
    } <= covered


def test_a_registry_refuses_a_manual_source_outside_the_election_or_a_bad_role() -> None:
    mapping = _registry_mapping()
    mapping["devices"][MANUAL]["precinct"] = "town"  # a county, not a precinct
    with pytest.raises(KeyFileError, match="not a precinct of the election"):
        Registry.from_mapping(mapping)
    mapping = _registry_mapping()
    mapping["operators"]["operator-1"]["role"] = "admin"
    with pytest.raises(KeyFileError, match="role must be operator or supervisor"):
        Registry.from_mapping(mapping)
    mapping = _registry_mapping()
    del mapping["operators"]
    mapping["devices"].pop(MANUAL)
    assert Registry.from_mapping(mapping).operators == {}  # an older registry loads as before
