"""Ed25519 device keys: generation, files, key ids, signing and verification.

Verification, the cloud's and the gateway's hottest CPU cost, runs on libsodium (PyNaCl) when it
is installed: about half the CPU of ``cryptography``'s OpenSSL verify (measured ~54 vs ~104 µs a
call, one core), and like it, it releases the GIL, so verify threads run side by side. Without
PyNaCl, ``cryptography`` verifies. Both accept exactly the signatures an Ed25519 signer
produces (RFC 8032, cofactorless); libsodium is stricter only on encodings no signer emits (a
small-order R or public key; a non-canonical key encoding), which it refuses: a refusal, never
an acceptance ``cryptography`` would not give. Signing and key files always use ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol._errors import BadBase64, KeyFileError

SIGNATURE_BYTES = 64
_Verifier = Callable[[bytes, bytes, bytes], bool]  # (public key raw, signature, message)


@functools.cache
def sodium_verifier() -> _Verifier | None:
    """libsodium's Ed25519 verification through PyNaCl, or None when PyNaCl is not installed.

    Loaded on the first verification, not at import (PyNaCl takes ~30 ms to import, and most
    commands never verify)."""
    try:
        from nacl.bindings import crypto_sign_open
        from nacl.exceptions import BadSignatureError
    except ImportError:
        return None

    def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
        if len(signature) != SIGNATURE_BYTES or len(public_raw) != 32:
            return False
        try:
            crypto_sign_open(signature + message, public_raw)
        except BadSignatureError:
            return False
        return True

    return verify


def key_id(public_raw: bytes) -> str:
    """The key id (``kid``): first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes
    # The parsed key, built once: re-parsing it on every verify cost a third of verify's time.
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            key = Ed25519PublicKey.from_public_bytes(self.raw)
        except ValueError as exc:
            raise KeyFileError(f"public key must be 32 bytes, got {len(self.raw)}") from exc
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise KeyFileError(f"public key {text!r} is not hex") from exc
        if len(raw) != 32:
            raise KeyFileError(f"public key must be 32 bytes, got {len(raw)}")
        return cls(raw)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def kid(self) -> str:
        return key_id(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        fast = sodium_verifier()
        if fast is not None:
            return fast(self.raw, signature, message)
        return self.verify_openssl(signature, message)

    def verify_openssl(self, signature: bytes, message: bytes) -> bool:
        """:meth:`verify` on ``cryptography`` (OpenSSL), whether or not PyNaCl is installed."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """A device's private key. Construct with :meth:`generate`, :meth:`from_seed` or :meth:`load`."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = PublicKey(
            key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        if len(seed) != 32:
            raise KeyFileError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write PKCS#8 PEM, readable by the owner only (mode 0600), atomically (:func:`write_secret`)."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret(path, pem, "private key")

    @property
    def kid(self) -> str:
        return self.public.kid

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str, *, what: str = "sig") -> bytes:
    """Decode standard padded base64 and insist on its one canonical spelling.

    Python's decoder ignores the unused low bits of the last character, so two spellings
    can decode to the same bytes; re-encoding and comparing closes that gap (a flipped bit
    there must not pass as the same signature).
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadBase64(f"{what} is not valid base64: {exc}") from exc
    if b64encode(raw) != text:
        raise BadBase64(f"{what} is not in canonical base64 form")
    return raw


def write_secret(path: Path, data: bytes, what: str, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` with ``mode`` (0600: the owner only), atomically.

    Written to a temporary file, synced, then renamed over ``path``: a crash leaves the
    old file or the new one, never half of it, and a replaced file never keeps a wider mode.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # a leftover tmp file keeps its old mode
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {what} {path}: {exc.strerror}") from exc
