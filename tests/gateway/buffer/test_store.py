"""The buffer on real SQLite files: the storage contract, de-duplication, quarantine, reopening,
foreign files, locking, the migrations, delivered rows and retention, usage counters, a full
disk and damaged files."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from gateway._exceptions import (
    BufferLocked,
    CorruptBuffer,
    DiskFull,
    ForeignFile,
    SchemaTooNew,
    StoreError,
)
from gateway.buffer import schema
from gateway.buffer.rows import NewMessage, Usage
from gateway.buffer.schema import APPLICATION_ID, MIGRATIONS, State
from gateway.buffer.store import Buffer
from gateway.buffer.tables import metadata
from tests.gateway.buffer_support import (
    PAGE,
    TABLE_LEAF,
    messages_root,
    overwrite_page,
    page_types,
    snapshot_dir,
    truncate_pages,
)


def batch(
    seq: int, *, device: str = "dev-a", digest: str | None = None, payload: bytes | None = None
) -> NewMessage:
    return NewMessage(
        topic=f"edgetally/v1/el/{device}/batch",
        payload=payload if payload is not None else f"envelope {device} {seq}".encode(),
        state=State.PENDING,
        received_at=time.time(),
        election="el",
        device=device,
        seq=seq,
        body_hash=digest or f"{seq:064x}",
    )


def rejected(reason: str, detail: str, payload: bytes = b"\x00not json") -> NewMessage:
    return NewMessage(
        topic="edgetally/v1/el/dev-a/batch",
        payload=payload,
        state=State.QUARANTINED,
        received_at=time.time(),
        election="el",
        device="dev-a",
        reason=reason,
        detail=detail,
    )


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    with Buffer(tmp_path / "buffer.db") as opened:
        yield opened


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_fetch_pack_hands_out_oldest_pending_rows_in_id_order(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 6)])
    first = buffer.fetch_pack(3)
    assert [m.seq for m in first] == [1, 2, 3]
    assert [m.id for m in first] == sorted(m.id for m in first)
    assert buffer.counts()[State.INFLIGHT] == 3
    assert [m.seq for m in buffer.fetch_pack(10)] == [4, 5]
    assert buffer.fetch_pack(10) == []


def test_fetch_pack_returns_exact_payload_bytes(buffer: Buffer) -> None:
    raw = bytes(range(256)) * 3
    buffer.put_many([batch(1, payload=raw)])
    (got,) = buffer.fetch_pack(1)
    assert got.payload == raw
    assert got.topic == "edgetally/v1/el/dev-a/batch"


def test_confirm_marks_only_rows_in_flight_delivered(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 4)])
    inflight = buffer.fetch_pack(2)
    pending_id = inflight[-1].id + 1
    assert buffer.confirm([m.id for m in inflight] + [pending_id]) == 2
    counts = buffer.counts()
    assert (counts[State.PENDING], counts[State.INFLIGHT], counts[State.DELIVERED]) == (1, 0, 2)
    assert [m.seq for m in buffer.fetch_pack(5)] == [3]


def test_release_puts_rows_back_and_they_leave_first_again(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 5)])
    inflight = buffer.fetch_pack(2)
    assert buffer.release([m.id for m in inflight]) == 2
    assert buffer.counts()[State.PENDING] == 4
    assert [m.seq for m in buffer.fetch_pack(4)] == [1, 2, 3, 4]


def test_reset_inflight_makes_every_row_in_flight_pending(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 4)])
    buffer.fetch_pack(3)
    assert buffer.reset_inflight() == 3
    assert buffer.counts()[State.PENDING] == 3


def test_identical_batch_is_stored_once_while_buffered(buffer: Buffer) -> None:
    first = buffer.put_many([batch(1), batch(2)])
    again = buffer.put_many([batch(1), batch(2), batch(3)])
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (1, 2)
    buffer.fetch_pack(1)  # seq 1 in flight: still a live copy
    assert buffer.put_many([batch(1)]).duplicates == 1
    assert buffer.counts()[State.PENDING] + buffer.counts()[State.INFLIGHT] == 3


def test_duplicates_within_one_group_are_stored_once(buffer: Buffer) -> None:
    result = buffer.put_many([batch(1), batch(1), batch(1)])
    assert (result.stored, result.duplicates) == (1, 2)


def test_same_seq_with_another_body_is_kept_for_the_cloud_to_judge(buffer: Buffer) -> None:
    result = buffer.put_many([batch(1, digest="a" * 64), batch(1, digest="b" * 64)])
    assert result.stored == 2


def test_batch_redelivered_after_delivery_is_buffered_again(buffer: Buffer) -> None:
    buffer.put_many([batch(1)])
    buffer.confirm([m.id for m in buffer.fetch_pack(1)])
    assert buffer.put_many([batch(1)]).stored == 1


def test_quarantined_rows_keep_reason_and_detail_and_are_never_fetched(buffer: Buffer) -> None:
    buffer.put_many(
        [rejected("bad_signature", "signature of device 'dev-a' seq 4 does not verify"), batch(1)]
    )
    assert [m.seq for m in buffer.fetch_pack(10)] == [1]
    (kept,) = buffer.quarantined()
    assert kept.reason == "bad_signature"
    assert kept.detail == "signature of device 'dev-a' seq 4 does not verify"
    assert kept.payload == b"\x00not json"
    assert buffer.counts()[State.QUARANTINED] == 1


def test_reopen_after_close_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with Buffer(path) as first:
        first.put_many([batch(seq, payload=f"p{seq}".encode()) for seq in range(1, 6)])
        first.put_many([rejected("malformed_json", "not JSON")])
        first.fetch_pack(2)
    with Buffer(path) as second:
        assert second.counts() == {
            State.PENDING: 3,
            State.INFLIGHT: 2,
            State.DELIVERED: 0,
            State.QUARANTINED: 1,
        }
        assert second.reset_inflight() == 2
        assert [m.payload for m in second.fetch_pack(10)] == [
            f"p{seq}".encode() for seq in range(1, 6)
        ]
        assert second.quarantined()[0].reason == "malformed_json"


def test_buffer_file_is_wal_and_carries_the_gateway_application_id(buffer: Buffer) -> None:
    probe = sqlite3.connect(f"{buffer.path.as_uri()}?mode=ro", uri=True)
    try:
        assert probe.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        probe.close()
    header = buffer.path.read_bytes()[:100]
    assert (
        int.from_bytes(header[68:72], "big") == APPLICATION_ID
    )  # in the main file, not only the WAL


def test_foreign_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    other.execute("INSERT INTO notes (body) VALUES ('keep me')")
    other.commit()
    other.close()
    before = files_in(tmp_path)
    with pytest.raises(ForeignFile, match="another application"):
        Buffer(path).open()
    assert files_in(tmp_path) == before


def test_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = files_in(tmp_path)
    with pytest.raises(ForeignFile, match="not an SQLite database"):
        Buffer(path).open()
    assert files_in(tmp_path) == before


def test_second_open_of_a_buffer_in_use_is_refused(buffer: Buffer) -> None:
    with pytest.raises(BufferLocked, match="in use by another gateway"):
        Buffer(buffer.path).open()
    buffer.put_many([batch(1)])  # the first one is unharmed
    assert buffer.counts()[State.PENDING] == 1


def test_buffer_from_a_newer_gateway_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with Buffer(path) as opened:
        opened.put_many([batch(1)])
    raw = sqlite3.connect(path)
    raw.execute("UPDATE alembic_version SET version_num = 'f999'")
    raw.commit()
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match="f999"):
        Buffer(path).open()
    assert path.read_bytes() == before


def test_migrations_build_exactly_the_schema_the_code_uses(buffer: Buffer) -> None:
    engine = create_engine(f"sqlite:///{buffer.path}")
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


# -- delivered rows, retention, history ---------------------------------------------------------
def rows_of(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    probe = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return probe.execute(sql, params).fetchall()
    finally:
        probe.close()


def actual_usage(path: Path) -> Usage:
    (row,) = rows_of(
        path,
        "SELECT coalesce(sum(state <> 'delivered'), 0), coalesce(sum((state <> 'delivered') * size), 0),"
        " coalesce(sum(state = 'delivered'), 0), coalesce(sum((state = 'delivered') * size), 0)"
        " FROM messages",
    )
    return Usage(*(int(v) for v in row))  # type: ignore[call-overload]


def test_confirmed_rows_stay_delivered_with_their_history_and_are_never_sent_again(
    buffer: Buffer,
) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 4)])
    sent = buffer.fetch_pack(3)
    buffer.release([sent[0].id], why="link_lost")
    again = buffer.fetch_pack(3)
    assert [m.id for m in again] == [sent[0].id]
    assert buffer.confirm([m.id for m in sent]) == 3
    assert buffer.fetch_pack(10) == []
    ((attempts, first, last, delivered, state),) = rows_of(
        buffer.path,
        "SELECT attempts, first_sent_at, last_sent_at, delivered_at, state FROM messages WHERE id = ?",
        (sent[0].id,),
    )
    assert (attempts, state) == (2, "delivered")
    assert first is not None and last is not None and delivered is not None
    assert first <= last <= delivered  # type: ignore[operator]
    events = rows_of(buffer.path, "SELECT kind, first_id, reason FROM events")
    assert events == [("released", sent[0].id, "link_lost")]


def test_purge_expired_deletes_only_delivered_rows_past_the_retention_window(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db", delivered_retention_s=100) as buffer:
        buffer.put_many([batch(seq) for seq in range(1, 7)] + [rejected("bad_signature", "no")])
        buffer.confirm([m.id for m in buffer.fetch_pack(4)])
        buffer.fetch_pack(1)  # one in flight, one pending, one quarantined stay whatever happens
        delivered_at = time.time()
        assert buffer.purge_expired(delivered_at + 50) == 0
        assert buffer.purge_expired(delivered_at + 101) == 4
        counts = buffer.counts()
        assert counts == {
            State.PENDING: 1,
            State.INFLIGHT: 1,
            State.DELIVERED: 0,
            State.QUARANTINED: 1,
        }
        assert buffer.purge_expired(delivered_at + 10_000) == 0
        ((kind, rows, reason),) = rows_of(buffer.path, "SELECT kind, rows, reason FROM events")
        assert (kind, rows, reason) == ("purged", 4, "retention")


def test_purge_expired_deletes_at_most_limit_rows_per_call(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db", delivered_retention_s=0) as buffer:
        buffer.put_many([batch(seq) for seq in range(1, 26)])
        buffer.confirm([m.id for m in buffer.fetch_pack(25)])
        later = time.time() + 1
        assert [buffer.purge_expired(later, limit=10) for _ in range(4)] == [10, 10, 5, 0]
        assert buffer.usage() == Usage(0, 0, 0, 0)


def test_usage_counts_live_and_delivered_batches_and_bytes(buffer: Buffer) -> None:
    buffer.put_many(
        [batch(seq, payload=b"x" * (100 * seq)) for seq in range(1, 5)]
        + [rejected("malformed_json", "no", payload=b"y" * 7)]
    )
    assert buffer.usage() == Usage(5, 1000 + 7, 0, 0)
    out = buffer.fetch_pack(3)  # in flight still counts as live
    assert buffer.usage() == Usage(5, 1007, 0, 0)
    buffer.confirm([out[0].id, out[2].id])  # seq 1 and 3 delivered
    assert buffer.usage() == Usage(3, 1007 - 400, 2, 400)
    buffer.put_many([batch(2), batch(9, payload=b"z" * 50)])  # seq 2 is a live duplicate
    assert buffer.usage() == Usage(4, 657, 2, 400)
    assert buffer.usage() == actual_usage(buffer.path)


def test_usage_stays_exact_when_another_connection_changes_the_file(buffer: Buffer) -> None:
    buffer.put_many([batch(seq, payload=b"p" * seq) for seq in range(1, 11)])
    buffer.confirm([m.id for m in buffer.fetch_pack(4)])
    other = sqlite3.connect(buffer.path, isolation_level=None)  # e.g. a CLI under a running gateway
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM messages WHERE seq IN (1, 9)")  # one delivered, one pending
        other.execute("UPDATE messages SET state = 'quarantined' WHERE seq = 10")
        other.execute("UPDATE messages SET state = 'pending' WHERE seq = 2")
        other.execute("COMMIT")
    finally:
        other.close()
    assert buffer.usage() == actual_usage(buffer.path) == Usage(6, 2 + 5 + 6 + 7 + 8 + 10, 2, 3 + 4)


def test_usage_matches_the_rows_through_a_random_sequence_of_operations(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    with Buffer(tmp_path / "b.db", delivered_retention_s=0) as buffer:
        seq = 0
        for _ in range(120):  # bounded: a fixed number of random steps
            step = rng.choice(["put", "put", "fetch", "confirm", "release", "purge", "reset"])
            if step == "put":
                group = []
                for _ in range(rng.randint(1, 8)):
                    seq += 1
                    size = rng.randint(1, 300)
                    if rng.random() < 0.15:
                        group.append(rejected("bad_signature", "x", payload=b"q" * size))
                    else:
                        group.append(batch(rng.choice([seq, max(1, seq - 2)]), payload=b"b" * size))
                buffer.put_many(group)
            elif step == "fetch":
                buffer.fetch_pack(rng.randint(1, 6))
            else:
                inflight = [
                    int(r[0]) for r in rows_of(buffer.path, "SELECT id FROM messages WHERE state = 'inflight'")
                ]
                chosen = rng.sample(inflight, k=min(len(inflight), rng.randint(0, 4)))
                if step == "confirm":
                    buffer.confirm(chosen)
                elif step == "release":
                    buffer.release(chosen)
                elif step == "purge":
                    buffer.purge_expired(time.time() + 1, limit=rng.randint(1, 5))
                else:
                    buffer.reset_inflight()
            assert buffer.usage() == actual_usage(buffer.path), step


def test_counts_and_oldest_outbound_come_from_indexes_and_counters(buffer: Buffer) -> None:
    assert buffer.oldest_outbound_at() is None
    buffer.put_many([batch(seq) for seq in range(1, 4)])
    first_arrival = buffer.oldest_outbound_at()
    buffer.confirm([m.id for m in buffer.fetch_pack(1)])
    assert buffer.oldest_outbound_at() is not None
    assert buffer.oldest_outbound_at() >= (first_arrival or 0)  # type: ignore[operator]
    assert buffer.counts()[State.DELIVERED] == 1


def test_reset_inflight_records_one_event_per_row(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 4)])
    ids = [m.id for m in buffer.fetch_pack(2)]
    assert buffer.reset_inflight() == 2
    assert rows_of(buffer.path, "SELECT kind, first_id, reason FROM events ORDER BY first_id") == [
        ("reset", ids[0], "restart"),
        ("reset", ids[1], "restart"),
    ]


def test_open_records_what_the_gateway_was_told_for_the_inspection_commands(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    with Buffer(tmp_path / "b.db", delivered_retention_s=42.5, keys_dir=keys, gateway_id="gw9") as opened:
        recorded = dict(rows_of(opened.path, "SELECT name, value FROM settings"))  # type: ignore[arg-type]
    assert recorded["keys_dir"] == str(keys.resolve())
    assert float(recorded["delivered_retention_s"]) == 42.5
    assert recorded["gateway_id"] == "gw9"


# -- disk full ---------------------------------------------------------------------------------
def test_put_many_on_a_full_disk_raises_disk_full_and_keeps_nothing_of_the_group(tmp_path: Path) -> None:
    """max_page_count makes SQLite fail with SQLITE_FULL, the same error path as ENOSPC."""
    assert issubclass(DiskFull, StoreError)
    path = tmp_path / "b.db"
    with Buffer(path, max_page_count=120) as buffer:
        stored = 0
        with pytest.raises(DiskFull, match="no room on the disk") as caught:
            for start in range(0, 10_000, 50):  # bounded; the cap is reached well before
                buffer.put_many([batch(seq, payload=b"e" * 700) for seq in range(start, start + 50)])
                stored += 50
        assert "nothing of it was kept" in str(caught.value)
        assert stored > 0
        assert buffer.counts()[State.PENDING] == stored  # the failed group left no row behind
        assert buffer.usage() == actual_usage(path) == Usage(stored, stored * 700, 0, 0)
        assert rows_of(path, "PRAGMA integrity_check") == [("ok",)]
        # The buffer stays usable: the uplink drains, and the next group finds room by
        # dropping delivered rows early.
        buffer.confirm([m.id for m in buffer.fetch_pack(200)])
        assert buffer.put_many([batch(50_000 + n, payload=b"f" * 700) for n in range(50)]).stored == 50
        assert buffer.counts()[State.DELIVERED] < min(200, stored)
        assert rows_of(path, "SELECT reason FROM events WHERE kind = 'purged'") == [("disk_full",)]


# -- upgrades and damaged files ----------------------------------------------------------------------
def test_a_buffer_of_revision_0001_is_upgraded_keeping_rows_and_computing_usage(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    old.execute("PRAGMA journal_mode = WAL")
    old.close()
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            conn.exec_driver_sql(
                "INSERT INTO messages (election, device, seq, body_hash, topic, payload, size, state,"
                " reason, detail, received_at, updated_at) VALUES"
                " ('el', 'd', 1, 'h1', 't', x'0102', 2, 'pending', NULL, NULL, 5, 6),"
                " ('el', 'd', 2, 'h2', 't', x'010203', 3, 'inflight', NULL, NULL, 5, 6),"
                " ('el', 'd', NULL, NULL, 't', x'01', 1, 'quarantined', 'malformed_json', 'no', 5, 7)"
            )
    finally:
        engine.dispose()
    with Buffer(path) as buffer:
        assert buffer.usage() == Usage(3, 6, 0, 0)
        assert buffer.reset_inflight() == 1
        assert [m.seq for m in buffer.fetch_pack(5)] == [1, 2]
    assert rows_of(path, "SELECT quarantined_at FROM messages WHERE state = 'quarantined'") == [(7.0,)]
    assert rows_of(path, "SELECT version_num FROM alembic_version") == [("0003",)]


@pytest.mark.parametrize("damage", ["leaf page", "interior page", "truncated"])
def test_a_damaged_buffer_is_refused_with_the_recover_command_and_left_unchanged(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "b.db"
    with Buffer(path) as opened:
        for start in range(0, 600, 200):
            opened.put_many([batch(seq, payload=bytes([seq % 251]) * 600) for seq in range(start, start + 200)])
    root = messages_root(path)
    leaves = page_types(path)[TABLE_LEAF]
    if damage == "leaf page":
        overwrite_page(path, leaves[len(leaves) // 2])
    elif damage == "interior page":
        overwrite_page(path, root)
    else:
        truncate_pages(path, len(path.read_bytes()) // PAGE // 2)
    before = snapshot_dir(tmp_path)
    keys = tmp_path / "keys"
    with pytest.raises(CorruptBuffer) as caught:
        Buffer(path, keys_dir=keys).open()
    message = str(caught.value)
    assert "damaged" in message and "left unchanged" in message
    assert "\n" not in message
    assert (
        f"edgetally gateway buffer recover --buffer {path} --out {path}.recovered --keys {keys}"
        in message
    )
    assert snapshot_dir(tmp_path) == before  # not even a lock file or a write-ahead log appeared


def test_a_live_buffer_seen_mid_checkpoint_is_not_called_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running gateway's checkpoint writes page 1 (the new page count) before the pages that
    extend the file; an inspection command reading the header in between must not cry damage."""
    path = tmp_path / "b.db"
    with Buffer(path) as opened:
        opened.put_many([batch(seq) for seq in range(300)])
    path.with_name("b.db-wal").write_bytes(b"")  # the gateway runs: its write-ahead log exists
    real = schema._read_header
    reads: list[int] = []

    def mid_checkpoint(p: Path) -> tuple[bytes, int]:
        header, size = real(p)
        reads.append(size)
        return (header, size - PAGE) if len(reads) == 1 else (header, size)

    monkeypatch.setattr(schema, "_read_header", mid_checkpoint)
    assert schema.recognise(path).kind is schema.FileKind.BUFFER
    assert len(reads) >= 2


def test_a_truncated_buffer_is_damaged_even_with_a_write_ahead_log_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Buffer(path) as opened:
        opened.put_many([batch(seq, payload=b"x" * 600) for seq in range(300)])
    truncate_pages(path, len(path.read_bytes()) // PAGE // 2)
    path.with_name("b.db-wal").write_bytes(b"")
    with pytest.raises(CorruptBuffer, match="truncated: the header says"):
        schema.recognise(path)


def test_a_buffer_killed_mid_checkpoint_opens_with_every_batch_it_held(tmp_path: Path) -> None:
    """SIGKILL during a checkpoint leaves page 1 (the new page count) in the file and the pages
    after it only in the write-ahead log: the header disagrees with the size for good, and the
    file is whole. (The CI run that found this refused to start the gateway on it.)"""
    path, killed = tmp_path / "b.db", tmp_path / "killed"
    killed.mkdir()
    with Buffer(path) as opened:
        opened.put_many([batch(seq) for seq in range(50)])
    opened = Buffer(path)
    opened.open()
    try:
        opened.put_many([batch(seq, payload=b"x" * 600) for seq in range(50, 350)])
        for name in ("b.db", "b.db-wal"):  # what a SIGKILL leaves: committed, not checkpointed
            (killed / name).write_bytes((tmp_path / name).read_bytes())
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA wal_checkpoint(FULL)")
        page_one = path.read_bytes()[:PAGE]
    finally:
        opened.close()
    stale = killed / "b.db"
    assert len(page_one) == PAGE and stale.stat().st_size < path.stat().st_size
    with open(stale, "r+b") as file:  # the checkpoint got as far as page 1
        file.write(page_one)
    assert schema.header_problem(stale.read_bytes()[:100], stale.stat().st_size) is not None
    assert schema.recognise(stale, deep=True).kind is schema.FileKind.BUFFER
    with Buffer(stale) as reopened:
        assert reopened.counts()[State.PENDING] == 350


def test_a_truncated_buffer_whose_write_ahead_log_lacks_the_pages_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Buffer(path) as opened:
        opened.put_many([batch(seq, payload=b"x" * 600) for seq in range(300)])
    whole = tmp_path / "whole.db"
    whole.write_bytes(path.read_bytes())
    truncate_pages(path, len(path.read_bytes()) // PAGE // 2)
    with Buffer(whole) as later:  # a log of this file's next commit: a few pages, not the lost half
        later.put_many([batch(1000)])
        path.with_name("b.db-wal").write_bytes(whole.with_name("whole.db-wal").read_bytes())
    with pytest.raises(CorruptBuffer):
        schema.recognise(path, deep=True)
