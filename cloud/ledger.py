"""The ledger: verify envelopes and record a whole group of them in ONE transaction.

For each group: every envelope is verified against the registry (outside the transaction;
a verification failure becomes a rejection row). Then, in one transaction, the rows the
group can collide with are loaded (device rows locked ``FOR UPDATE`` on PostgreSQL), each
batch is decided in memory (cloud/chain.py) and everything is written at once: new ledger
rows, duplicate counts, tallies, precinct ballots, device state and rejections. A bad
message is decided, not executed, so it can never roll the others back.

Correctness rests on the unique key (election, device, seq): should another worker insert a
row this group was about to insert, the transaction fails on that key and the whole group is
decided again against what is now held.

Bundles (protocol/bundle.py): :func:`unwrap` turns a gateway's bundle into one
:class:`Inbound` per entry, on the entry's own topic, so every entry is verified, recorded and
rejected exactly as if it had arrived alone; the worker records all entries of a bundle in the
same group (one transaction). A bundle whose framing is corrupt becomes one refused
:class:`Inbound` (the whole bundle, its topic and the reason), stored as one rejection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc, select
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud._exceptions import DatabaseError, ElectionMismatch
from cloud.chain import BatchKey, GroupPlan, Verdict
from cloud.db import insert_missing, translate_errors
from cloud.ledger_store import load_devices, load_held, write_group
from protocol import (
    GENESIS_HASH,
    BadBundle,
    BadTopic,
    ProtocolError,
    Receipt,
    Registry,
    RejectReason,
    VerifiedBatch,
    bundle,
    canonical,
    parse_batch_topic,
    parse_body,
    parse_envelope,
    parse_gateway_topic,
    sha256_hex,
    verify,
)

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 3
_KEY_CHUNK = 300  # batch keys per IN (...) list: 900 bound parameters


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as it arrived: topic, exact payload bytes, arrival time (UTC).

    ``refused`` is set when the message was refused before it reached the ledger (a bundle
    whose framing is corrupt): it is stored as a rejection with that error's reason.
    """

    topic: str
    payload: bytes
    received_at: datetime
    refused: ProtocolError | None = None


def unwrap(topic: str, payload: bytes, received_at: datetime) -> tuple[Inbound, ...]:
    """What one MQTT message holds for the ledger: itself, or a bundle's entries."""
    if parse_gateway_topic(topic, "bundle") is None:
        return (Inbound(topic, payload, received_at),)
    try:
        entries = bundle.decode(payload)
    except BadBundle as err:
        return (Inbound(topic, payload, received_at, refused=err),)
    return tuple(Inbound(e.topic, e.payload, received_at) for e in entries)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one inbound message."""

    verdict: Verdict
    election: str | None = None
    device: str | None = None
    seq: int | None = None
    reason: RejectReason | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GroupResult:
    """Outcomes in input order, and the receipts to publish now that the group committed."""

    outcomes: tuple[Outcome, ...]
    receipts: tuple[Receipt, ...]

    def count(self, verdict: Verdict) -> int:
        return sum(1 for o in self.outcomes if o.verdict is verdict)


@dataclass(frozen=True, slots=True)
class _Rejection:
    reason: RejectReason
    detail: str
    election: str | None = None
    device: str | None = None
    seq: int | None = None


class Ledger:
    """Records groups of inbound messages. Constructing it does no I/O."""

    def __init__(self, engine: Engine, registry: Registry, *, max_payload_bytes: int) -> None:
        self._engine = engine
        self._registry = registry
        self._max_bytes = max_payload_bytes

    # -- start -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Store the election definition and a row per registered device.

        Raises :class:`ElectionMismatch` if the database holds another definition of the
        same election: tallies must never mix two definitions.
        """
        election = self._registry.election
        definition = canonical.dumps(election.to_mapping()).decode("utf-8")
        now = datetime.now(UTC)
        with translate_errors("storing the election"), self._engine.begin() as conn:
            stored = conn.execute(
                select(models.elections.c.definition).where(
                    models.elections.c.election == election.id
                )
            ).scalar_one_or_none()
            if stored is None:
                conn.execute(
                    models.elections.insert().values(
                        election=election.id,
                        name=election.name,
                        definition=definition,
                        stored_at=now,
                    )
                )
            elif stored != definition:
                raise ElectionMismatch(
                    f"the database holds another definition of election {election.id!r};"
                    " use a fresh database for a changed election"
                )
            insert_missing(
                conn,
                models.devices,
                self._device_rows(self._registry.devices),
                key=("election", "device"),
            )

    def _device_rows(self, names: Iterable[str]) -> list[dict[str, Any]]:
        election = self._registry.election.id
        return [
            {
                "election": election,
                "device": name,
                "precinct": self._registry.devices[name].precinct,
                "contiguous_seq": 0,
                "contiguous_hash": GENESIS_HASH,
                "final_seq": None,
                "max_seq": 0,
                "batches": 0,
                "duplicates": 0,
                "updated_at": None,
            }
            for name in sorted(names)
        ]

    # -- recording ---------------------------------------------------------------------
    def record(self, messages: Sequence[Inbound]) -> GroupResult:
        """Verify and record ``messages`` in one transaction; return what became of each.

        Raises :class:`DatabaseUnavailable` (retry later: nothing was committed) or
        :class:`DatabaseError`.
        """
        checked = [self._verify(m) for m in messages]
        with translate_errors("recording a group"):
            for attempt in range(1, CONFLICT_RETRIES + 1):
                try:
                    with self._engine.begin() as conn:
                        result = self._record(conn, messages, checked)
                except exc.IntegrityError as err:
                    # Another worker inserted one of our keys first: decide again.
                    log.warning(
                        "group of %d hit a concurrent insert (attempt %d): %s",
                        len(messages),
                        attempt,
                        err.orig,
                    )
                    continue
                _log_outcomes(result.outcomes)  # committed: now it is true
                return result
        raise DatabaseError(f"a group of {len(messages)} kept conflicting with concurrent writers")

    def _verify(self, message: Inbound) -> VerifiedBatch | _Rejection:
        if message.refused is not None:
            return _Rejection(message.refused.reason, str(message.refused))
        try:
            topic = parse_batch_topic(message.topic)
            batch = verify(
                message.payload,
                self._registry,
                max_bytes=self._max_bytes,
                topic_device=topic.device,
                topic_election=topic.election,
            )
        except BadTopic as err:
            return _Rejection(err.reason, str(err))
        except ProtocolError as err:
            return _Rejection(err.reason, str(err), *self._identify(message.payload))
        return batch

    def _identify(self, payload: bytes) -> tuple[str | None, str | None, int | None]:
        """Election, device and seq of a refused payload, as far as it parses."""
        try:
            body = parse_body(parse_envelope(payload, max_bytes=self._max_bytes).body)
        except ProtocolError:
            return (None, None, None)
        return (body.election, body.device, body.seq)

    def _record(
        self,
        conn: Connection,
        messages: Sequence[Inbound],
        checked: Sequence[VerifiedBatch | _Rejection],
    ) -> GroupResult:
        batches = [c for c in checked if isinstance(c, VerifiedBatch)]
        plan = GroupPlan(load_devices(conn, batches, self._device_rows), {})
        plan.held.update(load_held(conn, batches, plan.devices))
        outcomes: list[Outcome] = []
        rejections: list[dict[str, Any]] = []
        arrivals: dict[BatchKey, datetime] = {}
        for message, item in zip(messages, checked, strict=True):
            if isinstance(item, VerifiedBatch):
                body = item.body
                decision = plan.decide(item)
                if decision.verdict is not Verdict.REJECTED:
                    arrivals.setdefault(body.key, message.received_at)
                    outcomes.append(Outcome(decision.verdict, body.election, body.device, body.seq))
                    continue
                item = _Rejection(
                    decision.reason or RejectReason.CONFLICT,
                    decision.detail,
                    body.election,
                    body.device,
                    body.seq,
                )
            outcomes.append(
                Outcome(
                    Verdict.REJECTED, item.election, item.device, item.seq, item.reason, item.detail
                )
            )
            rejections.append(_rejection_row(message, item))
        plan.finish()
        write_group(conn, plan, arrivals, rejections)
        return GroupResult(tuple(outcomes), tuple(plan.receipts()))


def _rejection_row(message: Inbound, rejection: _Rejection) -> dict[str, Any]:
    return {
        "election": rejection.election,
        "device": rejection.device,
        "seq": rejection.seq,
        "topic": message.topic,
        "reason": str(rejection.reason),
        "detail": rejection.detail,
        "payload": message.payload,
        "payload_hash": sha256_hex(message.payload),
        "received_at": message.received_at,
    }


def _log_outcomes(outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        if o.verdict is Verdict.REJECTED:
            log.warning(
                "rejected device=%s seq=%s reason=%s: %s", o.device, o.seq, o.reason, o.detail
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s device=%s seq=%s", o.verdict, o.device, o.seq)
