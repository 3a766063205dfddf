"""What the cloud would receipt for a device, for tests that stand in for the cloud."""

from __future__ import annotations

from collections.abc import Mapping

from protocol import GENESIS_HASH, Receipt, SigningKey
from protocol.signed import sign_receipt


def contiguous_receipt(election: str, device: str, held: Mapping[int, str]) -> Receipt:
    """The receipt for ``held`` (seq -> body hash): the highest seq with every seq below it held."""
    top, top_hash = 0, GENESIS_HASH
    while top + 1 in held:
        top += 1
        top_hash = held[top]
    return Receipt(election, device, top, top_hash)


def signed_contiguous_receipt(election: str, device: str, held: Mapping[int, str], key: SigningKey) -> bytes:
    """:func:`contiguous_receipt` as the cloud publishes it: signed with the cloud ``key``."""
    return sign_receipt(contiguous_receipt(election, device, held), key)
