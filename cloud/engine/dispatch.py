"""A group's jobs through their actions, inside the rules engine's transaction
(:mod:`cloud.engine.engine`, step 3): alerts and stored rows written, republishes rendered
(published after the commit); each failure goes to its rule's ``error_action``, and when there
is none or it fails too, to the dead-letter table. :class:`_Attempt` collects what one run of
the transaction produced. No logging here: the engine logs after the commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection

from cloud.engine.actions import ActionFailed as _ActionFailed
from cloud.engine.actions import (
    AlertAction,
    DeadLetter,
    Failure,
    Job,
    Outgoing,
    RepublishAction,
    StoreAction,
    render_republish,
    write_alerts,
    write_dead_letters,
    write_stored,
)
from cloud.engine.rulefile import RESERVED_TOPICS, RuleSpec
from cloud.rules import topic_matches


@dataclass(slots=True)
class _Attempt:
    """What one run of the transaction produced (reset when the ledger runs it again)."""

    outgoing: list[Outgoing] = field(default_factory=list)
    alerts: list[Job] = field(default_factory=list)
    repeated: int = 0
    stored: int = 0
    failed: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    lost: list[tuple[DeadLetter, str]] = field(default_factory=list)


def run_jobs(
    conn: Connection,
    alerts: list[Job],
    stores: list[Job],
    republishes: list[Job],
    attempt: _Attempt,
    now: datetime,
) -> list[Failure]:
    failures: list[Failure] = []
    if alerts:
        written = write_alerts(conn, alerts, now)
        attempt.alerts.extend(written.inserted)
        attempt.repeated += len(written.existing)
        failures.extend(Failure(job, error) for job, error in written.refused)
    if stores:
        written = write_stored(conn, stores, now)
        attempt.stored += len(written.inserted)
        failures.extend(Failure(job, error) for job, error in written.refused)
    for job in republishes:
        try:
            attempt.outgoing.append(render_republish(job, _reserved))
        except _ActionFailed as err:
            failures.append(Failure(job, str(err)))
    return failures


def fail_over(
    conn: Connection,
    specs: Mapping[str, RuleSpec],
    failures: list[Failure],
    attempt: _Attempt,
    now: datetime,
) -> None:
    """Failed rows to their rule's error action; what fails again (or has none) and the
    evaluation failures to the dead letters."""
    attempt.failed += len(failures)
    second: list[Job] = []
    causes: dict[int, Failure] = {}
    for failure in failures:
        spec = specs[failure.job.rule]
        if failure.job.is_error_action or spec.error_action is None:
            attempt.dead.append(_dead(failure.job, failure.error))
            continue
        job = failure.job
        row = {**job.row, "error": failure.error, "rule": spec.name, "action": job.action.kind}
        retry = Job(
            spec.name, f"error:{job.slot}", spec.error_action, row, job.index, job.origin
        )
        causes[id(retry)] = failure
        second.append(retry)
    if second:
        alerts = [j for j in second if isinstance(j.action, AlertAction)]
        stores = [j for j in second if isinstance(j.action, StoreAction)]
        republishes = [j for j in second if isinstance(j.action, RepublishAction)]
        for again in run_jobs(conn, alerts, stores, republishes, attempt, now):
            cause = causes[id(again.job)]
            attempt.dead.append(
                _dead(
                    cause.job,
                    f"{cause.error}; then error_action {again.job.action.kind}: {again.error}",
                )
            )
    if attempt.dead:
        written = write_dead_letters(conn, attempt.dead, now)
        attempt.lost.extend(written.refused)


def _reserved(topic: str) -> bool:
    return any(topic_matches(reserved, topic) for reserved in RESERVED_TOPICS)


def _dead(job: Job, error: str) -> DeadLetter:
    return DeadLetter(job.rule, job.label, error, job.row, job.index, job.origin)
