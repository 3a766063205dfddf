"""docs/protocol.md's test vector is what the code produces, byte for byte.

The vector lives in fenced blocks whose info string starts with ``vector-``; this test reads
them from the document, so a change to the wire format that is not also made in the doc fails
here (and so does a doc edit the code does not match).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import protocol
from protocol import (
    GENESIS_HASH,
    BatchBody,
    Receipt,
    Registry,
    RejectReason,
    SigningKey,
    Totals,
    batch_topic,
    body_hash,
    parse_body,
    receipt_topic,
    seal,
    verify,
)
from protocol.keys import b64encode
from tests.helpers import REPO

DOC = REPO / "docs" / "protocol.md"
_FENCE = re.compile(r"^```(vector-[a-z0-9-]+)\n(.*?)\n```$", re.MULTILINE | re.DOTALL)

EXPECTED_BLOCKS = {
    "vector-seed",
    "vector-public-key",
    "vector-kid",
    "vector-registry",
    "vector-receipt",
    *(f"vector-{what}-{n}" for what in ("body", "body-sha256", "sig", "envelope") for n in (1, 2)),
}


def read_vector(path: Path = DOC) -> dict[str, str]:
    """Every ``vector-*`` fenced block of ``path``, by info string; each must appear once."""
    blocks: dict[str, str] = {}
    for match in _FENCE.finditer(path.read_text(encoding="utf-8")):
        name, text = match.group(1), match.group(2)
        assert name not in blocks, f"{path}: block {name} appears twice"
        blocks[name] = text
    return blocks


@pytest.fixture(scope="module")
def vector() -> dict[str, str]:
    blocks = read_vector()
    assert set(blocks) == EXPECTED_BLOCKS
    return blocks


@pytest.fixture(scope="module")
def key(vector: dict[str, str]) -> SigningKey:
    return SigningKey.from_seed(bytes.fromhex(vector["vector-seed"]))


@pytest.fixture(scope="module")
def registry(vector: dict[str, str]) -> Registry:
    return Registry.from_mapping(json.loads(vector["vector-registry"]), source="docs/protocol.md")


# The bodies described in words in the doc, built field by field.
BODY_1 = BatchBody(
    election="demo-2026",
    device="town-p1-a",
    precinct="town-p1",
    seq=1,
    prev=GENESIS_HASH,
    issued_at="2026-11-03T20:01:00Z",
    ballots=3,
    counts={"mayor": {"ada": 2, "bo": 1}, "measure-1": {"yes": 1, "no": 2}},
)


def body_2(prev: str) -> BatchBody:
    return BatchBody(
        election="demo-2026",
        device="town-p1-a",
        precinct="town-p1",
        seq=2,
        prev=prev,
        issued_at="2026-11-03T20:02:00Z",
        ballots=2,
        counts={"mayor": {"ada": 0, "bo": 2}, "measure-1": {"yes": 2, "no": 0}},
        final=True,
        totals=Totals(5, {"mayor": {"ada": 2, "bo": 3}, "measure-1": {"yes": 3, "no": 2}}),
    )


def test_seed_is_bytes_0_to_31(vector: dict[str, str]) -> None:
    assert bytes.fromhex(vector["vector-seed"]) == bytes(range(32))


def test_public_key_and_kid(vector: dict[str, str], key: SigningKey) -> None:
    assert key.public.hex == vector["vector-public-key"]
    assert key.kid == vector["vector-kid"]


def test_registry_block_is_what_registry_save_writes(
    vector: dict[str, str], key: SigningKey, registry: Registry, tmp_path: Path
) -> None:
    entry = registry.lookup("town-p1-a")
    assert entry.public_key == key.public
    assert entry.precinct == "town-p1"
    file = registry.save(tmp_path)
    assert file.read_text(encoding="utf-8") == vector["vector-registry"] + "\n"


@pytest.mark.parametrize("n", [1, 2])
def test_code_produces_exactly_the_documented_bytes(
    n: int, vector: dict[str, str], key: SigningKey
) -> None:
    body = BODY_1 if n == 1 else body_2(vector["vector-body-sha256-1"])
    envelope = seal(body, key)
    assert body.to_bytes().decode() == vector[f"vector-body-{n}"]
    assert body_hash(body.to_bytes()) == vector[f"vector-body-sha256-{n}"]
    assert b64encode(envelope.sig) == vector[f"vector-sig-{n}"]
    assert envelope.to_bytes().decode() == vector[f"vector-envelope-{n}"]


@pytest.mark.parametrize("n", [1, 2])
def test_documented_envelopes_verify_against_the_documented_registry(
    n: int, vector: dict[str, str], registry: Registry
) -> None:
    raw = vector[f"vector-envelope-{n}"].encode()
    verified = verify(raw, registry, topic_device="town-p1-a")
    assert verified.envelope.body == vector[f"vector-body-{n}"].encode()
    assert verified.body_hash == vector[f"vector-body-sha256-{n}"]
    assert verified.body == parse_body(vector[f"vector-body-{n}"].encode())
    assert verified.body.final is (n == 2)


def test_the_two_batches_form_a_chain(vector: dict[str, str]) -> None:
    first = parse_body(vector["vector-body-1"].encode())
    second = parse_body(vector["vector-body-2"].encode())
    assert first.prev == GENESIS_HASH
    assert second.prev == body_hash(vector["vector-body-1"].encode())
    assert second.totals is not None and second.totals.ballots == first.ballots + second.ballots


def test_receipt_is_what_the_cloud_publishes(vector: dict[str, str]) -> None:
    receipt = Receipt("demo-2026", "town-p1-a", 2, vector["vector-body-sha256-2"])
    assert receipt.to_bytes().decode() == vector["vector-receipt"]
    assert Receipt.parse(vector["vector-receipt"].encode()) == receipt


def test_documented_topics(vector: dict[str, str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert f"`{batch_topic('demo-2026', 'town-p1-a')}`" in text
    assert f"`{receipt_topic('demo-2026', 'town-p1-a')}`" in text


def test_reject_table_lists_every_reason_once_with_its_error() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## 12. Reject reasons") : text.index("## 13.")]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ([^|]+?) \|", section, re.MULTILINE)
    assert sorted(reason for reason, _ in rows) == sorted(r.value for r in RejectReason)
    for reason, error in rows:
        if error.startswith("("):
            assert error == "(cloud ledger)"  # stateful: no exception class in protocol/
            continue
        assert getattr(protocol, error.strip("`")).reason == RejectReason(reason)
