"""`gateway buffer check` and `gateway buffer recover` on real buffer files damaged for real:
garbage written over leaf and interior pages, a truncated file, a lost first page, bit rot in a
payload, rows still only in the write-ahead log, and pages on the freelist."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway._exceptions import BufferLocked, StoreError
from gateway.buffer.file import lock_path
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.inspect.check import check
from gateway.inspect.pages import leaf_records, open_pages, page_records
from gateway.inspect.recover import recover
from gateway.inspect.scan import LAYOUTS
from protocol import Election, Registry
from tests.gateway.buffer.test_store import batch
from tests.gateway.buffer_support import (
    TABLE_LEAF,
    Filled,
    fill,
    messages_root,
    overwrite_page,
    page_types,
    rotated_keys,
    snapshot_dir,
    truncate_pages,
)
from tests.helpers import run_cli


@pytest.fixture
def filled(tmp_path: Path, sample_election: Election, keys_dir: Path, registry: Registry) -> Filled:
    """600 real envelopes: 200 delivered, 50 in flight, 350 pending; closed (checkpointed)."""
    (tmp_path / "buf").mkdir()
    return fill(
        tmp_path / "buf" / "b.db", sample_election, keys_dir, registry,
        devices=20, batches=30, delivered=200, inflight=50,
    )  # fmt: skip


def ids_and_states(path: Path) -> dict[int, str]:
    probe = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return {int(i): str(s) for i, s in probe.execute("SELECT id, state FROM messages")}
    finally:
        probe.close()


def rows_on_page(path: Path, number: int) -> set[int]:
    with open_pages(path) as pages:
        return {rowid for rowid, _values in page_records(pages, number)}


def a_messages_leaf(path: Path) -> int:
    """A leaf page of the messages table in the middle of the file."""
    leaves = page_types(path)[TABLE_LEAF]
    with open_pages(path) as pages:
        for number in leaves[len(leaves) // 2 :]:
            records = list(page_records(pages, number))
            if records and all(len(values) in LAYOUTS for _rowid, values in records):
                return number
    raise AssertionError("no messages leaf page found")


# -- check --------------------------------------------------------------------------------------------
def test_check_passes_a_sound_buffer_verifying_every_signature(filled: Filled, keys_dir: Path) -> None:
    proc = run_cli("gateway", "buffer", "check", "--buffer", str(filled.path), "--keys", str(keys_dir), "--json")
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["problems"] == []
    assert data["integrity"] == ["ok"]
    assert data["application_id"] == 0x45544757
    assert data["schema"] == {"revision": "0003", "head": "0003"}
    assert data["usage"]["recorded"] == data["usage"]["actual"]
    assert data["rows"]["read"] == 600 and data["rows"]["payloads_checked"] == 600
    assert data["rows"]["signatures_checked"] is True
    out = run_cli("gateway", "buffer", "check", "--buffer", str(filled.path)).stdout
    assert "ok" in out and "rows read" in out and "600" in out


@pytest.mark.parametrize("damage", ["leaf page", "interior page", "truncated"])
def test_check_reports_a_damaged_file_exits_1_and_changes_nothing(filled: Filled, damage: str) -> None:
    if damage == "leaf page":
        overwrite_page(filled.path, a_messages_leaf(filled.path))
    elif damage == "interior page":
        overwrite_page(filled.path, messages_root(filled.path))
    else:
        truncate_pages(filled.path, filled.path.stat().st_size // 4096 // 2)
    before = snapshot_dir(filled.path.parent)
    proc = run_cli("gateway", "buffer", "check", "--buffer", str(filled.path), "--json", check=False)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["ok"] is False and data["problems"]
    assert any("integrity_check" in p for p in data["problems"])
    if damage == "truncated":
        assert any("truncated" in p for p in data["problems"])
    else:
        assert data["rows"]["unreadable_ids"], data
    assert snapshot_dir(filled.path.parent) == before


def test_check_finds_payloads_that_changed_on_disk(filled: Filled, tmp_path: Path, keys_dir: Path) -> None:
    rot = sqlite3.connect(filled.path)
    # Bit rot inside a pending envelope: same length, one digit of the body changed.
    rot.execute(
        "UPDATE messages SET payload = CAST(replace(CAST(payload AS TEXT), 'ballots\\\":', 'ballots\\\":9')"
        " AS BLOB) WHERE id = 400"
    )
    rot.commit()
    rot.close()
    report = check(filled.path)
    assert not report.ok and report.payload_problems == 1
    assert report.examples[0]["id"] == 400 and report.examples[0]["reason"] in ("damaged", "non_canonical")
    with_keys = check(filled.path, keys_dir=keys_dir)
    assert with_keys.payload_problems == 1 and with_keys.examples[0]["id"] == 400


# -- recover ------------------------------------------------------------------------------------------
def test_recover_salvages_every_row_of_a_file_with_a_damaged_leaf_page(filled: Filled, tmp_path: Path) -> None:
    original = ids_and_states(filled.path)
    leaf = a_messages_leaf(filled.path)
    on_leaf = rows_on_page(filled.path, leaf)
    overwrite_page(filled.path, leaf)
    before = snapshot_dir(filled.path.parent)
    out = tmp_path / "recovered.db"
    proc = run_cli("gateway", "buffer", "recover", "--buffer", str(filled.path), "--out", str(out), "--json")
    report = json.loads(proc.stdout)
    assert snapshot_dir(filled.path.parent) == before  # the source: not a byte, not a new file
    assert report["read"] == report["salvaged"] == 600 - len(on_leaf)
    assert report["lost"] == len(on_leaf)
    assert [tuple(r) for r in report["unreadable_ids"]] == [(min(on_leaf), max(on_leaf))]
    salvaged = ids_and_states(out)
    assert set(salvaged) == set(original) - on_leaf
    for row_id, state in salvaged.items():  # in flight becomes pending: no gateway runs now
        assert state == ("pending" if original[row_id] == "inflight" else original[row_id])
    assert check(out).ok  # among others: the usage counters equal what the rows add up to
    with Buffer(out) as buffer:
        outbound = sum(1 for state in salvaged.values() if state == "pending")
        delivered = sum(1 for state in salvaged.values() if state == "delivered")
        usage = buffer.usage()
        assert (usage.live_batches, usage.delivered_batches) == (outbound, delivered)
        ids = [m.id for m in buffer.fetch_pack(1000)]
        assert ids == sorted(ids) and len(ids) == outbound
    assert not (tmp_path / "recovered.db.part").exists() and not lock_path(tmp_path / "recovered.db.part").exists()


def test_recover_reads_rows_below_a_damaged_interior_page_from_the_pages(filled: Filled, tmp_path: Path) -> None:
    original = ids_and_states(filled.path)
    overwrite_page(filled.path, messages_root(filled.path))
    report = recover(filled.path, tmp_path / "r.db")
    assert (report.read, report.salvaged, report.lost, report.from_pages) == (600, 600, 0, 600)
    assert set(ids_and_states(tmp_path / "r.db")) == set(original)
    assert check(tmp_path / "r.db").ok


def test_recover_of_a_truncated_file_salvages_what_is_left_and_counts_the_lost(filled: Filled, tmp_path: Path) -> None:
    truncate_pages(filled.path, filled.path.stat().st_size // 4096 // 2)
    report = recover(filled.path, tmp_path / "r.db")
    assert 0 < report.salvaged < 600
    assert report.lost == 600 - report.salvaged  # the usage row was found on its page
    assert check(tmp_path / "r.db").ok


def test_recover_of_a_buffer_whose_first_page_is_gone_reads_its_pages(filled: Filled, tmp_path: Path) -> None:
    lock_path(filled.path).touch()  # a gateway ran on it, so it was a buffer
    overwrite_page(filled.path, 1)
    proc = run_cli("gateway", "buffer", "stats", "--buffer", str(filled.path), check=False)
    assert proc.returncode == 1 and "not an SQLite database" in proc.stderr
    report = recover(filled.path, tmp_path / "r.db")
    assert report.salvaged == 600 and report.from_pages == 600
    assert report.lost == 0  # the usage counters were found on their own page
    assert check(tmp_path / "r.db").ok


def test_recover_quarantines_a_damaged_payload_instead_of_forwarding_it(filled: Filled, tmp_path: Path) -> None:
    rot = sqlite3.connect(filled.path)
    rot.execute("UPDATE messages SET payload = CAST(replace(CAST(payload AS TEXT), '\"seq\\\":', '\"seq\\\":1') AS BLOB) WHERE id = 500")
    rot.commit()
    rot.close()
    report = recover(filled.path, tmp_path / "r.db")
    assert report.salvaged == 600 and report.requarantined == 1
    with Buffer(tmp_path / "r.db") as buffer:
        (kept,) = buffer.quarantined()
        assert kept.id == 500 and kept.reason in ("damaged", "non_canonical")
        assert 500 not in {m.id for m in buffer.fetch_pack(1000)}


def test_recover_with_keys_reverifies_every_batch_on_its_way_out(
    filled: Filled, tmp_path: Path, keys_dir: Path, sample_election: Election
) -> None:
    device = sample_election.devices[0]
    rotated, _key = rotated_keys(keys_dir, device, tmp_path / "rotated")
    report = recover(filled.path, tmp_path / "r.db", keys_dir=rotated)
    undelivered_of_device = sum(
        1 for s, r in zip(filled.sent, range(1, 601), strict=True) if s.device == device and r > 200
    )
    assert report.requarantined == undelivered_of_device > 0
    assert report.damaged_delivered > 0  # delivered ones stay delivered, only counted


def test_recover_refuses_while_a_gateway_holds_the_buffer(filled: Filled, tmp_path: Path) -> None:
    with Buffer(filled.path):
        with pytest.raises(BufferLocked, match="running gateway"):
            recover(filled.path, tmp_path / "r.db")
        proc = run_cli("gateway", "buffer", "recover", "--buffer", str(filled.path), "--out", str(tmp_path / "r.db"), check=False)
        assert proc.returncode == 1 and "stop it before recovering" in proc.stderr
    assert not (tmp_path / "r.db").exists()


def test_recover_never_overwrites_a_file(filled: Filled, tmp_path: Path) -> None:
    existing = tmp_path / "taken.db"
    existing.write_bytes(b"keep")
    with pytest.raises(StoreError, match="already exists"):
        recover(filled.path, existing)
    with pytest.raises(StoreError, match="already exists"):
        recover(filled.path, filled.path)
    assert existing.read_bytes() == b"keep"


# -- the page reader ---------------------------------------------------------------------------------
def test_page_reader_sees_rows_only_in_the_write_ahead_log_and_skips_freed_pages(tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    with Buffer(live, delivered_retention_s=0) as buffer:
        buffer.put_many([batch(seq, payload=b"a" * 700) for seq in range(300)])
        buffer.confirm([m.id for m in buffer.fetch_pack(300)])
        buffer.purge_delivered(limit=250)  # 250 rows deleted: their pages go to the freelist
        buffer.put_many([batch(seq, payload=b"b" * 700) for seq in range(1000, 1100)])
        # Copy while the gateway has it open, as after a SIGKILL: the newest rows are only in the WAL.
        copy = tmp_path / "copy"
        copy.mkdir()
        for suffix in ("", "-wal"):
            shutil.copy(live.with_name(live.name + suffix), copy / ("b.db" + suffix))
        expected = ids_and_states(live)
    assert (copy / "b.db-wal").stat().st_size > 0
    with open_pages(copy / "b.db") as pages:
        found = {rowid: values for rowid, values in leaf_records(pages) if len(values) in LAYOUTS}
    assert set(found) == set(expected)  # nothing missing, nothing resurrected from freed pages
    state_at = LAYOUTS[len(next(iter(found.values())))].index("state")
    assert {rowid: values[state_at] for rowid, values in found.items()} == expected
    assert State.DELIVERED.value in expected.values()
