"""The rules engine: runs the rules file's rules on each group the worker takes, around the
ledger's one transaction.

For each group (bundles already unwrapped, every envelope verified once by
:meth:`cloud.ledger.ledger.Ledger.check`):

1. Match. Each message's topic is matched against the enabled rules' topic filters (cached per
   topic). A verified message gets a document: the body's fields plus ``kid`` and
   ``body_hash`` (:meth:`cloud.rules.FieldSchema.batch`). A message that failed verification
   is seen only by the ``ledger`` action of the rules whose filter matches (so that its
   rejection is stored).
2. Select for the ledger. Rules with a ``ledger`` action are evaluated now, before the ledger
   (they cannot read its outcome: refused at load); a message that one of them selects (at least
   one row) goes to the ledger, once.
3. In ONE transaction: the ledger records the selected messages (verify result, ledger rows,
   tallies, windows, devices, rejections), then every other rule is evaluated with functions
   that see the ledger's outcome, and the rows of every rule go to its actions: alerts, stored
   rows and dead letters are written in that same transaction, each write under a SAVEPOINT
   (cloud/engine/actions.py), so a failing action rolls back only itself; republishes are rendered.
   A failed action goes to the rule's ``error_action``, and when there is none or it fails
   too, to the dead-letter table. A failure of the database itself fails the whole group: it
   is not acknowledged, and the worker retries it.
4. After the commit: new alerts are logged at WARNING and the in-memory rate windows take the
   group's messages (in :meth:`RulesEngine.record`); then the worker calls
   :meth:`RulesEngine.after_commit`, which publishes the republishes (paho's rc checked; a
   failure goes to the error action, then the dead letters, in a transaction of their own),
   before the receipts and the acknowledgements.

A message that no rule selects (no matching filter, or no rule gives a row, or it failed
verification and no matching rule has a ledger action) is counted, logged at DEBUG, not stored,
and acknowledged.

The engine's functions, declared to every rule (``ENGINE_FUNCTIONS`` in cloud/engine/rulefile.py):

    ledger_outcome()     'accepted' | 'duplicate' | 'rejected'; null if no ledger action ran
    ledger_reason()      the rejection reason ('after_final', 'broken_chain', ...) or null
    registered(p)        registered voters of precinct p (from the election), null if unknown
    device_ballots()     the device's cumulative accepted ballots, this batch included (kept in
                         devices.ballots by the ledger); null if no ledger action ran
    source_ballots()     accepted ballots of the batch's precinct from the device's kind of source
                         (tabulator or manual), this batch included; null if no ledger action ran
    other_source_ballots()  the same from the other kind of source (cloud/ledger/sources.py)
    device_rate(n)       batches (verified, any outcome) this worker saw from the device in
                         the last n seconds, this one included, at one-second resolution; an
                         in-memory window per worker (with --share each worker sees its share)

Only the commit thread calls :meth:`RulesEngine.record` and :meth:`RulesEngine.after_commit`.

The counts and the result (:class:`~cloud.engine.stats.EngineStats`,
:class:`~cloud.engine.stats.EngineResult`, :class:`~cloud.engine.stats.RateWindows`) are in
cloud/engine/stats.py; running a group's jobs through the actions and failing over (step 3) in
cloud/engine/dispatch.py. What is left, :class:`RulesEngine`, is one concept that reads best
whole, though a little over 400 lines: one group's pass through steps 1 to 4 above, in that
order, whose stages share per-group state (the message being evaluated, which the engine's
functions read; the group's arrival seconds behind ``device_rate``); cut apart, each part would
reach into the other's state.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from cloud._exceptions import CloudError
from cloud.db import translate_errors
from cloud.elections import Elections
from cloud.engine.actions import (
    AlertAction,
    DeadLetter,
    Failure,
    Job,
    Origin,
    Publish,
    StoreAction,
    publish,
)
from cloud.engine.dispatch import _Attempt, fail_over, run_jobs
from cloud.engine.rulefile import RulesConfig, RuleSpec
from cloud.engine.stats import EngineResult, EngineStats, RateWindows
from cloud.ledger.ledger import Checked, GroupResult, Inbound, Ledger, Outcome
from cloud.rules import EvalContext, RuleError
from protocol import Registry, VerifiedBatch

log = logging.getLogger(__name__)

TOPIC_CACHE_MAX = 4096  # distinct topics remembered; past it the cache starts again (cleared)
Row = dict[str, Any]


@dataclass(slots=True)
class _Message:
    """One inbound message of the group, as the engine sees it."""

    inbound: Inbound
    checked: Checked
    rules: tuple[RuleSpec, ...]
    doc: dict[str, Any] | None = None  # None: failed verification
    ctx: EvalContext | None = None
    origin: Origin | None = None
    second: int = 0  # arrival, whole seconds (rate windows)
    rate_position: int = 0  # its place among the group's messages of its device
    to_ledger: bool = False
    selected: bool = False
    outcome: Outcome | None = None
    early_rows: dict[str, list[Row]] | None = None  # rows of the ledger rules, by rule
    early_dead: list[DeadLetter] | None = None  # ledger rules that could not be evaluated


class RulesEngine:
    """Runs a :class:`RulesConfig` around the ledger. Constructing it does no I/O."""

    def __init__(
        self, ledger: Ledger, registry: Registry | Elections, rules: RulesConfig, engine: Engine
    ) -> None:
        self._ledger = ledger
        self._db = engine
        self._rules = rules.enabled
        self._specs = {spec.name: spec for spec in rules.rules}
        self._elections = Elections.of(registry)
        self._registered: dict[str, dict[str, int | None]] = {}  # election -> precinct -> voters
        self._topics: dict[str, tuple[RuleSpec, ...]] = {}
        self._rates = RateWindows(rules.rate_window_s) if rules.rate_window_s else None
        self._group_seconds: dict[str, list[int]] = {}
        self._current: _Message | None = None
        self.stats = EngineStats()
        self._functions: Mapping[str, Callable[..., Any]] = {
            "ledger_outcome": self._ledger_outcome,
            "ledger_reason": self._ledger_reason,
            "registered": self._registered_voters,
            "device_ballots": self._device_ballots,
            "device_rate": self._device_rate,
            "source_ballots": lambda: self._outcome_figure("source_ballots"),
            "other_source_ballots": lambda: self._outcome_figure("other_source_ballots"),
        }

    @property
    def config_rules(self) -> tuple[RuleSpec, ...]:
        return self._rules

    def check(self, messages: Sequence[Inbound]) -> list[Checked]:
        """Verify (the ledger's check; safe from several threads)."""
        return self._ledger.check(messages)

    # -- one group ---------------------------------------------------------------------------
    def record(
        self, messages: Sequence[Inbound], checked: Sequence[Checked] | None = None
    ) -> EngineResult:
        """Run the rules on one group, in one transaction. Raises what the ledger raises
        (:class:`DatabaseUnavailable`: retry later, nothing was committed)."""
        if checked is None:
            checked = self.check(messages)
        group = self._prepare(messages, checked)
        ledgered = [m for m in group if m.to_ledger]
        attempt = _Attempt()

        def in_transaction(conn: Connection, result: GroupResult | None) -> None:
            nonlocal attempt
            attempt = _Attempt()
            if result is not None:
                for message, outcome in zip(ledgered, result.outcomes, strict=True):
                    message.outcome = outcome
            self._outputs(conn, group, attempt)

        result: GroupResult | None = None
        if ledgered:
            result = self._ledger.record(
                [m.inbound for m in ledgered], [m.checked for m in ledgered], then=in_transaction
            )
        elif any(m.doc is not None and m.rules for m in group):
            with translate_errors("recording rule actions"), self._db.begin() as conn:
                in_transaction(conn, None)
        self._committed(group, attempt, len(ledgered))
        return EngineResult(result, tuple(attempt.outgoing))

    def _prepare(self, messages: Sequence[Inbound], checked: Sequence[Checked]) -> list[_Message]:
        group: list[_Message] = []
        self._group_seconds = {}
        for inbound, item in zip(messages, checked, strict=True):
            rules = self._rules_for(inbound.topic)
            message = _Message(inbound, item, rules)
            group.append(message)
            if not rules:
                continue
            if not isinstance(item, VerifiedBatch):
                message.to_ledger = any(spec.ledger for spec in rules)
                continue
            self._document(message, item)
            self._current = message
            for spec in rules:
                if spec.ledger:
                    if message.early_rows is None or message.early_dead is None:
                        message.early_rows, message.early_dead = {}, []
                    rows = self._evaluate(spec, message, message.early_dead)
                    message.early_rows[spec.name] = rows
                    if rows:
                        message.to_ledger = True
        self._current = None
        return group

    def _rules_for(self, topic: str) -> tuple[RuleSpec, ...]:
        found = self._topics.get(topic)
        if found is None:
            if len(self._topics) >= TOPIC_CACHE_MAX:
                self._topics.clear()
            found = tuple(spec for spec in self._rules if spec.rule.matches(topic))
            self._topics[topic] = found
        return found

    def _document(self, message: _Message, batch: VerifiedBatch) -> None:
        body = batch.body
        totals = body.totals
        message.doc = {
            "v": body.v,
            "election": body.election,
            "device": body.device,
            "precinct": body.precinct,
            "seq": body.seq,
            "prev": body.prev,
            "issued_at": body.issued_at,
            "ballots": body.ballots,
            "counts": body.counts,
            "final": body.final,
            "totals": None
            if totals is None
            else {"ballots": totals.ballots, "counts": totals.counts},
            "kid": batch.envelope.kid,
            "body_hash": batch.body_hash,
        }
        received = message.inbound.received_at.timestamp()
        message.ctx = EvalContext(
            topic=message.inbound.topic,
            timestamp_ms=int(received * 1000),
            functions=self._functions,
        )
        message.second = int(received)
        if self._rates is not None:
            seconds = self._group_seconds.setdefault(body.device, [])
            message.rate_position = len(seconds)
            seconds.append(message.second)

    def _evaluate(self, spec: RuleSpec, message: _Message, dead: list[DeadLetter]) -> list[Row]:
        """The rule's rows for the current message; [] (and a dead letter) if it cannot be
        evaluated: the engine never stops on one rule."""
        assert message.doc is not None and message.ctx is not None
        try:
            return spec.rule.evaluate(message.doc, message.ctx)
        except RuleError as err:
            log.error(
                "rule %s cannot be evaluated on device=%s seq=%s: %s",
                spec.name,
                message.doc.get("device"),
                message.doc.get("seq"),
                err,
            )
            dead.append(
                DeadLetter(spec.name, "evaluate", str(err), message.doc, 0, self._origin(message))
            )
            return []

    def _origin(self, message: _Message) -> Origin:
        doc = message.doc or {}
        outcome = message.outcome
        return Origin(
            message.inbound.topic,
            doc.get("election"),
            doc.get("device"),
            doc.get("seq"),
            doc.get("body_hash"),
            None if outcome is None else outcome.verdict.value,
        )

    # -- inside the transaction ---------------------------------------------------------
    def _outputs(self, conn: Connection, group: list[_Message], attempt: _Attempt) -> None:
        alerts: list[Job] = []
        stores: list[Job] = []
        republishes: list[Job] = []
        for message in group:
            message.selected = message.to_ledger
            if message.doc is None:
                continue
            self._current = message
            early = message.early_rows
            if message.early_dead:
                attempt.dead.extend(message.early_dead)
            origin: Origin | None = None
            for spec in message.rules:
                if spec.ledger:
                    rows = early.get(spec.name, []) if early is not None else []
                else:
                    rows = self._evaluate(spec, message, attempt.dead)
                if not rows:
                    continue
                message.selected = True
                outputs = spec.outputs
                if not outputs:
                    continue
                if origin is None:
                    origin = self._origin(message)
                for index, row in enumerate(rows):
                    for slot, action in outputs:
                        job = Job(spec.name, slot, action, row, index, origin)
                        if isinstance(action, AlertAction):
                            alerts.append(job)
                        elif isinstance(action, StoreAction):
                            stores.append(job)
                        else:
                            republishes.append(job)
        self._current = None
        if alerts or stores or republishes or attempt.dead:
            now = datetime.now(UTC)
            failures = run_jobs(conn, alerts, stores, republishes, attempt, now)
            fail_over(conn, self._specs, failures, attempt, now)

    # -- after the commit ----------------------------------------------------------------
    def _committed(self, group: list[_Message], attempt: _Attempt, ledgered: int) -> None:
        stats = self.stats
        stats.messages += len(group)
        stats.ledgered += ledgered
        for message in group:
            if not message.selected:
                stats.unmatched += 1
                if log.isEnabledFor(logging.DEBUG):
                    item = message.checked
                    log.debug(
                        "no rule selects the message on %s (device=%s seq=%s%s): not stored",
                        message.inbound.topic,
                        item.body.device if isinstance(item, VerifiedBatch) else item.device,
                        item.body.seq if isinstance(item, VerifiedBatch) else item.seq,
                        "" if message.doc is not None else ", failed verification",
                    )
        if self._rates is not None:
            for device, seconds in self._group_seconds.items():
                self._rates.add(device, seconds)
            self._group_seconds = {}
        for job in attempt.alerts:
            action = job.action
            assert isinstance(action, AlertAction)
            log.warning(
                "alert %s (%s) device=%s seq=%s: %s",
                job.rule,
                action.severity,
                job.origin.device,
                job.origin.seq,
                action.message.render(job.row),
            )
        if attempt.repeated:
            log.debug("%d alerts were already stored (a redelivered message)", attempt.repeated)
        stats.alerts += len(attempt.alerts)
        stats.stored += attempt.stored
        stats.failed_actions += attempt.failed
        self._dead_logged(attempt.dead, attempt.lost)

    def _dead_logged(self, dead: list[DeadLetter], lost: list[tuple[DeadLetter, str]]) -> None:
        lost_ids = {id(letter) for letter, _ in lost}
        for letter in dead:
            if id(letter) not in lost_ids:
                self.stats.dead_letters += 1
                log.warning(
                    "dead letter: rule %s %s device=%s seq=%s: %s",
                    letter.rule,
                    letter.action,
                    letter.origin.device,
                    letter.origin.seq,
                    letter.error,
                )
        for letter, error in lost:
            self.stats.lost += 1
            log.error(
                "rule %s %s device=%s seq=%s failed (%s) and its dead letter was refused (%s):"
                " row %s",
                letter.rule,
                letter.action,
                letter.origin.device,
                letter.origin.seq,
                letter.error,
                error,
                dict(letter.row),
            )

    def after_commit(self, result: EngineResult, send: Publish | None) -> None:
        """Publish the group's republishes (rc checked). Failures go to the error action and
        then the dead letters, in a transaction of their own; the group is committed whatever
        happens here, so nothing here raises."""
        failures: list[Failure] = []
        for outgoing in result.outgoing:
            error = publish(outgoing, send)
            if error is None:
                self.stats.republished += 1
            else:
                failures.append(Failure(outgoing.job, error))
        if not failures:
            return
        attempt = _Attempt()
        try:
            with translate_errors("recording failed republishes"), self._db.begin() as conn:
                fail_over(conn, self._specs, failures, attempt, datetime.now(UTC))
        except CloudError as err:
            for failure in failures:
                log.error(
                    "rule %s %s device=%s seq=%s failed (%s) and could not be recorded (%s):"
                    " row %s",
                    failure.job.rule,
                    failure.job.label,
                    failure.job.origin.device,
                    failure.job.origin.seq,
                    failure.error,
                    err,
                    dict(failure.job.row),
                )
            self.stats.lost += len(failures)
            return
        self._committed([], attempt, 0)
        retry = EngineResult(None, tuple(attempt.outgoing))  # error actions that republish
        late: list[Failure] = []
        for outgoing in retry.outgoing:
            error = publish(outgoing, send)
            if error is None:
                self.stats.republished += 1
            else:
                late.append(Failure(outgoing.job, error))
        if late:
            attempt = _Attempt()
            try:
                with translate_errors("recording failed republishes"), self._db.begin() as conn:
                    fail_over(conn, self._specs, late, attempt, datetime.now(UTC))
            except CloudError as err:
                log.error(
                    "%d failed error-action republishes could not be recorded: %s", len(late), err
                )
                self.stats.lost += len(late)
                return
            self._committed([], attempt, 0)

    # -- the engine's functions (read the message being evaluated) ---------------------------
    def _ledger_outcome(self) -> str | None:
        message = self._current
        if message is None or message.outcome is None:
            return None
        return message.outcome.verdict.value

    def _ledger_reason(self) -> str | None:
        message = self._current
        if message is None or message.outcome is None or message.outcome.reason is None:
            return None
        return message.outcome.reason.value

    def _registered_voters(self, precinct: Any) -> int | None:
        """Registered voters of ``precinct`` in the current message's election."""
        message = self._current
        if not isinstance(precinct, str) or message is None or not isinstance(message.checked, VerifiedBatch):
            return None
        election = message.checked.body.election
        voters = self._registered.get(election)
        if voters is None:
            registry = self._elections.get(election)
            if registry is None:
                return None
            voters = {u.id: u.registered for u in registry.election.units.values() if u.is_precinct}
            self._registered[election] = voters
        return voters.get(precinct)

    def _device_ballots(self) -> int | None:
        message = self._current
        if message is None or message.outcome is None:
            return None
        return message.outcome.device_ballots

    def _outcome_figure(self, name: str) -> int | None:
        message = self._current
        if message is None or message.outcome is None:
            return None
        value: int | None = getattr(message.outcome, name)
        return value

    def _device_rate(self, seconds: Any) -> int | None:
        message = self._current
        rates = self._rates
        if message is None or rates is None or message.doc is None:
            return None
        if type(seconds) not in (int, float) or seconds <= 0:
            return None
        window = min(int(-(-seconds // 1)), rates.window_s)
        device = message.doc["device"]
        floor = message.second - window
        seen = self._group_seconds.get(device, ())
        position = message.rate_position + 1
        in_group = position - bisect_right(seen, floor, 0, position)
        return rates.count(device, message.second, window) + in_group
