"""The buffer on real SQLite files: the storage contract, de-duplication, quarantine, reopening,
foreign files, locking and the migrations."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from gateway._exceptions import BufferLocked, ForeignFile, SchemaTooNew
from gateway.buffer import Buffer, NewMessage
from gateway.schema import APPLICATION_ID, State, metadata


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


def test_confirm_deletes_only_rows_in_flight(buffer: Buffer) -> None:
    buffer.put_many([batch(seq) for seq in range(1, 4)])
    inflight = buffer.fetch_pack(2)
    pending_id = inflight[-1].id + 1
    assert buffer.confirm([m.id for m in inflight] + [pending_id]) == 2
    counts = buffer.counts()
    assert (counts[State.PENDING], counts[State.INFLIGHT]) == (1, 0)
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
