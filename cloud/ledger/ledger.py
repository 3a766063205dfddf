"""The ledger: verify envelopes and record a whole group of them in ONE transaction.

For each group: every envelope is verified against the registry (outside the transaction;
a verification failure becomes a rejection row). Then, in one transaction, the rows the
group can collide with are loaded (device rows locked ``FOR UPDATE`` on PostgreSQL), each
batch is decided in memory (cloud/ledger/chain.py) and everything is written at once: new ledger
rows, duplicate counts, tallies, precinct ballots, device state and rejections. A bad
message is decided, not executed, so it can never roll the others back.

Correctness rests on the unique key (election, device, seq), never on which worker got a
message: should another worker insert a row this group was about to insert, the transaction
fails on that key and the whole group is decided again against what is now held. Several
workers on one PostgreSQL serialise per device on the device rows (locked in key order, so
they cannot deadlock on them); a deadlock or serialization failure PostgreSQL reports anyway
(40P01, 40001) is retried the same way, at once, up to ``CONFLICT_RETRIES`` times.

Verification is CPU work outside any transaction: :meth:`Ledger.check` may run in other
threads (Ed25519 verification releases the GIL) while the previous group commits, and
:meth:`Ledger.record` takes its result.

Bundles (protocol/bundle.py): :func:`unwrap` turns a gateway's bundle into one
:class:`Inbound` per entry, on the entry's own topic, so every entry is verified, recorded and
rejected exactly as if it had arrived alone; the worker records all entries of a bundle in the
same group (one transaction). A bundle whose framing is corrupt becomes one refused
:class:`Inbound` (the whole bundle, its topic and the reason), stored as one rejection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exc, func, update
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud._exceptions import DatabaseUnavailable
from cloud.db import READ_ONLY, translate_errors
from cloud.elections import Elections, device_rows, store
from cloud.ledger.chain import BatchKey, DeviceKey, GroupPlan, Verdict
from cloud.ledger.sources import with_sources
from cloud.ledger.store import load_devices, load_held, read_gaps, write_gaps, write_group
from protocol import (
    BadBundle,
    BadTopic,
    ProtocolError,
    Receipt,
    Registry,
    RejectReason,
    VerifiedBatch,
    bundle,
    parse_batch_topic,
    parse_body,
    parse_envelope,
    parse_gateway_topic,
    sha256_hex,
    verify,
)
from protocol.repair import RepairRequest, SeqRange

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 5
# PostgreSQL SQLSTATEs after which the transaction is simply run again.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


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
    # The device's cumulative accepted ballots once this message was decided (None: the
    # message was refused before a device could be known). Read by the rules engine.
    device_ballots: int | None = None
    # its precinct's accepted ballots by this device's kind of source and by the other (sources.py)
    source_ballots: int | None = None
    other_source_ballots: int | None = None


@dataclass(frozen=True, slots=True)
class GroupResult:
    """Outcomes in input order, and the receipts to publish now that the group committed.

    ``gaps``: for each device whose chain had or has a seq gap, its missing ranges now
    (empty: the gap closed); what the worker's repair requests are made of.
    """

    outcomes: tuple[Outcome, ...]
    receipts: tuple[Receipt, ...]
    gaps: tuple[tuple[DeviceKey, tuple[SeqRange, ...]], ...] = ()

    def count(self, verdict: Verdict) -> int:
        return sum(1 for o in self.outcomes if o.verdict is verdict)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message refused before its batch could be decided (bad topic, signature, JSON...)."""

    reason: RejectReason
    detail: str
    election: str | None = None
    device: str | None = None
    seq: int | None = None


Checked = VerifiedBatch | Rejection  # what verification made of one inbound message


class Ledger:
    """Records groups of inbound messages. Constructing it does no I/O."""

    def __init__(self, engine: Engine, registry: Registry | Elections, *, max_payload_bytes: int) -> None:
        self._engine = engine
        self._elections = Elections.of(registry)
        self._max_bytes = max_payload_bytes

    @property
    def elections(self) -> Elections:
        return self._elections

    # -- start -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Store each served election's definition, registry and a row per device.

        Raises :class:`ElectionMismatch` if the database holds another definition of one of
        them: tallies must never mix two definitions.
        """
        with translate_errors("storing the elections"), self._engine.begin() as conn:
            for served in self._elections.served():
                store(conn, served)

    def _device_rows(self, keys: Iterable[DeviceKey]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for election, device in sorted(keys):
            registry = self._elections.get(election)
            if registry is not None:  # verified against it, so it is held
                rows += device_rows(registry, [device])
        return rows

    # -- recording ---------------------------------------------------------------------
    def check(self, messages: Sequence[Inbound]) -> list[Checked]:
        """Verify each message (no I/O; safe to call from several threads at once)."""
        return [self._verify(m) for m in messages]

    def record(
        self,
        messages: Sequence[Inbound],
        checked: Sequence[Checked] | None = None,
        then: Callable[[Connection, GroupResult], None] | None = None,
    ) -> GroupResult:
        """Record ``messages`` in one transaction; return what became of each.

        ``checked`` is :meth:`check` of the same messages, if already done. ``then`` runs in
        the same transaction once the group is written, before the commit (the rules engine's
        actions); it runs again each time the group is decided again, so it must keep no
        state of its own between calls.
        Raises :class:`DatabaseUnavailable` (retry later: nothing was committed) or
        :class:`DatabaseError`.
        """
        if checked is None:
            checked = self.check(messages)
        if len(checked) != len(messages):
            raise ValueError("checked must hold one entry per message")
        with translate_errors("recording a group"):
            for attempt in range(1, CONFLICT_RETRIES + 1):
                try:
                    with self._engine.begin() as conn:
                        result = self._record(conn, messages, checked)
                        if then is not None:
                            then(conn, result)
                except exc.DBAPIError as err:
                    # Another worker inserted one of our keys first, or PostgreSQL chose this
                    # transaction as a deadlock victim: nothing committed, decide again.
                    if not _is_race(err):
                        raise
                    log.warning(
                        "group of %d lost a race with a concurrent writer (attempt %d): %s",
                        len(messages),
                        attempt,
                        str(err.orig).strip().splitlines()[0] if err.orig else err,
                    )
                    continue
                _log_outcomes(result.outcomes)  # committed: now it is true
                return result
        # Contention is transient: the worker retries the group later, with backoff.
        raise DatabaseUnavailable(
            f"a group of {len(messages)} kept conflicting with concurrent writers"
        )

    def _verify(self, message: Inbound) -> Checked:
        if message.refused is not None:
            return Rejection(message.refused.reason, str(message.refused))
        try:
            topic = parse_batch_topic(message.topic)
            registry = self._elections.get(topic.election)
            if registry is None:
                election, device, seq = self._identify(message.payload)
                if election is not None and self._elections.get(election) is not None:
                    return Rejection(
                        RejectReason.TOPIC_MISMATCH,
                        f"batch of election {election!r} arrived on a topic of election {topic.election!r}",
                        election, device, seq,
                    )  # fmt: skip
                return Rejection(
                    RejectReason.UNKNOWN_ELECTION,
                    f"election {topic.election!r} is not served by this cloud (it serves"
                    f" {self._elections.describe()}; add it with `edgetally cloud elections add`)",
                    *self._identify(message.payload),
                )
            batch = verify(
                message.payload,
                registry,
                max_bytes=self._max_bytes,
                topic_device=topic.device,
                topic_election=topic.election,
            )
        except BadTopic as err:
            return Rejection(err.reason, str(err))
        except ProtocolError as err:
            election, device, seq = self._identify(message.payload)
            if election is not None and election != topic.election:
                # Another election's batch: checked against this topic's registry it fails on
                # the key or the device, but what is wrong is where it was published.
                return Rejection(
                    RejectReason.TOPIC_MISMATCH,
                    f"batch of election {election!r} arrived on a topic of election {topic.election!r} ({err})",
                    election, device, seq,
                )  # fmt: skip
            return Rejection(err.reason, str(err), election, device, seq)
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
        checked: Sequence[Checked],
    ) -> GroupResult:
        batches = [c for c in checked if isinstance(c, VerifiedBatch)]
        plan = GroupPlan(load_devices(conn, batches, self._device_rows), {})
        gapped_before = {k for k, s in plan.devices.items() if s.contiguous_seq < s.max_seq}
        plan.held.update(load_held(conn, batches, plan.devices))
        outcomes: list[Outcome] = []
        rejections: list[dict[str, Any]] = []
        arrivals: dict[BatchKey, datetime] = {}
        for message, item in zip(messages, checked, strict=True):
            ballots: int | None = None
            if isinstance(item, VerifiedBatch):
                body = item.body
                decision = plan.decide(item)
                ballots = plan.devices[(body.election, body.device)].ballots
                if decision.verdict is not Verdict.REJECTED:
                    arrivals.setdefault(body.key, message.received_at)
                    outcomes.append(Outcome(decision.verdict, body.election, body.device, body.seq, device_ballots=ballots))
                    continue
                item = Rejection(
                    decision.reason or RejectReason.CONFLICT,
                    decision.detail,
                    body.election,
                    body.device,
                    body.seq,
                )
            outcomes.append(
                Outcome(
                    Verdict.REJECTED,
                    item.election,
                    item.device,
                    item.seq,
                    item.reason,
                    item.detail,
                    ballots,
                )
            )
            rejections.append(_rejection_row(message, item))
        plan.finish()
        write_group(conn, plan, arrivals, rejections)
        gaps = write_gaps(conn, plan, gapped_before)
        sourced = with_sources(conn, outcomes, self._elections)
        return GroupResult(sourced, tuple(plan.receipts()), tuple(sorted(gaps.items())))

    def current_gaps(self, keys: Sequence[DeviceKey]) -> dict[DeviceKey, tuple[SeqRange, ...]]:
        """The devices' missing ranges now (empty: closed, maybe by another worker).
        Raises :class:`DatabaseUnavailable` or :class:`DatabaseError`."""
        with translate_errors("reading seq gaps"), self._engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return read_gaps(conn, keys)

    def mark_requested(self, requests: Sequence[RepairRequest]) -> None:
        """Note in ``repairs`` that these requests were published (informational: the audit
        shows it). Raises :class:`DatabaseUnavailable` or :class:`DatabaseError`."""
        if not requests:
            return
        table = models.repairs
        now = datetime.now(UTC)
        with translate_errors("noting repair requests"), self._engine.begin() as conn:
            for request in requests:
                for first, last in request.missing:
                    conn.execute(
                        update(table)
                        .where(
                            table.c.election == request.election,
                            table.c.device == request.device,
                            table.c.first_seq <= last,  # the open row(s) this range
                            table.c.last_seq >= first,  # overlaps (a narrowed gap's too)
                            table.c.repaired_at.is_(None),
                        )
                        .values(
                            requested_at=func.coalesce(table.c.requested_at, now),
                            requests=table.c.requests + 1,
                        )
                    )


def _is_race(err: exc.DBAPIError) -> bool:
    """A unique-key race or a PostgreSQL deadlock/serialization failure: run the group again."""
    if isinstance(err, exc.IntegrityError):
        return True
    return getattr(err.orig, "sqlstate", None) in _RETRY_SQLSTATES


def _rejection_row(message: Inbound, rejection: Rejection) -> dict[str, Any]:
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
