"""One tabulator's state: its signed batches, what the broker acknowledged, what the cloud receipted.

A batch is dropped from the tabulator's concern only when a receipt covers it: the cloud
holds every seq up to the receipt's, and the receipt's hash is the hash of our own body at
that seq (a receipt left retained by some other run, with other keys or seeds, does not match
and is ignored).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from devices.generator import iter_batches
from protocol import Election, Receipt, SigningKey, batch_topic, load_signing_key, seal
from protocol.envelope import body_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignedBatch:
    seq: int
    payload: bytes
    body_hash: str
    final: bool


class Tabulator:
    """In-memory state of one device. Building it signs its batches; no network I/O."""

    def __init__(self, election: Election, device: str, key: SigningKey, seed: int, batches: int) -> None:
        self.election = election
        self.device = device
        self.topic = batch_topic(election.id, device)
        self.batches: list[SignedBatch] = []
        for body in iter_batches(election, seed, device, batches):
            envelope = seal(body, key)
            self.batches.append(
                SignedBatch(body.seq, envelope.to_bytes(), body_hash(envelope.body), body.final)
            )
        self.acked: set[int] = set()  # PUBACKed by the edge broker at least once
        self.receipted = 0  # highest seq covered by a matching receipt
        self.publishes = 0
        self.resends = 0

    @classmethod
    def load(cls, election: Election, keys: Path, device: str, seed: int, batches: int) -> Tabulator:
        return cls(election, device, load_signing_key(keys, device), seed, batches)

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
        self.receipted = receipt.seq
        # A receipt implies the broker took those batches: nothing below it needs publishing.
        self.acked.update(range(1, receipt.seq + 1))
        return True
