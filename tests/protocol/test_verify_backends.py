"""Ed25519 verification gives the same answer on libsodium (PyNaCl) and on cryptography.

protocol/keys.py verifies with libsodium when PyNaCl is installed (half the CPU) and with
cryptography otherwise: a batch must be accepted or refused alike whichever is installed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol import PublicKey, SigningKey
from protocol.keys import sodium_verifier

# RFC 8032 section 7.1, TEST 2 (one-byte message 0x72).
RFC8032_2_PUBLIC = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
RFC8032_2_SIG = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)
L = 2**252 + 27742317777372353535851937790883648493  # the group order

Verify = Callable[[PublicKey, bytes, bytes], bool]


def _openssl(key: PublicKey, sig: bytes, message: bytes) -> bool:
    return key.verify_openssl(sig, message)


def _sodium(key: PublicKey, sig: bytes, message: bytes) -> bool:
    fast = sodium_verifier()
    assert fast is not None
    return fast(key.raw, sig, message)


BACKENDS = [
    pytest.param(_openssl, id="cryptography"),
    pytest.param(
        _sodium,
        id="libsodium",
        marks=pytest.mark.skipif(sodium_verifier() is None, reason="PyNaCl is not installed"),
    ),
]
KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(32))
MESSAGE = b'{"ballots":12,"counts":{}}' * 12


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _s_plus_l(sig: bytes) -> bytes:
    """The same signature with S + L: the one non-canonical spelling that fits in 32 bytes."""
    s = int.from_bytes(sig[32:], "little") + L
    return sig[:32] + s.to_bytes(32, "little")


def _cases() -> list[tuple[str, PublicKey, bytes, bytes, bool]]:
    sig = KEY.sign(MESSAGE)
    return [
        ("rfc8032 test 2", PublicKey.from_hex(RFC8032_2_PUBLIC), RFC8032_2_SIG, b"\x72", True),
        ("a device's signature", KEY.public, sig, MESSAGE, True),
        ("empty message", KEY.public, KEY.sign(b""), b"", True),
        ("a bit of R flipped", KEY.public, _flip(sig, 3), MESSAGE, False),
        ("a bit of S flipped", KEY.public, _flip(sig, 40), MESSAGE, False),
        ("a bit of the message flipped", KEY.public, sig, _flip(MESSAGE, 100), False),
        ("another device's key", OTHER.public, sig, MESSAGE, False),
        ("signature one byte short", KEY.public, sig[:-1], MESSAGE, False),
        ("signature one byte long", KEY.public, sig + b"\x00", MESSAGE, False),
        ("all zeros", KEY.public, bytes(64), MESSAGE, False),
        ("S + L (malleated)", KEY.public, _s_plus_l(sig), MESSAGE, False),
    ]


@pytest.mark.parametrize("verify", BACKENDS)
@pytest.mark.parametrize(("name", "key", "sig", "message", "expected"), _cases(), ids=[c[0] for c in _cases()])
def test_each_backend_accepts_exactly_the_valid_signatures(
    verify: Verify, name: str, key: PublicKey, sig: bytes, message: bytes, expected: bool
) -> None:
    assert verify(key, sig, message) is expected


def test_public_key_verify_uses_whichever_backend_is_installed() -> None:
    sig = KEY.sign(MESSAGE)
    assert KEY.public.verify(sig, MESSAGE)
    assert not KEY.public.verify(_flip(sig, 40), MESSAGE)
