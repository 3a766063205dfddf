"""Ed25519 keys: seeds, PEM files and their mode, key ids, signatures, strict base64."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import BadBase64, KeyFileError, PublicKey, RejectReason, SigningKey
from protocol.keys import b64decode_strict, b64encode, key_id

# RFC 8032 section 7.1, TEST 1: proves SigningKey is plain Ed25519 (seed = private key).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_seed_gives_the_rfc8032_public_key_and_signature() -> None:
    key = SigningKey.from_seed(RFC8032_SEED)
    assert key.public.hex == RFC8032_PUBLIC
    assert key.sign(b"") == RFC8032_SIG_EMPTY


def test_signatures_are_deterministic_and_verify() -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    assert key.sign(b"body") == key.sign(b"body")
    assert key.public.verify(key.sign(b"body"), b"body")


def test_verify_is_false_for_another_message_or_another_key() -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    other = SigningKey.from_seed(bytes(32))
    sig = key.sign(b"body")
    assert not key.public.verify(sig, b"bodY")
    assert not other.public.verify(sig, b"body")
    assert not key.public.verify(sig[:63], b"body")


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_seed_must_be_32_bytes(length: int) -> None:
    with pytest.raises(KeyFileError, match=f"32 bytes, got {length}"):
        SigningKey.from_seed(bytes(length))


def test_kid_is_first_16_hex_digits_of_sha256_of_the_raw_public_key() -> None:
    key = SigningKey.from_seed(RFC8032_SEED)
    expected = hashlib.sha256(bytes.fromhex(RFC8032_PUBLIC)).hexdigest()[:16]
    assert key.kid == key.public.kid == key_id(key.public.raw) == expected
    assert len(key.kid) == 16


def test_generated_keys_differ() -> None:
    assert SigningKey.generate().kid != SigningKey.generate().kid


def test_save_then_load_gives_the_same_key(tmp_path: Path) -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    path = tmp_path / "dev.pem"
    key.save(path)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = SigningKey.load(path)
    assert loaded.public == key.public
    assert loaded.sign(b"x") == key.sign(b"x")


def test_saved_key_file_is_readable_by_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "dev.pem"
    SigningKey.generate().save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_saving_over_a_world_readable_file_leaves_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "dev.pem"
    path.write_text("old")
    path.chmod(0o644)
    key = SigningKey.generate()
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).public == key.public
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.pem"]  # no temporary left


def test_save_into_a_missing_directory_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot write private key"):
        SigningKey.generate().save(tmp_path / "missing" / "dev.pem")


def test_load_of_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.pem"
    with pytest.raises(KeyFileError, match=f"cannot read private key {path}") as caught:
        SigningKey.load(path)
    assert caught.value.reason is RejectReason.KEY_FILE


def test_load_of_a_non_pem_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="is not an unencrypted PEM private key"):
        SigningKey.load(path)


def test_load_of_an_encrypted_pem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "locked.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path.write_bytes(pem)
    with pytest.raises(KeyFileError, match="is not an unencrypted PEM private key"):
        SigningKey.load(path)


def test_load_of_a_non_ed25519_key_names_its_type(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        SigningKey.load(path)


def test_public_key_from_hex_round_trips() -> None:
    assert PublicKey.from_hex(RFC8032_PUBLIC).hex == RFC8032_PUBLIC


@pytest.mark.parametrize(("text", "problem"), [("zz" * 32, "is not hex"), ("00" * 31, "32 bytes, got 31")])
def test_public_key_from_bad_hex_is_refused(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError, match=problem):
        PublicKey.from_hex(text)


def test_strict_base64_decodes_standard_padded_base64() -> None:
    data = bytes(range(64))
    assert b64decode_strict(b64encode(data)) == data


def _respell_last_char(text: str) -> str:
    """Same bytes, other spelling: flip an unused low bit of the last data character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stripped = text.rstrip("=")
    last = alphabet[alphabet.index(stripped[-1]) ^ 1]
    return stripped[:-1] + last + text[len(stripped) :]


def test_non_canonical_base64_is_refused_although_python_would_decode_it() -> None:
    text = b64encode(bytes(range(64)))
    respelled = _respell_last_char(text)
    assert base64.b64decode(respelled) == bytes(range(64))  # the gap being closed
    with pytest.raises(BadBase64, match="sig is not in canonical base64 form"):
        b64decode_strict(respelled, what="sig")


@pytest.mark.parametrize(
    "text",
    ["abc", "ab!d", "YWJj\n", "YWJjZA", "YWJjZA===", "ÿÿÿÿ", "YW Jj"],
)
def test_invalid_base64_is_refused(text: str) -> None:
    with pytest.raises(BadBase64, match="sig is not") as caught:
        b64decode_strict(text, what="sig")
    assert caught.value.reason is RejectReason.BAD_BASE64
