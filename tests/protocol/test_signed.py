"""Signed receipts and repair requests: docs/protocol.md §9b's vectors, and every forgery a
device must ignore (unsigned, another key, tampered, replayed onto another device or election)."""

from __future__ import annotations

import re

import pytest

from protocol import (
    BadSignature,
    ProtocolError,
    Receipt,
    RepairRequest,
    SigningKey,
    TopicMismatch,
    WrongKey,
)
from protocol.signed import open_receipt, open_repair, sign_receipt, sign_repair
from tests.helpers import REPO

DOC = (REPO / "docs" / "protocol.md").read_text()
ELECTION, DEVICE = "sample-2026", "p-001-a"


def _block(name: str) -> str:
    match = re.search(rf"^```{name}\n(.*?)\n```$", DOC, re.MULTILINE | re.DOTALL)
    assert match is not None, f"docs/protocol.md has no {name} block"
    return match.group(1)


CLOUD = SigningKey.from_seed(bytes.fromhex(_block("signed-seed")))
RECEIPT = Receipt(ELECTION, DEVICE, 7, "ab" * 32)
REPAIR = RepairRequest(ELECTION, DEVICE, ((11, 12),))


def test_the_documented_vectors_are_what_the_code_signs() -> None:
    assert CLOUD.public.hex == _block("signed-public-key")
    assert CLOUD.kid == _block("signed-kid")
    assert sign_receipt(RECEIPT, CLOUD).decode() == _block("signed-receipt")
    assert sign_repair(REPAIR, CLOUD).decode() == _block("signed-repair")


def test_a_device_opens_what_the_cloud_signed_for_it() -> None:
    got = open_receipt(_block("signed-receipt").encode(), CLOUD.public, election=ELECTION, device=DEVICE)
    assert got == RECEIPT
    assert open_repair(sign_repair(REPAIR, CLOUD), CLOUD.public, election=ELECTION, device=DEVICE) == REPAIR


@pytest.mark.parametrize(
    ("payload", "error", "words"),
    [
        (RECEIPT.to_bytes(), ProtocolError, "envelope"),  # the unsigned receipt of before
        (sign_receipt(RECEIPT, SigningKey.from_seed(bytes(32))), WrongKey, "signed with kid"),
        (
            sign_receipt(RECEIPT, CLOUD).replace(b'\\"seq\\":7', b'\\"seq\\":9'),
            BadSignature,
            "does not verify",
        ),
        (sign_receipt(Receipt(ELECTION, "p-002-a", 7, "ab" * 32), CLOUD), TopicMismatch, "for device 'p-002-a'"),
        (sign_receipt(Receipt("other-2026", DEVICE, 7, "ab" * 32), CLOUD), TopicMismatch, "of election 'other-2026'"),
    ],
    ids=["unsigned", "another-key", "tampered-seq", "another-device", "another-election"],
)
def test_a_forged_receipt_is_refused_with_its_reason(payload: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=re.escape(words)):
        open_receipt(payload, CLOUD.public, election=ELECTION, device=DEVICE)


def test_a_forged_repair_request_is_refused() -> None:
    with pytest.raises(WrongKey):
        open_repair(sign_repair(REPAIR, SigningKey.from_seed(bytes(32))), CLOUD.public, election=ELECTION, device=DEVICE)
    with pytest.raises(TopicMismatch):
        open_repair(sign_repair(REPAIR, CLOUD), CLOUD.public, election=ELECTION, device="p-002-a")


def test_without_a_cloud_key_nothing_is_trusted() -> None:
    with pytest.raises(WrongKey, match="no cloud key"):
        open_receipt(sign_receipt(RECEIPT, CLOUD), None, election=ELECTION, device=DEVICE)
