"""`gateway buffer stats | ls | show | quarantine | export | purge | retry` on real buffer files.

Most cases run the typer app in-process (the same code path as the command line, a tenth of
the time); the ones about output for people, stdout/stderr separation and exit codes run
real subprocesses. The live-gateway cases are in test_inspect_live.py.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway._exceptions import BufferMissing, ForeignFile
from gateway.buffer.rows import NewMessage, Usage
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.cli import app
from gateway.inspect.snapshot import buffer_stats, parse_duration
from protocol import Election, Registry, load_signing_key
from tests.gateway.buffer_support import (
    Filled,
    arrived,
    fill,
    messages_root,
    overwrite_page,
    rotated_keys,
    signed_with,
)
from tests.gateway.support import envelopes
from tests.helpers import run_cli

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["buffer", *args])
    return result.exit_code, result.stdout, result.stderr


def cli_json(*args: str) -> dict[str, object]:
    code, out, err = cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


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


@pytest.fixture
def real(
    tmp_path: Path, sample_election: Election, keys_dir: Path, registry: Registry
) -> Filled:
    """120 real envelopes (30 delivered, 10 in flight, 80 pending) + a forged and a malformed one."""
    device = sample_election.devices[0]
    other = sample_election.devices[1]
    forged = signed_with(sample_election, device, load_signing_key(keys_dir, other), 1)[0]
    binary = NewMessage(
        topic=forged.topic,
        payload=b"\xff\x00 not json",
        state=State.QUARANTINED,
        received_at=time.time(),
        reason="malformed_json",
        detail="envelope is not valid UTF-8 JSON",
    )
    extra = [*arrived([forged], registry), binary]
    return fill(tmp_path / "b.db", sample_election, keys_dir, registry, extra=extra)


# -- stats ---------------------------------------------------------------------------------
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
    assert stats.usage == Usage(6, sum(len(f"envelope {s}") for s in (0, 1, 2, 3, 4, 99)), 0, 0)


def test_stats_of_an_empty_buffer_have_no_oldest_age(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db"):
        pass
    stats = buffer_stats(tmp_path / "b.db")
    assert stats.total == 0
    assert stats.oldest_pending_age_s is None


def test_stats_json_has_the_documented_shape(real: Filled, keys_dir: Path) -> None:
    data = json.loads(
        run_cli("gateway", "buffer", "stats", "--buffer", str(real.path), "--json").stdout
    )
    assert set(data) == {
        "path", "states", "total", "oldest_pending_age_s", "file_bytes", "usage",
        "retention_s", "gateway", "keys_dir", "schema", "quarantine",
    }  # fmt: skip
    assert data["path"] == str(real.path)
    assert data["states"] == {"pending": 80, "inflight": 10, "delivered": 30, "quarantined": 2}
    assert data["total"] == 122
    assert data["usage"]["live_batches"] == 92 and data["usage"]["delivered_batches"] == 30
    assert data["usage"]["live_bytes"] > data["usage"]["delivered_bytes"] > 0
    assert data["retention_s"] == 3600.0
    assert data["gateway"] == "gw-test"
    assert data["keys_dir"] == str(keys_dir.resolve())
    assert data["schema"] == "0003"
    assert isinstance(data["oldest_pending_age_s"], float) and data["oldest_pending_age_s"] >= 0
    quarantine = data["quarantine"]
    assert set(quarantine) == {"rows", "bytes", "caps", "devices", "cap_reached", "dropped"}
    assert quarantine["rows"] == 2 and sum(d["rows"] for d in quarantine["devices"]) == 2
    assert quarantine["caps"] == {"rows_per_device": 1000, "bytes_per_device": 8 * 1024 * 1024, "rows": 20_000, "bytes": 128 * 1024 * 1024}
    assert quarantine["cap_reached"] == {"devices": [], "total": False}
    assert quarantine["dropped"] == {"count": 0, "bytes": 0, "by_device_reason": []}


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
    assert "oldest pending" in out and "file size" in out and "usage: live 6 batches" in out


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


# -- every command: clear one-line errors for files it cannot use ----------------------------------
COMMANDS = {
    "stats": ["stats"],
    "ls": ["ls"],
    "show": ["show", "1"],
    "quarantine": ["quarantine"],
    "retry": ["retry", "1"],
    "export": ["export"],
    "purge": ["purge"],
    "check": ["check"],
    "recover": ["recover", "--out", "OUT"],
}


def _foreign_sqlite(path: Path) -> None:
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, state TEXT)")
    other.commit()
    other.close()


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", ["missing", "text", "other application", "empty"])
def test_every_command_refuses_a_file_it_cannot_use_in_one_line_and_changes_nothing(
    tmp_path: Path, command: str, kind: str, keys_dir: Path
) -> None:
    path = tmp_path / "target.db"
    if kind == "text":
        path.write_bytes(b"notes\n" * 300)
    elif kind == "other application":
        _foreign_sqlite(path)
    elif kind == "empty":
        path.write_bytes(b"")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    args = [a.replace("OUT", str(tmp_path / "out.db")) for a in COMMANDS[command]]
    if command == "retry":
        args += ["--keys", str(keys_dir)]
    code, out, err = cli(*args, "--buffer", str(path))
    assert code == 1, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    expected = {
        "missing": "no buffer file",
        "text": "not an SQLite database",
        "other application": "another application",
        "empty": "empty file",
    }[kind]
    assert expected in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("command", ["stats", "ls", "show", "quarantine", "export", "retry", "purge"])
def test_every_command_names_a_damaged_file_and_the_recover_command(
    real: Filled, command: str
) -> None:
    overwrite_page(real.path, messages_root(real.path))  # no row of messages is reachable
    before = real.path.read_bytes()
    args = ["retry", "--all-quarantined"] if command == "retry" else COMMANDS[command]
    code, out, err = cli(*args, "--buffer", str(real.path))
    assert code == 1, (out, err)
    assert len(err.strip().splitlines()) == 1
    assert "is damaged" in err and f"edgetally gateway buffer recover --buffer {real.path}" in err
    assert real.path.read_bytes() == before


def test_reading_commands_report_a_lock_held_too_long_in_one_line(filled: Path) -> None:
    holder = sqlite3.connect(filled, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")  # nobody else may even read
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE settings SET value = value")
        holder.execute("COMMIT")
        for args in (["stats"], ["ls"], ["export"], ["purge", "--older-than", "1d"]):
            code, _out, err = cli(*args, "--buffer", str(filled), "--wait", "0.2")
            assert code == 1 and "is locked" in err and len(err.strip().splitlines()) == 1, err
    finally:
        holder.close()
    assert cli("stats", "--buffer", str(filled), "--wait", "0.2")[0] == 0


def test_writing_commands_wait_for_the_write_lock_then_give_up_in_one_line(real: Filled) -> None:
    holder = sqlite3.connect(real.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # a long group commit
        started = time.monotonic()
        code, _out, err = cli("purge", "--buffer", str(real.path), "--wait", "0.3")
        assert code == 1 and "is locked by another process for more than 0.3 s" in err, err
        assert 0.25 < time.monotonic() - started < 10
        assert cli("ls", "--buffer", str(real.path), "--wait", "0.3")[0] == 0  # readers go on
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- ls -------------------------------------------------------------------------------------------
def test_ls_filters_by_state_device_and_age(
    tmp_path: Path, sample_election: Election, keys_dir: Path, registry: Registry
) -> None:
    path = tmp_path / "b.db"
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:3], 4)
    now = time.time()
    with Buffer(path) as buffer:
        buffer.put_many(arrived(sent[:6], registry, received_at=now - 7200))  # two hours ago
        buffer.put_many(arrived(sent[6:], registry, received_at=now - 30))
        buffer.confirm([m.id for m in buffer.fetch_pack(2)])
    device = sample_election.devices[1]
    rows = cli_json("ls", "--buffer", str(path), "--device", device, "--limit", "0")["rows"]
    assert sorted(r["seq"] for r in rows) == [1, 2, 3, 4]  # type: ignore[index]
    assert {r["device"] for r in rows} == {device}  # type: ignore[index]
    delivered = cli_json("ls", "--buffer", str(path), "--state", "delivered")["rows"]
    assert [r["state"] for r in delivered] == ["delivered", "delivered"]  # type: ignore[index]
    old = cli_json("ls", "--buffer", str(path), "--older-than", "1h", "--limit", "0")["rows"]
    recent = cli_json("ls", "--buffer", str(path), "--newer-than", "5m", "--limit", "0")["rows"]
    assert len(old) == 6 and len(recent) == 6  # type: ignore[arg-type]
    both = cli_json(
        "ls", "--buffer", str(path), "--state", "pending", "--state", "delivered", "--older-than", "90m"
    )["rows"]
    assert len(both) == 6  # type: ignore[arg-type]


def test_ls_pages_with_a_cursor_cover_every_row_once_in_either_order(real: Filled) -> None:
    for order in ([], ["--oldest-first"]):
        seen: list[int] = []
        cursor: list[str] = []
        for _ in range(20):  # bounded: 122 rows in pages of 25
            page = cli_json("ls", "--buffer", str(real.path), "--limit", "25", *order, *cursor)
            seen += [r["id"] for r in page["rows"]]  # type: ignore[union-attr, index]
            if page["next_cursor"] is None:
                break
            cursor = ["--cursor", str(page["next_cursor"])]
        assert sorted(seen) == list(range(1, 123))
        assert seen == (sorted(seen) if order else sorted(seen, reverse=True))
    second = cli_json("ls", "--buffer", str(real.path), "--limit", "5", "--offset", "5")["rows"]
    assert [r["id"] for r in second] == [117, 116, 115, 114, 113]  # type: ignore[index]


def test_ls_rejects_a_bad_duration_with_exit_2(filled: Path) -> None:
    code, _out, err = cli("ls", "--buffer", str(filled), "--older-than", "soon")
    assert code == 2 and err.strip() == "error: --older-than: 'soon' is not a duration (examples: 90s, 5m, 2h, 1d, 1h30m)"


def test_durations_accept_the_usual_units() -> None:
    assert [parse_duration(t) for t in ("90s", "5m", "2h", "1d", "1h30m", "45", "1.5h")] == [
        90, 300, 7200, 86400, 5400, 45, 5400,
    ]  # fmt: skip


# -- show -----------------------------------------------------------------------------------------
def test_show_decodes_the_body_rechecks_the_signature_and_tells_the_history(
    real: Filled, tmp_path: Path, sample_election: Election, keys_dir: Path
) -> None:
    data = cli_json("show", "1", "--buffer", str(real.path))  # keys: the ones the buffer recorded
    first = real.sent[0]
    assert (data["state"], data["device"], data["seq"]) == ("delivered", first.device, first.seq)
    body = data["body"]
    assert body["device"] == first.device and body["seq"] == 1 and body["counts"]  # type: ignore[index]
    assert data["signature"] == {"status": "valid", "reason": None, "detail": None, "keys": str(keys_dir.resolve())}
    assert data["hash_matches"] is True
    events = [step["event"] for step in data["history"]]  # type: ignore[union-attr, index]
    assert events == ["received", "first sent", "delivered (cloud broker PUBACK)"]
    assert all(data["times"][k] for k in ("received_at", "first_sent_at", "delivered_at"))  # type: ignore[index]
    # With a keys directory where the device has another key now, the same batch fails.
    rotated, _key = rotated_keys(keys_dir, first.device, tmp_path / "rotated")
    again = cli_json("show", "1", "--buffer", str(real.path), "--keys", str(rotated))
    assert again["signature"]["status"] == "invalid" and again["signature"]["reason"] == "wrong_key"  # type: ignore[index]


def test_show_of_a_quarantined_batch_gives_reason_and_a_failing_signature(real: Filled) -> None:
    listing = cli_json("quarantine", "--buffer", str(real.path))
    forged_id = next(r["id"] for r in listing["rows"] if r["reason"] != "malformed_json")  # type: ignore[union-attr, index]
    data = cli_json("show", str(forged_id), "--buffer", str(real.path))
    assert data["state"] == "quarantined"
    assert data["signature"]["status"] == "invalid"  # type: ignore[index]
    assert data["history"][-1]["event"] == "quarantined"  # type: ignore[index]
    assert data["history"][-1]["reason"] == data["reason"]  # type: ignore[index]
    binary = next(r["id"] for r in listing["rows"] if r["reason"] == "malformed_json")  # type: ignore[union-attr, index]
    shown = cli_json("show", str(binary), "--buffer", str(real.path))
    assert shown["body"] is None and "malformed_json" in shown["body_error"]  # type: ignore[operator]


def test_show_for_people_prints_body_counts_signature_and_history(real: Filled) -> None:
    out = run_cli("gateway", "buffer", "show", "1", "--buffer", str(real.path)).stdout
    for words in ("batch 1 (delivered)", "signature valid", "counts", "governor", "history", "delivered (cloud broker PUBACK)"):
        assert words in out, out


def test_show_of_an_id_not_in_the_buffer_says_so_and_whether_it_was_purged(real: Filled) -> None:
    code, _out, err = cli("show", "999", "--buffer", str(real.path))
    assert (code, err.strip()) == (1, f"error: no batch with id 999 in buffer {real.path}")
    assert cli("purge", "--buffer", str(real.path))[0] == 0
    code, _out, err = cli("show", "3", "--buffer", str(real.path))
    assert code == 1 and "purged at" in err and "cli" in err


# -- quarantine --------------------------------------------------------------------------------------
def test_quarantine_lists_rows_with_reasons_and_counts_by_reason(real: Filled) -> None:
    data = cli_json("quarantine", "--buffer", str(real.path))
    assert data["total"] == 2
    assert data["by_reason"] == {"malformed_json": 1, "wrong_key": 1}
    assert {r["reason"] for r in data["rows"]} == {"malformed_json", "wrong_key"}  # type: ignore[union-attr, index]
    assert all(r["detail"] and r["quarantined_at"] for r in data["rows"])  # type: ignore[union-attr, index]
    out = run_cli("gateway", "buffer", "quarantine", "--buffer", str(real.path)).stdout
    assert "quarantined: 2" in out and "wrong_key" in out


# -- export ---------------------------------------------------------------------------------------
def test_export_streams_every_row_with_state_times_reason_and_payload(real: Filled, tmp_path: Path) -> None:
    proc = run_cli("gateway", "buffer", "export", "--buffer", str(real.path))
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in lines] == list(range(1, 123))  # stdout holds the rows, nothing else
    by_payload = {r["payload"]: r for r in lines if r["payload_encoding"] == "utf-8"}
    for sent in real.sent:
        assert by_payload[sent.payload.decode()]["device"] == sent.device
    states = [r["state"] for r in lines]
    assert states.count("delivered") == 30 and states.count("quarantined") == 2
    binary = next(r for r in lines if r["payload_encoding"] == "base64")
    assert base64.b64decode(binary["payload"]) == b"\xff\x00 not json"
    assert binary["reason"] == "malformed_json" and binary["quarantined_at"].endswith("Z")
    out = tmp_path / "audit.jsonl"
    summary = cli_json("export", "--buffer", str(real.path), "--out", str(out), "--state", "delivered")
    assert summary == {"rows": 30, "out": str(out), "format": "jsonl"}
    assert len(out.read_text().splitlines()) == 30
    assert not out.with_name("audit.jsonl.tmp").exists()


# -- purge ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags",
    [[], ["--include-undelivered"], ["--yes"]],
    ids=["no flags", "only --include-undelivered", "only --yes"],
)
@pytest.mark.parametrize("state", ["pending", "quarantined"])
def test_purging_undelivered_rows_needs_both_flags_else_exit_2(real: Filled, state: str, flags: list[str]) -> None:
    before = real.path.read_bytes()
    code, _out, err = cli("purge", "--buffer", str(real.path), "--state", state, *flags)
    assert code == 2
    assert err.strip() == (
        f"error: refusing to purge {state} batches: they never reached the cloud;"
        " pass both --include-undelivered and --yes to delete them anyway"
    )
    assert real.path.read_bytes() == before


def test_purge_deletes_delivered_rows_by_default_and_undelivered_only_when_asked_twice(real: Filled) -> None:
    assert cli_json("purge", "--buffer", str(real.path), "--dry-run")["purged"] == {"delivered": 30}
    assert cli_json("purge", "--buffer", str(real.path), "--older-than", "1h")["purged"] == {"delivered": 0}
    assert cli_json("purge", "--buffer", str(real.path))["purged"] == {"delivered": 30}
    code, _out, err = cli("purge", "--buffer", str(real.path), "--state", "inflight", "--include-undelivered", "--yes")
    assert code == 2 and "never purged" in err
    done = cli_json(
        "purge", "--buffer", str(real.path), "--state", "quarantined", "--include-undelivered", "--yes"
    )
    assert done["purged"] == {"quarantined": 2}
    stats = buffer_stats(real.path)
    assert stats.states == {State.PENDING: 80, State.INFLIGHT: 10, State.DELIVERED: 0, State.QUARANTINED: 0}
    assert stats.usage.live_batches == 90 and stats.usage.delivered_batches == 0


# -- retry ----------------------------------------------------------------------------------------
def test_retry_requeues_batches_that_pass_with_a_new_key_and_keeps_the_others_with_their_new_reason(
    tmp_path: Path, sample_election: Election, keys_dir: Path, registry: Registry
) -> None:
    device = sample_election.devices[2]
    rotated, key = rotated_keys(keys_dir, device, tmp_path / "rotated")
    new_key_batches = signed_with(sample_election, device, key, 3)
    path = tmp_path / "b.db"
    with Buffer(path, keys_dir=keys_dir) as buffer:
        rows = arrived(new_key_batches, registry)  # the gateway still has the old registry
        rows.append(message(1, state=State.QUARANTINED))
        buffer.put_many(rows)
        buffer.put_many(arrived(new_key_batches[2:], Registry.load(rotated)))  # seq 3 also arrived valid
    probe = sqlite3.connect(path)
    reasons = {r[0] for r in probe.execute("SELECT reason FROM messages WHERE state = 'quarantined'")}
    probe.close()
    assert reasons == {"wrong_key", "malformed_json"}
    still = cli_json("retry", "--buffer", str(path), "--all-quarantined")  # the recorded (old) keys
    assert still["passed"] == [] and len(still["still_quarantined"]) == 4  # type: ignore[arg-type]
    report = cli_json("retry", "--buffer", str(path), "--all-quarantined", "--keys", str(rotated))
    assert report["passed"] == [1, 2]
    outcome = {r["id"]: r["reason"] for r in report["still_quarantined"]}  # type: ignore[union-attr, index]
    assert outcome == {3: "duplicate", 4: "malformed_json"}
    with Buffer(path) as buffer:
        assert [m.seq for m in buffer.fetch_pack(10)] == [1, 2, 3]  # the retried rows first
        assert buffer.usage().live_batches == 5
    history = cli_json("show", "1", "--buffer", str(path))["history"]
    assert [h["event"] for h in history] == ["received", "quarantined", "retry_failed", "retried", "first sent"]  # type: ignore[union-attr, index]
    skipped = cli_json("retry", "1", "77", "--buffer", str(path), "--keys", str(rotated))["skipped"]
    assert skipped == [
        {"id": 1, "why": "not quarantined (state inflight)"},
        {"id": 77, "why": "not in the buffer"},
    ]


def test_retry_needs_ids_or_all_quarantined_but_not_both(filled: Path, keys_dir: Path) -> None:
    for args in ([], ["1", "--all-quarantined"]):
        code, _out, err = cli("retry", *args, "--buffer", str(filled), "--keys", str(keys_dir))
        assert code == 2 and "--all-quarantined" in err
