"""The uplink's round on a real SQLite buffer: ``advance`` marks what the cloud acknowledged
delivered and hands out the next pack in one transaction; only ingress's puts are fsynced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.buffer.rows import NewMessage
from gateway.buffer.schema import State
from gateway.buffer.store import RUN_MIN, Buffer
from gateway.config import SyncMode

SYNC_VALUE = {SyncMode.NORMAL: 1, SyncMode.FULL: 2}  # what PRAGMA synchronous reads back


def batch(seq: int, state: State = State.PENDING) -> NewMessage:
    return NewMessage(
        topic="edgetally/v1/el/dev-a/batch",
        payload=f"envelope {seq}".encode(),
        state=state,
        received_at=time.time(),
        election="el",
        device="dev-a",
        seq=seq,
        body_hash=f"{seq:064x}",
        reason="bad_signature" if state is State.QUARANTINED else None,
    )


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    with Buffer(tmp_path / "buffer.db") as opened:
        yield opened


def test_advance_confirms_the_acknowledged_rows_and_hands_out_the_next_pack(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 11)])
    first = buffer.fetch_pack(4)
    delivered, rows = buffer.advance([row.id for row in first[:3]], 5)
    assert delivered == 3
    assert [row.seq for row in rows] == [5, 6, 7, 8, 9]
    counts = buffer.counts()
    assert (counts[State.DELIVERED], counts[State.INFLIGHT], counts[State.PENDING]) == (3, 6, 1)
    assert buffer.usage().delivered_batches == 3
    assert buffer.usage().live_batches == 7


def test_advance_with_nothing_to_confirm_or_fetch_writes_nothing(buffer: Buffer) -> None:
    buffer.put_many([batch(1)])
    assert buffer.advance([], 0) == (0, [])
    assert buffer.counts()[State.PENDING] == 1


def test_confirm_marks_exactly_the_in_flight_rows_named_in_runs_and_scattered(buffer: Buffer) -> None:
    total = 3 * RUN_MIN + 6
    buffer.put_many([batch(seq) for seq in range(1, total + 1)])
    buffer.put_many([batch(10_000, State.QUARANTINED)])
    (quarantined,) = buffer.quarantined()
    inflight = buffer.fetch_pack(total - 2)  # the last two stay pending
    pending_ids = [inflight[-1].id + 1, inflight[-1].id + 2]  # ids follow the order of arrival
    ids = [row.id for row in inflight]
    run = ids[: RUN_MIN + 2]  # one long run
    scattered = ids[RUN_MIN + 4 :: 3]  # no two adjacent
    named = run + scattered + run[:3] + pending_ids + [quarantined.id]  # repeats and non-inflight too
    assert buffer.confirm(named) == len(run) + len(scattered)
    counts = buffer.counts()
    assert counts[State.DELIVERED] == len(run) + len(scattered)
    assert counts[State.INFLIGHT] == len(ids) - len(run) - len(scattered)
    assert counts[State.PENDING] == 2
    assert counts[State.QUARANTINED] == 1
    assert buffer.confirm(run) == 0  # already delivered


def test_puts_commit_fsynced_and_uplink_marks_without_fsync_on_the_same_connections(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 5)])
    for _ in range(3):  # pooled connections go from one kind of transaction to the other
        with buffer._transaction("fetch", sync=SyncMode.NORMAL) as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == SYNC_VALUE[SyncMode.NORMAL]
        with buffer._transaction("put") as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == SYNC_VALUE[SyncMode.FULL]
    delivered, rows = buffer.advance([], 2)
    assert (delivered, len(rows)) == (0, 2)


def test_a_normal_buffer_stays_normal(tmp_path: Path) -> None:
    with Buffer(tmp_path / "buffer.db", sync=SyncMode.NORMAL) as normal, normal._transaction("put") as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == SYNC_VALUE[SyncMode.NORMAL]


def test_marks_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with Buffer(path) as first:
        first.put_many([batch(seq) for seq in range(1, 6)])
        sent = first.fetch_pack(5)
        first.advance([row.id for row in sent[:2]], 0)
    with Buffer(path) as again:
        counts = again.counts()
        assert (counts[State.DELIVERED], counts[State.INFLIGHT]) == (2, 3)
        assert again.reset_inflight() == 3
        assert [row.seq for row in again.fetch_pack(10)] == [3, 4, 5]


def test_a_writer_and_an_uplink_thread_share_the_buffer_exactly(buffer: Buffer) -> None:
    """Both threads of a running gateway write at once (they queue on the buffer's write
    lock): every batch stored is delivered once, and the counters agree."""
    total, group = 2000, 100

    def uplink() -> int:
        delivered, sent = 0, []
        for _ in range(10_000):  # bounded: far more rounds than the batches need
            done, rows = buffer.advance(sent, 64)
            delivered += done
            sent = [row.id for row in rows]
            if delivered == total:
                break
        return delivered

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(uplink)
        for start in range(0, total, group):
            assert buffer.put_many([batch(seq) for seq in range(start, start + group)]).stored == group
        assert future.result(timeout=120) == total
    counts = buffer.counts()
    assert (counts[State.DELIVERED], counts[State.PENDING], counts[State.INFLIGHT]) == (total, 0, 0)
    assert buffer.usage().live_batches == 0
