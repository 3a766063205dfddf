"""The bulk statements of cloud/db.py (the ledger's hot path) on SQLite and PostgreSQL: what they
store is what SQLAlchemy Core reads back, whatever the row count, and the upsert and update
arithmetic holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from cloud import models
from cloud.db import insert_missing, insert_rows, update_rows, upsert_add

T0 = datetime(2026, 11, 3, 20, 0, 0, 123456, tzinfo=UTC)


def _rejection(i: int) -> dict[str, Any]:
    return {
        "election": "e" if i % 3 else None,
        "device": f"d{i % 7}",
        "seq": i if i % 5 else None,
        "topic": f"edgetally/v1/e/d{i % 7}/batch",
        "reason": "bad_signature",
        "detail": f"it's row {i}, with 'quotes' and %s",
        "payload": bytes([i % 256, 0, 255]) * 3,
        "payload_hash": f"{i:064x}",
        "received_at": T0 + timedelta(seconds=i),
    }


def test_insert_rows_stores_what_core_reads_back_across_several_statements(engine: Engine) -> None:
    rows = [_rejection(i) for i in range(2_500)]  # SQLite: more than one multi-row statement
    with engine.begin() as conn:
        insert_rows(conn, models.rejections, rows)
    r = models.rejections.c
    with engine.connect() as conn:
        got = [dict(row._mapping) for row in conn.execute(select(models.rejections).order_by(r.id))]
    assert [{k: v for k, v in g.items() if k != "id"} for g in got] == rows
    assert got[-1]["received_at"].tzinfo is UTC


def test_upsert_add_adds_to_stored_rows_and_merges_rows_that_share_a_key(engine: Engine) -> None:
    def tally(choice: str, votes: int) -> dict[str, Any]:
        return {"election": "e", "contest": "c", "choice": choice, "precinct": "p", "votes": votes}

    key = ("election", "contest", "choice", "precinct")
    with engine.begin() as conn:
        upsert_add(conn, models.tallies, [tally("a", 5), tally("b", 1)], key=key, add=("votes",))
        upsert_add(
            conn,
            models.tallies,
            [tally("a", 2), tally("c", 4), tally("a", 3)],  # "a" twice in one statement
            key=key,
            add=("votes",),
        )
    t = models.tallies.c
    with engine.connect() as conn:
        assert dict(conn.execute(select(t.choice, t.votes).order_by(t.choice)).all()) == {
            "a": 10,
            "b": 1,
            "c": 4,
        }



def test_upsert_add_of_distinct_rows_adds_to_stored_rows_across_several_statements(engine: Engine) -> None:
    """``distinct=True`` (rows made from a dict, as the ledger's tallies are) adds exactly as
    the checked path does, over more rows than one SQLite statement holds."""
    key = ("election", "contest", "choice", "precinct")

    def tallies(votes: int) -> list[dict[str, Any]]:
        return [
            {"election": "e", "contest": f"c{i % 9}", "choice": f"x{i}", "precinct": "p", "votes": votes + i}
            for i in range(1_500)
        ]

    with engine.begin() as conn:
        upsert_add(conn, models.tallies, tallies(1)[:700], key=key, add=("votes",), distinct=True)
    with engine.begin() as conn:
        upsert_add(conn, models.tallies, tallies(10), key=key, add=("votes",), distinct=True)
    t = models.tallies.c
    with engine.connect() as conn:
        got = dict(conn.execute(select(t.choice, t.votes)).all())
    assert got == {f"x{i}": (1 + i if i < 700 else 0) + 10 + i for i in range(1_500)}

def test_update_rows_sets_and_adds_per_key_and_insert_missing_keeps_existing(
    engine: Engine,
) -> None:
    def device(name: str, seq: int) -> dict[str, Any]:
        return {
            "election": "e",
            "device": name,
            "precinct": "p",
            "contiguous_seq": seq,
            "contiguous_hash": "0" * 64,
            "final_seq": None,
            "max_seq": seq,
            "batches": 1,
            "duplicates": 0,
            "updated_at": None,
        }

    key = ("election", "device")
    with engine.begin() as conn:
        insert_missing(conn, models.devices, [device("x", 1), device("y", 1)], key=key)
        insert_missing(conn, models.devices, [device("x", 9), device("z", 2)], key=key)
        update_rows(
            conn,
            models.devices,
            [
                {"election": "e", "device": "x", "final_seq": 4, "updated_at": T0, "batches": 3},
                {"election": "e", "device": "z", "final_seq": None, "updated_at": T0, "batches": 1},
            ],
            key=key,
            set_=("final_seq", "updated_at"),
            add=("batches",),
        )
    d = models.devices.c
    with engine.connect() as conn:
        got = conn.execute(
            select(d.device, d.contiguous_seq, d.final_seq, d.batches, d.updated_at).order_by(
                d.device
            )
        ).all()
    assert [tuple(row) for row in got] == [
        ("x", 1, 4, 4, T0),
        ("y", 1, None, 1, None),
        ("z", 2, None, 2, T0),
    ]
