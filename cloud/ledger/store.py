"""Reading and writing one group's rows: the ledger's storage half (see cloud/ledger/ledger.py).

Everything here runs inside the group's one transaction, on SQLite and PostgreSQL alike.
It is the hot path of the cloud: statements are few per group (one read of the device rows,
one of the ledger rows the decisions need, one multi-row statement per table written; see
cloud/db.py for the bulk statements) and the per-row work is plain tuples and dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Connection

from cloud import models
from cloud.db import insert_missing, insert_rows, placeholder, update_rows, upsert_add
from cloud.ledger.chain import BatchKey, DeviceKey, DeviceState, GroupPlan, HeldBatch
from cloud.results.windows import write_windows
from protocol import VerifiedBatch, missing_ranges
from protocol.election import parse_timestamp
from protocol.keys import b64encode
from protocol.repair import SeqRange

_CONDITIONS_PER_QUERY = 200  # device ranges per query: 800 bound parameters
_DEVICE_COLUMNS = (
    "election, device, precinct, contiguous_seq, contiguous_hash, final_seq, max_seq, ballots"
)


def load_devices(
    conn: Connection,
    batches: Sequence[VerifiedBatch],
    seed: Callable[[list[DeviceKey]], list[dict[str, Any]]],
) -> dict[DeviceKey, DeviceState]:
    """The device rows of the group's devices, locked (FOR UPDATE on PostgreSQL) in key order.

    Rows missing (the registry grew since prepare()) are inserted from ``seed(devices)``.
    """
    keys = sorted({(b.body.election, b.body.device) for b in batches})
    if not keys:
        return {}
    rows = _device_rows(conn, keys)
    if len(rows) < len(keys):  # prepare() seeds every registered device; be safe anyway
        known = {(r[0], r[1]) for r in rows}
        missing = [key for key in keys if key not in known]
        insert_missing(conn, models.devices, seed(missing), key=("election", "device"))
        rows = _device_rows(conn, keys)
    return {(r[0], r[1]): DeviceState(*r) for r in rows}


def _device_rows(conn: Connection, keys: Sequence[DeviceKey]) -> list[Any]:
    if conn.dialect.name == "postgresql":
        # Locked in key order: concurrent workers serialise per device and cannot deadlock.
        sql = (
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE (election, device) IN"
            " (SELECT * FROM unnest(%b::text[], %b::text[]))"
            " ORDER BY election, device FOR UPDATE"
        )
        return list(conn.exec_driver_sql(sql, ([e for e, _ in keys], [d for _, d in keys])).all())
    # SQLite: BEGIN IMMEDIATE already serialises writers. In chunks: one statement takes an
    # expression at most 1,000 deep, so a group from more devices than that would fail.
    mark = placeholder(conn.dialect)
    rows: list[Any] = []
    for i in range(0, len(keys), _CONDITIONS_PER_QUERY):
        chunk = keys[i : i + _CONDITIONS_PER_QUERY]
        where = " OR ".join([f"(election = {mark} AND device = {mark})"] * len(chunk))
        sql = f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE {where}"
        rows += conn.exec_driver_sql(sql, tuple(v for key in chunk for v in key)).all()
    return sorted(rows, key=lambda r: (r[0], r[1]))


def load_held(
    conn: Connection,
    batches: Sequence[VerifiedBatch],
    devices: dict[DeviceKey, DeviceState],
) -> dict[BatchKey, HeldBatch]:
    """The ledger rows the group's decisions read, one index range per device.

    For each device: the rows from its lowest seq in the group - 1 to its highest + 1 (each
    batch's key and both neighbours). A device whose contiguous seq this group can advance
    (it brings seq contiguous + 1; the ledger never holds that row, or contiguous would be
    past it) also needs every row above, for :meth:`GroupPlan.finish` to walk: its range is
    open-ended. One range per device keeps each condition on the unique index.
    """
    seqs: dict[DeviceKey, list[int]] = {}
    for b in batches:
        seqs.setdefault((b.body.election, b.body.device), []).append(b.body.seq)
    if not seqs:
        return {}
    ranges: list[tuple[str, str, int, int | None]] = []
    for key in sorted(seqs):
        low, high = min(seqs[key]) - 1, max(seqs[key]) + 1
        state = devices.get(key)
        open_ended = state is not None and state.contiguous_seq + 1 in seqs[key]
        ranges.append((*key, low, None if open_ended else high))
    held: dict[BatchKey, HeldBatch] = {}
    if conn.dialect.name == "postgresql":
        sql = (
            "SELECT l.election, l.device, l.seq, l.body_hash, l.prev FROM ledger AS l"
            " JOIN unnest(%b::text[], %b::text[], %b::int[], %b::int[]) AS r(e, d, low, high)"
            " ON l.election = r.e AND l.device = r.d AND l.seq >= r.low"
            " AND (r.high IS NULL OR l.seq <= r.high)"
        )
        columns = tuple(list(column) for column in zip(*ranges, strict=True))
        for election, device, seq, digest, prev in conn.exec_driver_sql(sql, columns):
            held[(election, device, seq)] = HeldBatch(digest, prev)
        return held
    mark = placeholder(conn.dialect)
    bounded = f"(election = {mark} AND device = {mark} AND seq >= {mark} AND seq <= {mark})"
    unbounded = f"(election = {mark} AND device = {mark} AND seq >= {mark})"
    conditions = [
        (unbounded, (e, d, low)) if high is None else (bounded, (e, d, low, high))
        for e, d, low, high in ranges
    ]
    for i in range(0, len(conditions), _CONDITIONS_PER_QUERY):
        chunk = conditions[i : i + _CONDITIONS_PER_QUERY]
        sql = "SELECT election, device, seq, body_hash, prev FROM ledger WHERE " + " OR ".join(
            c for c, _ in chunk
        )
        params = tuple(v for _, values in chunk for v in values)
        for election, device, seq, digest, prev in conn.exec_driver_sql(sql, params):
            held[(election, device, seq)] = HeldBatch(digest, prev)
    return held


def write_group(
    conn: Connection,
    plan: GroupPlan,
    arrivals: dict[BatchKey, datetime],
    rejections: list[dict[str, Any]],
) -> None:
    now = datetime.now(UTC)
    accepted = plan.accepted
    insert_rows(
        conn,
        models.ledger,
        [ledger_row(b, plan.held[b.body.key].duplicates, arrivals[b.body.key], now) for b in accepted],
    )
    bumped = [(key, h.duplicates) for key, h in plan.held.items() if not h.new and h.duplicates]
    update_rows(
        conn,
        models.ledger,
        [
            {"election": e, "device": d, "seq": s, "duplicates": n, "last_duplicate_at": now}
            for (e, d, s), n in sorted(bumped)
        ],
        key=("election", "device", "seq"),
        set_=("last_duplicate_at",),
        add=("duplicates",),
    )
    tallies: dict[tuple[str, str, str, str], int] = {}
    ballots: dict[tuple[str, str], list[int]] = {}
    for batch in accepted:
        body = batch.body
        for contest, choices in body.counts.items():
            for choice, votes in choices.items():
                key = (body.election, contest, choice, body.precinct)
                tallies[key] = tallies.get(key, 0) + votes
        entry = ballots.setdefault((body.election, body.precinct), [0, 0])
        entry[0] += body.ballots
        entry[1] += 1
    upsert_add(
        conn,
        models.tallies,
        [
            {"election": e, "contest": c, "choice": ch, "precinct": p, "votes": v}
            for (e, c, ch, p), v in sorted(tallies.items())
        ],
        key=("election", "contest", "choice", "precinct"),
        add=("votes",),
        distinct=True,
    )
    upsert_add(
        conn,
        models.precinct_ballots,
        [
            {"election": e, "precinct": p, "ballots": b, "batches": n}
            for (e, p), (b, n) in sorted(ballots.items())
        ],
        key=("election", "precinct"),
        add=("ballots", "batches"),
        distinct=True,
    )
    write_windows(conn, accepted)  # trend windows (cloud/results/windows.py), same transaction
    _write_devices(conn, plan, now)
    insert_rows(conn, models.rejections, rejections)


def _write_devices(conn: Connection, plan: GroupPlan, now: datetime) -> None:
    changed = sorted((s for s in plan.devices.values() if s.touched), key=lambda s: s.key)
    update_rows(
        conn,
        models.devices,
        [
            {
                "election": s.election,
                "device": s.device,
                "contiguous_seq": s.contiguous_seq,
                "contiguous_hash": s.contiguous_hash,
                "final_seq": s.final_seq,
                "max_seq": s.max_seq,
                "updated_at": now,
                "batches": s.batches_added,
                "duplicates": s.duplicates_added,
                "ballots": s.ballots_added,
            }
            for s in changed
        ],
        key=("election", "device"),
        set_=("contiguous_seq", "contiguous_hash", "final_seq", "max_seq", "updated_at"),
        add=("batches", "duplicates", "ballots"),
    )


@lru_cache(maxsize=4096)
def _issued_at(value: str) -> datetime:
    """A verified body's issued_at (valid: checked by protocol.verify); they repeat across a
    fleet's batches (second precision), so each is parsed once."""
    return parse_timestamp(value, "issued_at")


def ledger_row(
    batch: VerifiedBatch, duplicates: int, received_at: datetime, now: datetime
) -> dict[str, Any]:
    body = batch.body
    return {
        "election": body.election,
        "device": body.device,
        "seq": body.seq,
        "precinct": body.precinct,
        "body": batch.envelope.body.decode("utf-8"),
        "sig": b64encode(batch.envelope.sig),
        "kid": batch.envelope.kid,
        "body_hash": batch.body_hash,
        "prev": body.prev,
        "ballots": body.ballots,
        "final": body.final,
        "issued_at": _issued_at(body.issued_at),
        "received_at": received_at,
        "duplicates": duplicates,
        "last_duplicate_at": now if duplicates else None,
    }


def _missing(conn: Connection, key: DeviceKey, contiguous: int, highest: int) -> tuple[SeqRange, ...]:
    """The seq ranges between ``contiguous`` and ``highest`` the ledger does not hold."""
    held = conn.execute(
        select(models.ledger.c.seq).where(
            models.ledger.c.election == key[0],
            models.ledger.c.device == key[1],
            models.ledger.c.seq > contiguous,
        )
    ).scalars()
    return missing_ranges(contiguous, highest, held)


def _per_device(
    conn: Connection, select_sql: str, where: str, pg_join: str, rows: Sequence[tuple[Any, ...]]
) -> dict[DeviceKey, list[tuple[Any, ...]]]:
    """``select_sql`` (its first two columns election, device) for many devices in one query
    (SQLite: per 200 devices): ``where`` is one device's condition, ``rows`` its values; on
    PostgreSQL ``pg_join`` joins one ``unnest`` of the values' columns instead."""
    found: dict[DeviceKey, list[tuple[Any, ...]]] = {}
    if not rows:
        return found
    if conn.dialect.name == "postgresql":
        columns = tuple(list(column) for column in zip(*rows, strict=True))
        results: list[Any] = list(conn.exec_driver_sql(select_sql + pg_join, columns))
    else:
        mark = placeholder(conn.dialect)
        condition = "(" + where.replace("?", mark) + ")"
        results = []
        for i in range(0, len(rows), _CONDITIONS_PER_QUERY):
            chunk = rows[i : i + _CONDITIONS_PER_QUERY]
            sql = f"{select_sql} WHERE " + " OR ".join([condition] * len(chunk))
            results += conn.exec_driver_sql(sql, tuple(v for row in chunk for v in row)).all()
    for row in results:
        found.setdefault((row[0], row[1]), []).append(tuple(row[2:]))
    return found


def _held_above(conn: Connection, floors: dict[DeviceKey, int]) -> dict[DeviceKey, list[int]]:
    """Per device, the seqs the ledger holds above its floor (its contiguous seq)."""
    rows = [(e, d, floor) for (e, d), floor in sorted(floors.items())]
    found = _per_device(
        conn,
        "SELECT l.election, l.device, l.seq FROM ledger AS l",
        "l.election = ? AND l.device = ? AND l.seq > ?",
        " JOIN unnest(%b::text[], %b::text[], %b::int[]) AS r(e, d, floor)"
        " ON l.election = r.e AND l.device = r.d AND l.seq > r.floor",
        rows,
    )
    return {key: [int(r[0]) for r in held] for key, held in found.items()}


def _open_repairs(conn: Connection, keys: Sequence[DeviceKey]) -> dict[DeviceKey, list[SeqRange]]:
    """Per device, its repairs rows not yet repaired: (first_seq, last_seq)."""
    found = _per_device(
        conn,
        "SELECT p.election, p.device, p.first_seq, p.last_seq FROM repairs AS p",
        "p.election = ? AND p.device = ? AND p.repaired_at IS NULL",
        " JOIN unnest(%b::text[], %b::text[]) AS r(e, d)"
        " ON p.election = r.e AND p.device = r.d AND p.repaired_at IS NULL",
        list(keys),
    )
    return {key: [(int(r[0]), int(r[1])) for r in rows] for key, rows in found.items()}


def read_gaps(conn: Connection, keys: Sequence[DeviceKey]) -> dict[DeviceKey, tuple[SeqRange, ...]]:
    """Each device's missing ranges as the database holds them now (empty: no gap), whichever
    worker committed what: a repair request is checked against this before it goes out."""
    table = models.devices
    gaps: dict[DeviceKey, tuple[SeqRange, ...]] = {}
    for key in keys:
        row = conn.execute(
            select(table.c.contiguous_seq, table.c.max_seq).where(
                table.c.election == key[0], table.c.device == key[1]
            )
        ).first()
        if row is None or row.contiguous_seq >= row.max_seq:
            gaps[key] = ()
        else:
            gaps[key] = _missing(conn, key, int(row.contiguous_seq), int(row.max_seq))
    return gaps


def write_gaps(
    conn: Connection, plan: GroupPlan, gapped_before: set[DeviceKey]
) -> dict[DeviceKey, tuple[SeqRange, ...]]:
    """Record seq gaps in ``repairs``, after :func:`write_group`, in the same transaction.

    For every device the group touched that had a gap before it or has one now: the missing
    ranges below its highest held seq (a range not inside an open row gets a row of its own; a
    narrowed gap keeps its row), and every open row no longer overlapping a missing range is
    marked repaired. Returns those devices' current ranges
    (empty: no gap left). Devices without gaps cost nothing here (the usual case).
    """
    now = datetime.now(UTC)
    gaps: dict[DeviceKey, tuple[SeqRange, ...]] = {}
    table = models.repairs
    states = [
        state
        for state in sorted((s for s in plan.devices.values() if s.touched), key=lambda s: s.key)
        if state.contiguous_seq < state.max_seq or state.key in gapped_before
    ]
    if not states:
        return gaps
    # Two queries for all these devices (not two per device): with --share every worker sees
    # the others' seqs as gaps until they commit, so this runs for most devices of a group.
    held = _held_above(
        conn, {s.key: s.contiguous_seq for s in states if s.contiguous_seq < s.max_seq}
    )
    open_by_device = _open_repairs(conn, [s.key for s in states])
    new_rows: list[dict[str, Any]] = []
    for state in states:
        ranges: tuple[SeqRange, ...] = ()
        if state.contiguous_seq < state.max_seq:
            ranges = missing_ranges(state.contiguous_seq, state.max_seq, held.get(state.key, ()))
        gaps[state.key] = ranges
        open_rows = open_by_device.get(state.key, [])
        # A range inside an open row is that gap narrowed (11-12, then 12 once 11 arrived): the
        # row stays open until all of it is repaired; only a range outside every open row is new.
        new_rows += [
            {
                "election": state.election,
                "device": state.device,
                "first_seq": first,
                "last_seq": last,
                "detected_at": now,
                "requests": 0,
            }
            for first, last in ranges
            if not any(low <= first and last <= high for low, high in open_rows)
        ]
        for first, last in open_rows:
            if any(first <= high and low <= last for low, high in ranges):
                continue  # still (partly) missing
            conn.execute(
                update(table)
                .where(
                    and_(
                        table.c.election == state.election,
                        table.c.device == state.device,
                        table.c.first_seq == first,
                        table.c.last_seq == last,
                    )
                )
                .values(repaired_at=now)
            )
    insert_missing(conn, table, new_rows, key=("election", "device", "first_seq", "last_seq"))
    return gaps
