"""`gateway buffer stats`: counts, age and size, read-only, also while another connection writes."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from gateway._exceptions import BufferMissing, ForeignFile
from gateway.buffer import Buffer, NewMessage
from gateway.inspect import buffer_stats
from gateway.schema import State
from tests.helpers import run_cli


def message(seq: int, *, state: State = State.PENDING, received_at: float = 1000.0) -> NewMessage:
    return NewMessage(
        topic="edgetally/v1/el/dev-a/batch",
        payload=f"envelope {seq}".encode(),
        state=state,
        received_at=received_at,
        election="el",
        device="dev-a",
        seq=seq if state is State.PENDING else None,
        body_hash=f"{seq:064x}" if state is State.PENDING else None,
        reason=None if state is State.PENDING else "malformed_json",
        detail=None if state is State.PENDING else "not JSON",
    )


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A closed buffer: 3 pending, 2 in flight, 1 quarantined; oldest undelivered at t=1000."""
    path = tmp_path / "b.db"
    with Buffer(path) as buffer:
        buffer.put_many([message(seq, received_at=1000.0 + seq) for seq in range(5)])
        buffer.put_many([message(99, state=State.QUARANTINED, received_at=900.0)])
        buffer.fetch_pack(2)
    return path


def test_stats_count_each_state_and_age_of_the_oldest_undelivered_batch(filled: Path) -> None:
    stats = buffer_stats(filled, now=1010.0)
    assert stats.states == {
        State.PENDING: 3,
        State.INFLIGHT: 2,
        State.DELIVERED: 0,
        State.QUARANTINED: 1,
    }
    assert stats.total == 6
    assert stats.oldest_pending_age_s == pytest.approx(10.0)
    assert stats.file_bytes >= filled.stat().st_size > 0


def test_stats_of_an_empty_buffer_have_no_oldest_age(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db"):
        pass
    stats = buffer_stats(tmp_path / "b.db")
    assert stats.total == 0
    assert stats.oldest_pending_age_s is None


def test_stats_json_has_the_documented_shape(filled: Path) -> None:
    data = json.loads(
        run_cli("gateway", "buffer", "stats", "--buffer", str(filled), "--json").stdout
    )
    assert set(data) == {"path", "states", "total", "oldest_pending_age_s", "file_bytes"}
    assert data["path"] == str(filled)
    assert data["states"] == {"pending": 3, "inflight": 2, "delivered": 0, "quarantined": 1}
    assert data["total"] == 6
    assert isinstance(data["oldest_pending_age_s"], float) and data["oldest_pending_age_s"] > 0
    assert isinstance(data["file_bytes"], int) and data["file_bytes"] > 0


def test_stats_table_for_people_lists_every_state(filled: Path) -> None:
    out = run_cli("gateway", "buffer", "stats", "--buffer", str(filled)).stdout
    for state, count in (
        ("pending", 3),
        ("inflight", 2),
        ("delivered", 0),
        ("quarantined", 1),
        ("total", 6),
    ):
        assert any(state in line and str(count) in line for line in out.splitlines()), out
    assert "oldest pending" in out and "file size" in out


def test_stats_read_a_buffer_while_another_connection_is_writing(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Buffer(path) as buffer:
        buffer.put_many([message(seq, received_at=time.time()) for seq in range(4)])
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")  # holds the write lock, uncommitted rows inside
            writer.execute(
                "INSERT INTO messages (topic, payload, size, state, received_at, updated_at)"
                " VALUES ('t', x'00', 1, 'pending', 0, 0)"
            )
            started = time.monotonic()
            data = json.loads(
                run_cli("gateway", "buffer", "stats", "--buffer", str(path), "--json").stdout
            )
            assert time.monotonic() - started < 20
            assert data["states"]["pending"] == 4  # committed rows, read from the WAL
            writer.execute("COMMIT")
        finally:
            writer.close()
        assert buffer.counts()[State.PENDING] == 5  # the writer was not disturbed


def test_stats_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BufferMissing):
        buffer_stats(tmp_path / "nope.db")
    proc = run_cli("gateway", "buffer", "stats", "--buffer", str(tmp_path / "nope.db"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: no buffer file at {tmp_path / 'nope.db'}"]
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"just some text\n" * 100, "not an SQLite database"), (b"", "empty file")],
    ids=["text", "empty"],
)
def test_stats_refuse_a_file_that_is_not_a_buffer_and_leave_it_unchanged(
    tmp_path: Path, content: bytes, words: str
) -> None:
    path = tmp_path / "other"
    path.write_bytes(content)
    with pytest.raises(ForeignFile, match=words):
        buffer_stats(path)
    proc = run_cli("gateway", "buffer", "stats", "--buffer", str(path), check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_stats_refuse_another_applications_sqlite_file_and_leave_it_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, state TEXT)")
    other.commit()
    other.close()
    before = path.read_bytes()
    with pytest.raises(ForeignFile, match="another application"):
        buffer_stats(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
