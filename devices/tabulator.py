"""One tabulator's state: its signed batches, what the broker acknowledged, what the cloud receipted.

A batch is dropped from the tabulator's concern only when a receipt covers it: the cloud
holds every seq up to the receipt's, and the receipt's hash is the hash of our own body at
that seq (a receipt left retained by some other run, with other keys or seeds, does not match
and is ignored).

In memory only (``Tabulator(...)`` / ``Tabulator.load(...)``), or backed by a
:class:`devices.state.StateStore` (``Tabulator.open(..., store)``): the tabulator then resumes
from what the store holds (its chain position, what was acked and receipted, the exact bytes
of every unreceipted batch it sent) and persists every change. With a store, call
:meth:`Tabulator.record_sent` BEFORE publishing a batch (write-ahead; see devices/state.py);
:meth:`mark_acked` and :meth:`apply_receipt` persist by themselves.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from devices._exceptions import StateMismatch
from devices.generator import iter_batches
from devices.state import DeviceState, StateStore
from protocol import BatchBody, Election, Receipt, SigningKey, batch_topic, load_signing_key, seal
from protocol.canonical import dumps as canonical_dumps
from protocol.envelope import body_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignedBatch:
    seq: int
    payload: bytes
    body_hash: str
    final: bool


_election_digests: dict[int, tuple[weakref.ref[Election], str]] = {}


def _election_digest(election: Election) -> str:
    """SHA-256 of the election's canonical form, computed once per Election object."""
    cached = _election_digests.get(id(election))
    if cached is not None and cached[0]() is election:
        return cached[1]
    digest = hashlib.sha256(canonical_dumps(election.to_mapping())).hexdigest()
    _election_digests[id(election)] = (weakref.ref(election), digest)
    return digest


def state_fingerprint(election: Election, seed: int, batches: int, kid: str, variant: str = "") -> str:
    """What a device's batches are made of; stored state made of anything else is refused.

    ``variant`` names a change to the generated bodies (``adjust``, e.g. a clock skew).
    """
    base = f"v1:{_election_digest(election)[:32]}:seed={seed}:batches={batches}:kid={kid}"
    return f"{base}:{variant}" if variant else base


Adjust = Callable[[BatchBody], BatchBody]  # rewrites a generated body before signing (behaviours)


class Tabulator:
    """State of one device. Building it signs its batches; no network I/O (``open`` reads disk)."""

    def __init__(
        self,
        election: Election,
        device: str,
        key: SigningKey,
        seed: int,
        batches: int,
        adjust: Adjust | None = None,
    ) -> None:
        """``adjust`` rewrites each generated body before it is signed; the chain (``prev``)
        is then rebuilt over the rewritten bodies."""
        self.election = election
        self.device = device
        self.key: SigningKey | None = key  # None once forgotten (forget_key)
        self.topic = batch_topic(election.id, device)
        self.batches: list[SignedBatch] = []
        prev: str | None = None
        for generated in iter_batches(election, seed, device, batches):
            body = generated
            if adjust is not None:
                body = adjust(generated if prev is None else replace(generated, prev=prev))
                prev = body_hash(body.to_bytes())
            envelope = seal(body, key)
            self.batches.append(
                SignedBatch(body.seq, envelope.to_bytes(), body_hash(envelope.body), body.final)
            )
        self.acked: set[int] = set()  # PUBACKed by the edge broker at least once
        self.receipted = 0  # highest seq covered by a matching receipt
        self.publishes = 0
        self.resends = 0
        # Words from the cloud ignored, (word, reason) -> count: devices/fleet/words.py
        self.ignored: dict[tuple[str, str], int] = {}
        self.store: StateStore | None = None
        self.sent_seq = 0  # highest seq recorded as sent (write-ahead); only kept with a store
        self.restored: DeviceState | None = None  # what the store held when opened

    def forget_key(self) -> None:
        """Drop the private key: every batch is signed when the tabulator is built, and a device
        that signs nothing later (no behaviour) needs it no more. Measured here, a key held
        ~3 KiB per device (OpenSSL's objects), a third of a connected device in a fleet."""
        self.key = None

    @classmethod
    def load(cls, election: Election, keys: Path, device: str, seed: int, batches: int) -> Tabulator:
        return cls(election, device, load_signing_key(keys, device), seed, batches)

    @classmethod
    def open(
        cls,
        election: Election,
        device: str,
        key: SigningKey,
        seed: int,
        batches: int,
        store: StateStore,
        adjust: Adjust | None = None,
        variant: str = "",
    ) -> Tabulator:
        """Build the device and resume it from ``store`` (which must be open).

        ``adjust``/``variant``: see :meth:`__init__` and :func:`state_fingerprint`.
        Raises :class:`~devices._exceptions.StateMismatch` when the stored state was made of
        other inputs, or a stored batch is not the one these inputs produce at its seq.
        """
        tab = cls(election, device, key, seed, batches, adjust)
        state = store.bind(device, state_fingerprint(election, seed, batches, key.kid, variant))
        tab._restore(state, store)
        tab.store = store
        tab.restored = state
        return tab

    def _restore(self, state: DeviceState, store: StateStore) -> None:
        if state.seq > len(self.batches):
            raise StateMismatch(
                f"{store.path}: device={self.device} has sent seq {state.seq}, beyond its"
                f" {len(self.batches)} batches"
            )
        for sent in state.sent:
            ours = self.batches[sent.seq - 1]
            if ours.body_hash != sent.body_hash:
                raise StateMismatch(
                    f"{store.path}: device={self.device} seq={sent.seq} was sent with another body"
                    " than these inputs produce; refusing to send a second one"
                )
            if sent.payload is not None and sent.payload != ours.payload:
                # Same body, other bytes (cannot happen with deterministic Ed25519): resend
                # exactly what was sent before.
                self.batches[sent.seq - 1] = replace(ours, payload=sent.payload)
            if sent.acked:
                self.acked.add(sent.seq)
        self.sent_seq = state.seq
        if state.receipted_seq:
            if self.batches[state.receipted_seq - 1].body_hash != state.receipted_hash:
                raise StateMismatch(
                    f"{store.path}: device={self.device} receipt for seq {state.receipted_seq}"
                    " does not match our batch"
                )
            self.receipted = state.receipted_seq
            self.acked.update(range(1, state.receipted_seq + 1))

    def record_sent(self, seq: int) -> SignedBatch:
        """Write-ahead: persist ``seq`` (and every earlier unrecorded one) before it is published.

        Returns the batch to publish (its bytes are the recorded ones). Without a store it
        only tracks ``sent_seq``.
        """
        batch = self.batches[seq - 1]
        if self.store is not None and seq > self.sent_seq:
            with self.store.group():
                for earlier in self.batches[self.sent_seq : seq]:
                    self.store.record_sent(self.device, earlier.seq, earlier.body_hash, earlier.payload)
        self.sent_seq = max(self.sent_seq, seq)
        return batch

    @property
    def final_seq(self) -> int:
        return self.batches[-1].seq

    @property
    def confirmed(self) -> bool:
        return self.receipted >= self.final_seq

    @property
    def all_acked(self) -> bool:
        return len(self.acked) == len(self.batches)

    def unacked(self) -> list[SignedBatch]:
        return [b for b in self.batches if b.seq not in self.acked]

    def unreceipted(self) -> list[SignedBatch]:
        return [b for b in self.batches if b.seq > self.receipted]

    def mark_acked(self, seq: int) -> None:
        if self.store is not None and seq not in self.acked:
            self.record_sent(seq)  # a no-op when the caller did the write-ahead (it should)
            self.store.record_acked(self.device, seq)
        self.acked.add(seq)

    def apply_receipt(self, receipt: Receipt) -> bool:
        """Advance ``receipted``; True if the receipt covered something new."""
        if receipt.device != self.device or receipt.election != self.election.id:
            return False
        if receipt.seq <= self.receipted:
            return False
        if receipt.seq > self.final_seq:
            log.warning(
                "device=%s receipt for seq %d beyond our final seq %d ignored",
                self.device,
                receipt.seq,
                self.final_seq,
            )
            return False
        ours = self.batches[receipt.seq - 1]
        if ours.body_hash != receipt.hash:
            log.warning(
                "device=%s seq=%d receipt hash does not match our batch; ignored", self.device, receipt.seq
            )
            return False
        if self.store is not None:
            self.record_sent(receipt.seq)  # the cloud has them, so they were sent
            self.store.record_receipt(self.device, receipt.seq, receipt.hash)
        self.receipted = receipt.seq
        # A receipt implies the broker took those batches: nothing below it needs publishing.
        self.acked.update(range(1, receipt.seq + 1))
        return True
