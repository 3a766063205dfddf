"""Reading rows of a buffer: ``ls``, ``show``, ``quarantine`` and ``export`` (all read-only).

Each runs in one read snapshot (:func:`gateway.inspect.snapshot.snapshot`), except ``export``, which
streams in chunks of :data:`EXPORT_CHUNK` rows, each chunk its own short snapshot, so that a
slow consumer never pins the gateway's write-ahead log and memory stays bounded; a row's
state is the one it had when its chunk was read.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway._exceptions import ConfigError, NoSuchBatch, StoreError
from gateway.buffer.schema import EventKind, State
from gateway.inspect.snapshot import DEFAULT_WAIT_S, Snapshot, iso, snapshot
from protocol import (
    DEFAULT_MAX_BYTES,
    ProtocolError,
    Registry,
    body_hash,
    parse_batch_topic,
    parse_body,
    parse_envelope,
    verify,
)

EXPORT_CHUNK = 1000
LIST_COLUMNS = (
    "id, state, election, device, seq, size, received_at, attempts, delivered_at, reason, detail"
)


# -- ls -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ListQuery:
    states: Sequence[State] = ()
    device: str | None = None
    older_than_s: float | None = None  # by received_at
    newer_than_s: float | None = None
    limit: int = 50
    offset: int = 0
    cursor: int | None = None  # continue after this id (in the listing's order)
    newest_first: bool = True


def list_rows(path: Path, query: ListQuery, *, now: float | None = None, wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
    """One page of rows matching ``query``; ``next_cursor`` continues it (None at the end)."""
    moment = time.time() if now is None else now
    where: list[str] = []
    params: list[Any] = []
    if query.states:
        where.append(f"state IN ({', '.join('?' * len(query.states))})")
        params += [s.value for s in query.states]
    if query.device is not None:
        where.append("device = ?")
        params.append(query.device)
    if query.older_than_s is not None:
        where.append("received_at <= ?")
        params.append(moment - query.older_than_s)
    if query.newer_than_s is not None:
        where.append("received_at >= ?")
        params.append(moment - query.newer_than_s)
    if query.cursor is not None:
        where.append("id < ?" if query.newest_first else "id > ?")
        params.append(query.cursor)
    sql = f"SELECT {LIST_COLUMNS} FROM messages"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id {'DESC' if query.newest_first else 'ASC'} LIMIT ? OFFSET ?"
    params += [query.limit, query.offset]
    with snapshot(path, wait_s=wait_s) as snap:
        rows = [_listed(row, moment) for row in snap.conn.execute(sql, tuple(params))]
    full_page = query.limit > 0 and len(rows) == query.limit
    return {
        "rows": rows,
        "count": len(rows),
        "order": "newest" if query.newest_first else "oldest",
        "next_cursor": rows[-1]["id"] if full_page else None,
    }


def _listed(row: Any, moment: float) -> dict[str, Any]:
    return {
        "id": int(row["id"]),
        "state": row["state"],
        "election": row["election"],
        "device": row["device"],
        "seq": row["seq"],
        "size": int(row["size"]),
        "received_at": iso(row["received_at"]),
        "age_s": round(max(0.0, moment - float(row["received_at"])), 3),
        "attempts": int(row["attempts"]),
        "delivered_at": iso(row["delivered_at"]),
        "reason": row["reason"],
    }


# -- show ---------------------------------------------------------------------------------
def show_row(
    path: Path, row_id: int, *, keys_dir: Path | None = None, wait_s: float = DEFAULT_WAIT_S
) -> dict[str, Any]:
    """Everything about one row: columns, decoded body, signature re-checked, history."""
    with snapshot(path, wait_s=wait_s) as snap:
        row = snap.conn.execute("SELECT * FROM messages WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise NoSuchBatch(_missing(snap, row_id))
        history = _events(snap, row_id)
        recorded = snap.settings()
    data = dict(row)
    payload = bytes(data.pop("payload"))
    keys = keys_dir or (Path(recorded["keys_dir"]) if "keys_dir" in recorded else None)
    max_bytes = int(recorded.get("max_payload_bytes", DEFAULT_MAX_BYTES))
    result: dict[str, Any] = {
        "id": data["id"],
        "state": data["state"],
        "topic": data["topic"],
        "election": data["election"],
        "device": data["device"],
        "seq": data["seq"],
        "body_hash": data["body_hash"],
        "size": data["size"],
        "attempts": data["attempts"],
        "reason": data["reason"],
        "detail": data["detail"],
        "times": {
            name: iso(data[name])
            for name in (
                "received_at",
                "quarantined_at",
                "first_sent_at",
                "last_sent_at",
                "delivered_at",
                "retried_at",
                "updated_at",
            )
        },
    }
    result.update(decode_payload(payload, data["body_hash"]))
    result["signature"] = signature_status(payload, data["topic"], keys, max_bytes)
    result["history"] = _history(data, history)
    return result


def decode_payload(payload: bytes, stored_hash: str | None) -> dict[str, Any]:
    """The envelope's kid and signature, the body's fields, and whether its hash still matches."""
    out: dict[str, Any] = {"envelope": None, "body": None, "body_error": None, "hash_matches": None}
    try:
        envelope = parse_envelope(payload, max_bytes=max(len(payload), 1))
    except ProtocolError as err:
        out["body_error"] = f"{err.reason.value}: {err}"
        return out
    out["envelope"] = {"kid": envelope.kid, "sig": base64.b64encode(envelope.sig).decode()}
    if stored_hash is not None:
        out["hash_matches"] = body_hash(envelope.body) == stored_hash
    try:
        out["body"] = parse_body(envelope.body).to_mapping()
    except ProtocolError as err:
        out["body_error"] = f"{err.reason.value}: {err}"
        try:
            out["body"] = orjson.loads(envelope.body)
        except orjson.JSONDecodeError:
            out["body"] = None
    return out


def load_keys(keys_dir: Path) -> Registry:
    if not keys_dir.is_dir():
        raise ConfigError(f"--keys: {keys_dir} is not a directory")
    try:
        return Registry.load(keys_dir)
    except ProtocolError as exc:
        raise ConfigError(f"--keys: {exc}") from exc


def signature_status(
    payload: bytes, topic: str, keys_dir: Path | None, max_bytes: int
) -> dict[str, Any]:
    """Verify ``payload`` now, as the gateway would: ``valid``, ``invalid`` or ``unchecked``."""
    if keys_dir is None:
        return {"status": "unchecked", "reason": None, "detail": "no keys directory: pass --keys DIR", "keys": None}
    if not keys_dir.is_dir():
        detail = f"keys directory {keys_dir} is not there: pass --keys DIR"
        return {"status": "unchecked", "reason": None, "detail": detail, "keys": str(keys_dir)}
    registry = load_keys(keys_dir)
    try:
        where = parse_batch_topic(topic)
        verify(
            payload,
            registry,
            max_bytes=max_bytes,
            topic_device=where.device,
            topic_election=where.election,
        )
    except ProtocolError as err:
        return {"status": "invalid", "reason": err.reason.value, "detail": str(err), "keys": str(keys_dir)}
    return {"status": "valid", "reason": None, "detail": None, "keys": str(keys_dir)}


def _events(snap: Snapshot, row_id: int) -> list[Any]:
    return list(
        snap.conn.execute(
            "SELECT at, kind, first_id, last_id, rows, reason, detail FROM events"
            " WHERE first_id = ? ORDER BY at, id",
            (row_id,),
        )
    )


def _history(row: dict[str, Any], events: list[Any]) -> list[dict[str, Any]]:
    steps: list[tuple[float, str, str | None, str | None]] = [
        (row["received_at"], "received", None, None)
    ]
    if row["quarantined_at"] is not None:
        steps.append((row["quarantined_at"], "quarantined", None, None))
    if row["first_sent_at"] is not None:
        steps.append((row["first_sent_at"], "first sent", None, None))
    if row["last_sent_at"] is not None and row["attempts"] > 1:
        steps.append((row["last_sent_at"], f"last sent (attempt {row['attempts']})", None, None))
    if row["delivered_at"] is not None:
        steps.append((row["delivered_at"], "delivered (cloud broker PUBACK)", None, None))
    for event in events:
        steps.append((event["at"], event["kind"], event["reason"], event["detail"]))
    if row["state"] == State.QUARANTINED.value and row["reason"] is not None:
        # The current reason belongs to the latest quarantine (at arrival or at a retry).
        latest = max((i for i, s in enumerate(steps) if s[1] in ("quarantined", "retry_failed")), default=None)
        if latest is not None and steps[latest][2] is None:
            at, kind, _reason, _detail = steps[latest]
            steps[latest] = (at, kind, row["reason"], row["detail"])
    steps.sort(key=lambda step: step[0])
    return [{"at": iso(at), "event": kind, "reason": reason, "detail": detail} for at, kind, reason, detail in steps]


def _missing(snap: Snapshot, row_id: int) -> str:
    purge = snap.conn.execute(
        "SELECT at, reason FROM events WHERE kind = ? AND first_id <= ? AND last_id >= ?"
        " ORDER BY at DESC LIMIT 1",
        (EventKind.PURGED.value, row_id, row_id),
    ).fetchone()
    text = f"no batch with id {row_id} in buffer {snap.path}"
    if purge is not None:
        text += f" (rows in its id range were purged at {iso(purge['at'])}, {purge['reason']})"
    return text


# -- quarantine --------------------------------------------------------------------------------
def quarantine_summary(path: Path, *, limit: int = 100, wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
    """Quarantined rows (newest first, up to ``limit``; 0 = all) and their counts by reason."""
    with snapshot(path, wait_s=wait_s) as snap:
        by_reason = {
            str(reason): int(count)
            for reason, count in snap.conn.execute(
                "SELECT coalesce(reason, '?'), count(*) FROM messages WHERE state = 'quarantined'"
                " GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        }
        rows = snap.conn.execute(
            "SELECT id, election, device, seq, size, reason, detail, received_at, quarantined_at,"
            " retried_at FROM messages WHERE state = 'quarantined' ORDER BY id DESC LIMIT ?",
            (limit if limit > 0 else -1,),
        ).fetchall()
    return {
        "total": sum(by_reason.values()),
        "by_reason": by_reason,
        "rows": [
            {
                "id": int(r["id"]),
                "election": r["election"],
                "device": r["device"],
                "seq": r["seq"],
                "size": int(r["size"]),
                "reason": r["reason"],
                "detail": r["detail"],
                "received_at": iso(r["received_at"]),
                "quarantined_at": iso(r["quarantined_at"]),
                "retried_at": iso(r["retried_at"]),
            }
            for r in rows
        ],
    }


# -- export -------------------------------------------------------------------------------------
EXPORT_FIELDS = (
    "id", "state", "election", "device", "seq", "body_hash", "topic", "size", "attempts",
    "reason", "detail", "received_at", "quarantined_at", "first_sent_at", "last_sent_at",
    "delivered_at", "retried_at", "updated_at",
)  # fmt: skip
TIME_FIELDS = frozenset(f for f in EXPORT_FIELDS if f.endswith("_at"))


def export_rows(
    path: Path, *, states: Sequence[State] = (), wait_s: float = DEFAULT_WAIT_S
) -> Iterator[bytes]:
    """Every row (in id order) as one JSON line: state, times, reason, payload as text."""
    where = f" AND state IN ({', '.join('?' * len(states))})" if states else ""
    sql = (
        f"SELECT {', '.join(EXPORT_FIELDS)}, payload FROM messages WHERE id > ?{where}"
        " ORDER BY id LIMIT ?"
    )
    after = 0
    while True:  # bounded: ids only grow, each round moves past the last one read
        with snapshot(path, wait_s=wait_s) as snap:
            chunk = snap.conn.execute(
                sql, (after, *(s.value for s in states), EXPORT_CHUNK)
            ).fetchall()
        for row in chunk:
            yield export_line(row)
        if len(chunk) < EXPORT_CHUNK:
            return
        after = int(chunk[-1]["id"])


def export_line(row: Any) -> bytes:
    record: dict[str, Any] = {
        name: iso(row[name]) if name in TIME_FIELDS else row[name] for name in EXPORT_FIELDS
    }
    payload = bytes(row["payload"])
    try:
        record["payload"] = payload.decode("utf-8")
        record["payload_encoding"] = "utf-8"
    except UnicodeDecodeError:
        record["payload"] = base64.b64encode(payload).decode("ascii")
        record["payload_encoding"] = "base64"
    return orjson.dumps(record) + b"\n"


def export_to(
    path: Path, out: Path | None, *, states: Sequence[State] = (), wait_s: float = DEFAULT_WAIT_S
) -> int:
    """Write :func:`export_rows` to ``out`` (via a temporary file, then renamed) or stdout."""
    written = 0
    if out is None:
        stream = sys.stdout.buffer
        for line in export_rows(path, states=states, wait_s=wait_s):
            stream.write(line)
            written += 1
        stream.flush()
        return written
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            for line in export_rows(path, states=states, wait_s=wait_s):
                file.write(line)
                written += 1
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {out}: {exc.strerror}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written
