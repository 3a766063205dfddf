"""The station's logic: keying, comparing, resolving, correcting, and the batches it signs.

A round's figures are always the full sheet as keyed (for a correction, the corrected sheet);
what is signed and sent is the round's deltas against the figures already sent for the sheet
(round 0: the sheet itself), so the cloud's sum over a sheet's batches is its latest figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgetally.entry.errors import EntryError, SheetRefused
from edgetally.entry.sheet import Figures, check_figures, differences, zero
from edgetally.entry.state import Keying, PendingBatch, Round, StationState
from protocol import BatchBody, DeviceEntry, Registry, SigningKey, body_hash, seal
from protocol.entry import ROLE_OPERATOR, ROLE_SUPERVISOR, Entry, Signature, sheet_message
from protocol.registry import load_operator_key, load_signing_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a keying or a resolution led to."""

    round: Round
    batch: PendingBatch | None  # signed, to publish
    waiting: bool = False  # only one operator has keyed this round
    conflict: list[tuple[str, str, int, int]] | None = None


def correction_reason(text: str) -> str:
    text = text.strip()
    return text if text.lower().startswith("correction") else f"correction: {text}"


class Station:
    """A data-entry station over a keys directory (registry, keys) and its state (open)."""

    def __init__(self, registry: Registry, keys: Path, state: StationState) -> None:
        self.registry = registry
        self.election = registry.election
        self.keys = keys
        self.state = state

    def source(self, precinct: str) -> DeviceEntry:
        unit = self.election.units.get(precinct)
        if unit is None or not unit.is_precinct:
            raise EntryError(f"election {self.election.id!r} has no precinct {precinct!r}")
        found = self.registry.manual_source(precinct)
        if found is None:
            raise EntryError(
                f"precinct {precinct!r} has no manual source in the registry: provision with"
                " `edgetally devices provision --operators N`"
            )
        return found

    def _person(self, name: str, role: str) -> SigningKey:
        person = self.registry.operators.get(name)
        if person is None or person.role != role:
            raise EntryError(f"{name!r} is not a registered {role} (registry operators section)")
        key = load_operator_key(self.keys, name)
        if key.kid != person.kid:
            raise EntryError(f"the key of {role} {name!r} in {self.keys} is not the registered one")
        return key

    # -- keying -----------------------------------------------------------------------
    def key(self, sheet: str, precinct: str, operator: str, figures: Figures, *, reason: str | None = None) -> Outcome:
        """Record ``operator``'s keying of ``sheet`` (a correction with ``reason``), signed."""
        check_figures(self.election, figures)
        key = self._person(operator, ROLE_OPERATOR)
        device = self.source(precinct)
        current = self.state.current(sheet)
        if current is not None and current.precinct != precinct:
            raise EntryError(f"sheet {sheet!r} is a sheet of precinct {current.precinct!r}, not {precinct!r}")
        if reason is None:
            if current is not None and current.status in ("signed", "sent"):
                raise EntryError(f"sheet {sheet!r} was submitted already: a change is `entry correct --reason ...`")
            number = 0
        else:
            if current is None or (current.round == 0 and current.status not in ("signed", "sent")):
                raise EntryError(f"sheet {sheet!r} was never submitted: there is nothing to correct")
            open_round = current.status in ("keying", "conflict")
            number = current.round if open_round else current.round + 1
            if open_round and current.reason != reason:
                raise EntryError(f"sheet {sheet!r} correction {number} is keyed with the reason {current.reason!r}")
        deltas = figures.minus(self.state.sent_figures(sheet) or zero(self.election))
        message = sheet_message(self.election.id, precinct, sheet, deltas.ballots, deltas.counts, reason)
        keying = Keying(operator, ROLE_OPERATOR, figures, key.kid, key.sign(message))
        with self.state.transaction() as db:
            if current is None or current.round != number:
                self.state.start_round(db, sheet, number, precinct, device.device, reason)
            if any(k.signer == operator for k in self.state.keyings(sheet, number)):
                raise EntryError(f"{operator} has keyed sheet {sheet!r} already: the second keying is another operator's")
            self.state.add_keying(db, sheet, number, keying)
        return self._compare(sheet, number)

    def _compare(self, sheet: str, number: int) -> Outcome:
        keyings = self.state.keyings(sheet, number)
        current = self.state.current(sheet)
        assert current is not None and current.round == number
        if len(keyings) < 2:
            return Outcome(current, None, waiting=True)
        first = keyings[0]
        diff = [row for other in keyings[1:] for row in differences(first.figures, other.figures)]
        if diff:
            with self.state.transaction() as db:
                self.state.set_status(db, sheet, number, "conflict")
            log.warning("sheet=%s round=%d keyings differ: nothing sent", sheet, number)
            return Outcome(self.state.current(sheet) or current, None, conflict=diff)
        return self._sign(current, first.figures, [Signature(k.signer, k.kid, k.sig) for k in keyings], None)

    def resolve(self, sheet: str, supervisor: str, figures: Figures) -> Outcome:
        """The supervisor's figures for a sheet in conflict, signed; the batch follows."""
        check_figures(self.election, figures)
        current = self.state.current(sheet)
        if current is None or current.status != "conflict":
            raise EntryError(f"sheet {sheet!r} has no conflict to resolve")
        key = self._person(supervisor, ROLE_SUPERVISOR)
        keyings = self.state.keyings(sheet, current.round)
        agreeing = [Signature(k.signer, k.kid, k.sig) for k in keyings if not differences(k.figures, figures)]
        deltas = figures.minus(self.state.sent_figures(sheet) or zero(self.election))
        message = sheet_message(self.election.id, current.precinct, sheet, deltas.ballots, deltas.counts, current.reason)
        resolution = Signature(supervisor, key.kid, key.sign(message))
        with self.state.transaction() as db:
            self.state.add_keying(db, sheet, current.round, Keying(supervisor, ROLE_SUPERVISOR, figures, key.kid, resolution.sig))
        return self._sign(current, figures, agreeing, resolution)

    def _sign(self, current: Round, figures: Figures, operators: list[Signature], resolved_by: Signature | None) -> Outcome:
        deltas = figures.minus(self.state.sent_figures(current.sheet) or zero(self.election))
        device_key = load_signing_key(self.keys, current.device)
        seq, prev = self.state.chain_head(current.device)
        body = BatchBody(
            election=self.election.id,
            device=current.device,
            precinct=current.precinct,
            seq=seq + 1,
            prev=prev,
            issued_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            ballots=deltas.ballots,
            counts=deltas.counts,
            entry=Entry(current.sheet, tuple(operators), resolved_by, current.reason),
        )
        envelope = seal(body, device_key)
        batch = PendingBatch(current.device, body.seq, current.sheet, current.round, envelope.to_bytes())
        with self.state.transaction() as db:
            self.state.record_batch(db, batch, body_hash(envelope.body))
            self.state.set_status(
                db, current.sheet, current.round, "signed", figures, None if resolved_by is None else resolved_by.signer
            )
        log.info("sheet=%s round=%d signed as device=%s seq=%d", current.sheet, current.round, current.device, body.seq)
        return Outcome(self.state.current(current.sheet) or current, batch)

    def conflicts(self) -> list[tuple[Round, list[Keying]]]:
        return [(r, self.state.keyings(r.sheet, r.round)) for r in self.state.rounds() if r.status == "conflict"]


__all__ = ["Outcome", "SheetRefused", "Station", "correction_reason"]
