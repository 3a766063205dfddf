"""Reading and writing one group's rows: the ledger's storage half (see cloud/ledger.py).

Everything here runs inside the group's one transaction, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from cloud import models
from cloud.chain import BatchKey, DeviceKey, DeviceState, GroupPlan, HeldBatch
from cloud.db import insert_missing, upsert_add
from protocol import VerifiedBatch
from protocol.election import parse_timestamp
from protocol.keys import b64encode

_KEY_CHUNK = 300  # batch keys per IN (...) list: 900 bound parameters
_CONDITIONS_PER_QUERY = 50


def load_devices(
    conn: Connection,
    batches: Sequence[VerifiedBatch],
    seed: Callable[[list[str]], list[dict[str, Any]]],
) -> dict[DeviceKey, DeviceState]:
    """The device rows of the group's devices, locked (FOR UPDATE on PostgreSQL) in key order.

    Rows missing (the registry grew since prepare()) are inserted from ``seed(devices)``.
    """
    keys = sorted({(b.body.election, b.body.device) for b in batches})
    if not keys:
        return {}
    d = models.devices.c
    # Locked in key order (PostgreSQL): concurrent workers serialise per device, no deadlock.
    query = (
        select(models.devices)
        .where(tuple_(d.election, d.device).in_(keys))
        .order_by(d.election, d.device)
        .with_for_update()
    )
    rows = conn.execute(query).all()
    if len(rows) < len(keys):  # prepare() seeds every registered device; be safe anyway
        known = {(r.election, r.device) for r in rows}
        missing = [device for election, device in keys if (election, device) not in known]
        insert_missing(conn, models.devices, seed(missing), key=("election", "device"))
        rows = conn.execute(query).all()
    return {
        (r.election, r.device): DeviceState(
            r.election,
            r.device,
            r.precinct,
            r.contiguous_seq,
            r.contiguous_hash,
            r.final_seq,
            r.max_seq,
        )
        for r in rows
    }


def load_held(
    conn: Connection,
    batches: Sequence[VerifiedBatch],
    devices: dict[DeviceKey, DeviceState],
) -> dict[BatchKey, HeldBatch]:
    """Ledger rows at each batch's key and its neighbours, and above each contiguous seq."""
    lc = models.ledger.c
    columns = (lc.election, lc.device, lc.seq, lc.body_hash, lc.prev)
    wanted = sorted(
        {(b.body.election, b.body.device, b.body.seq + k) for b in batches for k in (-1, 0, 1)}
    )
    conditions: list[ColumnElement[bool]] = [
        tuple_(lc.election, lc.device, lc.seq).in_(wanted[i : i + _KEY_CHUNK])
        for i in range(0, len(wanted), _KEY_CHUNK)
    ]
    conditions += [
        and_(lc.election == s.election, lc.device == s.device, lc.seq > s.contiguous_seq)
        for s in devices.values()
        if s.max_seq > s.contiguous_seq
    ]
    held: dict[BatchKey, HeldBatch] = {}
    for i in range(0, len(conditions), _CONDITIONS_PER_QUERY):
        for row in conn.execute(
            select(*columns).where(or_(*conditions[i : i + _CONDITIONS_PER_QUERY]))
        ):
            held[(row.election, row.device, row.seq)] = HeldBatch(row.body_hash, row.prev)
    return held


def write_group(
    conn: Connection,
    plan: GroupPlan,
    arrivals: dict[BatchKey, datetime],
    rejections: list[dict[str, Any]],
) -> None:
    now = datetime.now(UTC)
    accepted = plan.accepted
    if accepted:
        conn.execute(
            models.ledger.insert(),
            [
                _ledger_row(b, plan.held[b.body.key].duplicates, arrivals[b.body.key], now)
                for b in accepted
            ],
        )
    bumped = [(key, h.duplicates) for key, h in plan.held.items() if not h.new and h.duplicates]
    if bumped:
        lc = models.ledger.c
        conn.execute(
            update(models.ledger)
            .where(
                lc.election == bindparam("k_election"),
                lc.device == bindparam("k_device"),
                lc.seq == bindparam("k_seq"),
            )
            .values(
                duplicates=lc.duplicates + bindparam("k_n"), last_duplicate_at=bindparam("k_at")
            ),
            [
                {"k_election": e, "k_device": d, "k_seq": s, "k_n": n, "k_at": now}
                for (e, d, s), n in bumped
            ],
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
    )
    _write_devices(conn, plan, now)
    if rejections:
        conn.execute(models.rejections.insert(), rejections)


def _write_devices(conn: Connection, plan: GroupPlan, now: datetime) -> None:
    changed = [s for s in plan.devices.values() if s.touched]
    if not changed:
        return
    dc = models.devices.c
    conn.execute(
        update(models.devices)
        .where(dc.election == bindparam("k_election"), dc.device == bindparam("k_device"))
        .values(
            contiguous_seq=bindparam("k_contiguous_seq"),
            contiguous_hash=bindparam("k_contiguous_hash"),
            final_seq=bindparam("k_final_seq"),
            max_seq=bindparam("k_max_seq"),
            batches=dc.batches + bindparam("k_batches"),
            duplicates=dc.duplicates + bindparam("k_duplicates"),
            updated_at=bindparam("k_at"),
        ),
        [
            {
                "k_election": s.election,
                "k_device": s.device,
                "k_contiguous_seq": s.contiguous_seq,
                "k_contiguous_hash": s.contiguous_hash,
                "k_final_seq": s.final_seq,
                "k_max_seq": s.max_seq,
                "k_batches": s.batches_added,
                "k_duplicates": s.duplicates_added,
                "k_at": now,
            }
            for s in sorted(changed, key=lambda s: s.key)
        ],
    )


def _ledger_row(
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
        "issued_at": parse_timestamp(body.issued_at, "issued_at"),
        "received_at": received_at,
        "duplicates": duplicates,
        "last_duplicate_at": now if duplicates else None,
    }
