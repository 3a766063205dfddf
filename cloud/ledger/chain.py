"""What a group of verified batches does to the ledger, decided in memory.

The ledger loads, inside its transaction, every row a group can collide with (the key of
each batch and its two neighbours, and every row above each device's contiguous seq); this
module then decides, batch by batch and in arrival order, what each one is:

- same (election, device, seq) already held with the same body hash: a duplicate;
- same key with another body hash: rejected, ``conflict``;
- seq above the device's final seq, or a final batch below a seq already held: ``after_final``;
- seq - 1 held and its hash != prev, or seq + 1 held and its prev != this hash: ``broken_chain``;
- otherwise accepted (out-of-order arrival is fine).

Decisions see the batches accepted earlier in the same group, so a group behaves exactly as
if its batches had been recorded one transaction each. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from protocol import Receipt, RejectReason, VerifiedBatch

DeviceKey = tuple[str, str]  # (election, device)
BatchKey = tuple[str, str, int]  # (election, device, seq)


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: RejectReason | None = None
    detail: str = ""


@dataclass(slots=True)
class HeldBatch:
    """A ledger row as far as decisions go. ``new`` rows are inserted by this group."""

    body_hash: str
    prev: str
    new: bool = False
    duplicates: int = 0  # added by this group


@dataclass(slots=True)
class DeviceState:
    """A devices row, updated in memory as the group is decided."""

    election: str
    device: str
    precinct: str
    contiguous_seq: int
    contiguous_hash: str
    final_seq: int | None
    max_seq: int
    ballots: int = 0  # accepted ballots, cumulative (devices.ballots; the rules read it)
    batches_added: int = 0
    ballots_added: int = 0
    duplicates_added: int = 0
    touched: bool = False

    @property
    def key(self) -> DeviceKey:
        return (self.election, self.device)

    def receipt(self) -> Receipt:
        return Receipt(self.election, self.device, self.contiguous_seq, self.contiguous_hash)


@dataclass
class GroupPlan:
    """Decisions for one group. Feed batches to :meth:`decide` in arrival order, then
    call :meth:`finish` once to advance each device's contiguous seq."""

    devices: dict[DeviceKey, DeviceState]
    held: dict[BatchKey, HeldBatch]
    accepted: list[VerifiedBatch] = field(default_factory=list)

    def decide(self, batch: VerifiedBatch) -> Decision:
        body = batch.body
        state = self.devices[(body.election, body.device)]
        key = body.key
        held = self.held.get(key)
        if held is not None:
            if held.body_hash == batch.body_hash:
                held.duplicates += 1
                state.duplicates_added += 1
                state.touched = True
                return Decision(Verdict.DUPLICATE)
            return _reject(
                RejectReason.CONFLICT,
                f"device={body.device} seq={body.seq}: the ledger holds body {held.body_hash},"
                f" this one hashes to {batch.body_hash}",
            )
        if state.final_seq is not None and body.seq > state.final_seq:
            return _reject(
                RejectReason.AFTER_FINAL,
                f"device={body.device} seq={body.seq} is above the device's final seq {state.final_seq}",
            )
        if body.final and state.max_seq > body.seq:
            return _reject(
                RejectReason.AFTER_FINAL,
                f"device={body.device} seq={body.seq} is final, but seq {state.max_seq} is already held",
            )
        below = self.held.get((body.election, body.device, body.seq - 1))
        if below is not None and below.body_hash != body.prev:
            return _reject(
                RejectReason.BROKEN_CHAIN,
                f"device={body.device} seq={body.seq}: prev {body.prev} is not the hash"
                f" {below.body_hash} of seq {body.seq - 1}",
            )
        above = self.held.get((body.election, body.device, body.seq + 1))
        if above is not None and above.prev != batch.body_hash:
            return _reject(
                RejectReason.BROKEN_CHAIN,
                f"device={body.device} seq={body.seq}: hash {batch.body_hash} is not the prev"
                f" {above.prev} of seq {body.seq + 1}",
            )
        self.held[key] = HeldBatch(batch.body_hash, body.prev, new=True)
        self.accepted.append(batch)
        state.max_seq = max(state.max_seq, body.seq)
        if body.final:
            state.final_seq = body.seq
        state.batches_added += 1
        state.ballots += body.ballots
        state.ballots_added += body.ballots
        state.touched = True
        return Decision(Verdict.ACCEPTED)

    def finish(self) -> None:
        """Advance each touched device's contiguous seq over the batches now held."""
        for state in self.devices.values():
            if not state.touched:
                continue
            # Every held row above contiguous_seq is in ``held`` (the ledger loaded them),
            # so this walk is bounded by the device's max seq.
            while state.contiguous_seq < state.max_seq:
                following = self.held.get((state.election, state.device, state.contiguous_seq + 1))
                if following is None:
                    break
                state.contiguous_seq += 1
                state.contiguous_hash = following.body_hash

    def receipts(self) -> list[Receipt]:
        """One receipt per device the group touched (accepted or duplicate)."""
        return [
            s.receipt() for s in sorted(self.devices.values(), key=lambda s: s.key) if s.touched
        ]


def _reject(reason: RejectReason, detail: str) -> Decision:
    return Decision(Verdict.REJECTED, reason, detail)
