"""The cloud's signed words: receipts and repair requests in an envelope signed by the cloud key.

Wire form: the envelope of a batch (docs/protocol.md §6) around the receipt's or the repair
request's canonical bytes, signed by the cloud's Ed25519 key, whose public half is in the
registry (``"cloud"``)::

    {"body": "<the receipt's canonical JSON>", "kid": "<the cloud key's kid>", "sig": "<base64>"}

The signature covers the whole body, election, device, seq and hash (or the missing ranges)
included, and a device accepts a word only for its own device and election: a receipt signed for
one device cannot be replayed onto another, nor onto another election. An unsigned word, a word
signed by any other key, or one for someone else is refused with a :class:`ProtocolError`
naming why; a device ignores it (and keeps its batches).
"""

from __future__ import annotations

from protocol._errors import BadSignature, TopicMismatch, WrongKey, shown
from protocol.envelope import Envelope, parse_envelope
from protocol.keys import PublicKey, SigningKey
from protocol.receipt import Receipt
from protocol.repair import RepairRequest

MAX_WORD_BYTES = 16 * 1024  # a receipt is ~150 bytes, a repair request of 64 ranges ~1.2 KiB


def _seal(word: Receipt | RepairRequest, key: SigningKey) -> bytes:
    body = word.to_bytes()
    return Envelope(body=body, sig=key.sign(body), kid=key.kid).to_bytes()


def sign_receipt(receipt: Receipt, key: SigningKey) -> bytes:
    return _seal(receipt, key)


def sign_repair(request: RepairRequest, key: SigningKey) -> bytes:
    return _seal(request, key)


def _open(payload: bytes, cloud_key: PublicKey | None, what: str) -> bytes:
    if cloud_key is None:
        raise WrongKey(f"{what} cannot be checked: the registry holds no cloud key (provision again)")
    envelope = parse_envelope(payload, max_bytes=MAX_WORD_BYTES)
    if envelope.kid != cloud_key.kid:
        raise WrongKey(f"{what} is signed with kid {shown(envelope.kid)}, the cloud's is {cloud_key.kid}")
    if not cloud_key.verify(envelope.sig, envelope.body):
        raise BadSignature(f"{what} signature does not verify with the cloud key")
    return envelope.body


def _for(word: Receipt | RepairRequest, what: str, election: str, device: str) -> None:
    if (word.election, word.device) != (election, device):
        raise TopicMismatch(
            f"{what} is for device {word.device!r} of election {word.election!r},"
            f" not {device!r} of {election!r}"
        )


def open_receipt(payload: bytes, cloud_key: PublicKey | None, *, election: str, device: str) -> Receipt:
    """The receipt in ``payload``, if the cloud signed it for ``device`` of ``election``."""
    receipt = Receipt.parse(_open(payload, cloud_key, "receipt"))
    _for(receipt, "receipt", election, device)
    return receipt


def open_repair(payload: bytes, cloud_key: PublicKey | None, *, election: str, device: str) -> RepairRequest:
    """The repair request in ``payload``, if the cloud signed it for ``device`` of ``election``."""
    request = RepairRequest.parse(_open(payload, cloud_key, "repair request"))
    _for(request, "repair request", election, device)
    return request
