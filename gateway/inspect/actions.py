"""The writing commands: ``retry`` (re-verify quarantined rows) and ``purge`` (delete rows).

Both work on the file of a running gateway: they read in read-only snapshots, do any slow
work (signature checks) outside of a transaction, then apply the result in short
``BEGIN IMMEDIATE`` transactions of at most :data:`CHUNK` rows, each re-checking the row's
state, so the gateway's group commits wait a few milliseconds at most and a row the
gateway moved in between is left alone. The usage triggers keep the quota counters exact.

Rows that pass ``retry`` become pending and a running gateway forwards them within about a
second (its uplink re-reads the buffer when idle). It keeps verifying new arrivals with the
registry it loaded at start: restart it to make a new key apply to them too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from gateway._exceptions import ConfigError
from gateway.buffer.schema import EventKind, State
from gateway.buffer.store import record_purge
from gateway.inspect.rows import load_keys
from gateway.inspect.snapshot import DEFAULT_WAIT_S, snapshot
from gateway.inspect.writer import write_transaction, writer
from gateway.verify import classify
from protocol import DEFAULT_MAX_BYTES, Registry

CHUNK = 500

# -- retry ------------------------------------------------------------------------------------


@dataclass
class RetryReport:
    keys: str
    passed: list[int] = field(default_factory=list)
    still_quarantined: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_mapping(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "passed": self.passed,
            "still_quarantined": self.still_quarantined,
            "skipped": self.skipped,
        }


def retry(
    path: Path,
    ids: Sequence[int],
    *,
    all_quarantined: bool,
    keys_dir: Path | None,
    wait_s: float = DEFAULT_WAIT_S,
) -> RetryReport:
    """Verify quarantined rows again; those that pass go back to pending, the rest keep a new reason."""
    if bool(ids) == all_quarantined:
        raise ConfigError("name the rows to retry (IDs) or pass --all-quarantined, not both")
    with snapshot(path, wait_s=wait_s) as snap:
        recorded = snap.settings()
    if keys_dir is None:
        if "keys_dir" not in recorded:
            raise ConfigError("retry needs --keys DIR (the buffer records no keys directory)")
        keys_dir = Path(recorded["keys_dir"])
    registry = load_keys(keys_dir)
    max_bytes = int(recorded.get("max_payload_bytes", DEFAULT_MAX_BYTES))
    report = RetryReport(keys=str(keys_dir))
    with writer(path, wait_s=wait_s) as engine:
        for chunk in _targets(path, ids, all_quarantined, wait_s, report):
            verdicts = [_judge(row, registry, max_bytes) for row in chunk]
            with write_transaction(engine, path, "retry", wait_s) as conn:
                for row, verdict in zip(chunk, verdicts, strict=True):
                    _apply(conn, row, verdict, report, str(keys_dir))
    return report


def _targets(
    path: Path, ids: Sequence[int], all_quarantined: bool, wait_s: float, report: RetryReport
) -> Iterator[list[Any]]:
    """Quarantined rows to retry, in chunks; ids that are missing or not quarantined are skipped."""
    columns = "id, state, topic, payload, received_at, reason, detail"
    if all_quarantined:
        after = 0
        while True:  # bounded: the cursor only moves forward
            with snapshot(path, wait_s=wait_s) as snap:
                rows = snap.conn.execute(
                    f"SELECT {columns} FROM messages WHERE state = 'quarantined' AND id > ?"
                    " ORDER BY id LIMIT ?",
                    (after, CHUNK),
                ).fetchall()
            if rows:
                yield list(rows)
            if len(rows) < CHUNK:
                return
            after = int(rows[-1]["id"])
    wanted = list(dict.fromkeys(ids))
    for start in range(0, len(wanted), CHUNK):
        part = wanted[start : start + CHUNK]
        with snapshot(path, wait_s=wait_s) as snap:
            found = {
                int(r["id"]): r
                for r in snap.conn.execute(
                    f"SELECT {columns} FROM messages WHERE id IN ({', '.join('?' * len(part))})",
                    tuple(part),
                )
            }
        rows = []
        for row_id in part:
            row = found.get(row_id)
            if row is None:
                report.skipped.append({"id": row_id, "why": "not in the buffer"})
            elif row["state"] != State.QUARANTINED.value:
                report.skipped.append({"id": row_id, "why": f"not quarantined (state {row['state']})"})
            else:
                rows.append(row)
        if rows:
            yield rows


def _judge(row: Any, registry: Registry, max_bytes: int) -> Any:
    return classify(row["topic"], bytes(row["payload"]), float(row["received_at"]), registry, max_bytes)


def _apply(conn: Connection, row: Any, verdict: Any, report: RetryReport, keys: str) -> None:
    now = time.time()
    if verdict.state is State.PENDING:
        twin = conn.exec_driver_sql(
            "SELECT id FROM messages WHERE election = ? AND device = ? AND seq = ? AND body_hash = ?"
            " AND state IN ('pending', 'inflight') LIMIT 1",
            (verdict.election, verdict.device, verdict.seq, verdict.body_hash),
        ).scalar()
        if twin is None:
            moved = conn.exec_driver_sql(
                "UPDATE messages SET state = 'pending', election = ?, device = ?, seq = ?,"
                " body_hash = ?, reason = NULL, detail = NULL, retried_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'quarantined'",
                (verdict.election, verdict.device, verdict.seq, verdict.body_hash, now, now, row["id"]),
            ).rowcount
            if moved:
                _event(conn, now, EventKind.RETRIED, row["id"], row["reason"], f"passed with keys {keys}")
                report.passed.append(int(row["id"]))
            else:
                report.skipped.append({"id": int(row["id"]), "why": "no longer quarantined"})
            return
        reason, detail = "duplicate", f"an identical batch is already buffered as id {twin}"
    else:
        reason, detail = verdict.reason, verdict.detail
    moved = conn.exec_driver_sql(
        "UPDATE messages SET reason = ?, detail = ?, election = coalesce(?, election),"
        " device = coalesce(?, device), seq = coalesce(?, seq), body_hash = coalesce(?, body_hash),"
        " retried_at = ?, updated_at = ? WHERE id = ? AND state = 'quarantined'",
        (reason, detail, verdict.election, verdict.device, verdict.seq, verdict.body_hash, now, now, row["id"]),
    ).rowcount
    if moved:
        _event(conn, now, EventKind.RETRY_FAILED, row["id"], reason, detail)
        report.still_quarantined.append(
            {"id": int(row["id"]), "reason": reason, "detail": detail, "previous_reason": row["reason"]}
        )
    else:
        report.skipped.append({"id": int(row["id"]), "why": "no longer quarantined"})


def _event(conn: Connection, at: float, kind: EventKind, row_id: int, reason: str | None, detail: str | None) -> None:
    conn.exec_driver_sql(
        "INSERT INTO events (at, kind, first_id, last_id, rows, reason, detail)"
        " VALUES (?, ?, ?, ?, 1, ?, ?)",
        (at, kind.value, row_id, row_id, reason, detail),
    )


# -- purge ------------------------------------------------------------------------------------
PURGEABLE = (State.DELIVERED, State.PENDING, State.QUARANTINED)
UNDELIVERED = (State.PENDING, State.QUARANTINED)
# How old a row is, per state: time since it entered that state.
_AGE_COLUMN = {
    State.DELIVERED: "delivered_at",
    State.QUARANTINED: "coalesce(quarantined_at, received_at)",
    State.PENDING: "received_at",
}


def purge_refusal(states: Sequence[State], *, include_undelivered: bool, yes: bool) -> str | None:
    """Why a purge of ``states`` must not run as asked (None if it may)."""
    if State.INFLIGHT in states:
        return "in-flight rows belong to the running uplink and are never purged"
    undelivered = [s.value for s in states if s in UNDELIVERED]
    if undelivered and not (include_undelivered and yes):
        return (
            f"refusing to purge {' and '.join(undelivered)} batches: they never reached the cloud;"
            " pass both --include-undelivered and --yes to delete them anyway"
        )
    return None


def purge(
    path: Path,
    states: Sequence[State],
    *,
    older_than_s: float | None,
    dry_run: bool = False,
    now: float | None = None,
    wait_s: float = DEFAULT_WAIT_S,
) -> dict[str, Any]:
    """Delete rows of ``states`` older than ``older_than_s`` (all ages if None), in short
    transactions. Rows arriving while it runs are not touched (ids and cutoff fixed at start)."""
    moment = time.time() if now is None else now
    cutoff = moment - (older_than_s or 0.0)
    purged: dict[str, int] = {}
    with snapshot(path, wait_s=wait_s) as snap:
        last_id = int(snap.conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0] or 0)
        if dry_run:
            for state in states:
                purged[state.value] = int(
                    snap.conn.execute(
                        f"SELECT count(*) FROM messages WHERE state = ? AND {_AGE_COLUMN[state]} < ?"
                        " AND id <= ?",
                        (state.value, cutoff, last_id),
                    ).fetchone()[0]
                    or 0
                )
    if not dry_run:
        with writer(path, wait_s=wait_s) as engine:
            for state in states:
                purged[state.value] = _purge_state(engine, path, state, cutoff, last_id, wait_s)
    return {
        "purged": purged,
        "dry_run": dry_run,
        "older_than_s": older_than_s,
        "states": [s.value for s in states],
    }


def _purge_state(engine: Any, path: Path, state: State, cutoff: float, last_id: int, wait_s: float) -> int:
    total = 0
    select = (
        f"SELECT id FROM messages WHERE state = ? AND {_AGE_COLUMN[state]} < ? AND id <= ?"
        " ORDER BY id LIMIT ?"
    )
    while True:  # bounded: every round deletes what it selected, nothing newer qualifies
        with write_transaction(engine, path, "purge", wait_s) as conn:
            ids = [int(r[0]) for r in conn.exec_driver_sql(select, (state.value, cutoff, last_id, CHUNK))]
            if ids:
                conn.exec_driver_sql(
                    f"DELETE FROM messages WHERE id IN ({', '.join('?' * len(ids))})", tuple(ids)
                )
                record_purge(conn, ids, why="cli", state=state, at=time.time())
        total += len(ids)
        if len(ids) < CHUNK:
            return total
