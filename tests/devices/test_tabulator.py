from __future__ import annotations

from pathlib import Path

from devices.state import StateStore
from devices.tabulator import Tabulator
from protocol import Election, Receipt, Registry, load_signing_key, verify


def _tab(election: Election, keys: Path, batches: int = 4) -> Tabulator:
    return Tabulator.load(election, keys, election.devices[0], seed=3, batches=batches)


def test_signed_batches_verify_against_the_registry(sample_election: Election, keys_dir: Path, registry: Registry) -> None:
    tab = _tab(sample_election, keys_dir)
    for batch in tab.batches:
        verified = verify(batch.payload, registry, topic_device=tab.device)
        assert verified.body.seq == batch.seq
        assert verified.body_hash == batch.body_hash


def test_matching_receipt_confirms_up_to_its_seq(sample_election: Election, keys_dir: Path) -> None:
    tab = _tab(sample_election, keys_dir)
    receipt = Receipt(sample_election.id, tab.device, 2, tab.batches[1].body_hash)
    assert tab.apply_receipt(receipt)
    assert [b.seq for b in tab.unreceipted()] == [3, 4]
    assert not tab.confirmed
    assert tab.apply_receipt(Receipt(sample_election.id, tab.device, 4, tab.batches[3].body_hash))
    assert tab.confirmed


def test_receipt_with_foreign_hash_is_ignored(sample_election: Election, keys_dir: Path) -> None:
    tab = _tab(sample_election, keys_dir)
    assert not tab.apply_receipt(Receipt(sample_election.id, tab.device, 4, "ab" * 32))
    assert tab.receipted == 0 and not tab.confirmed


def test_older_or_other_device_receipt_changes_nothing(sample_election: Election, keys_dir: Path) -> None:
    tab = _tab(sample_election, keys_dir)
    tab.apply_receipt(Receipt(sample_election.id, tab.device, 3, tab.batches[2].body_hash))
    assert not tab.apply_receipt(Receipt(sample_election.id, tab.device, 1, tab.batches[0].body_hash))
    other = sample_election.devices[1]
    assert not tab.apply_receipt(Receipt(sample_election.id, other, 4, tab.batches[3].body_hash))
    assert tab.receipted == 3


def test_without_a_store_record_sent_only_tracks_the_seq(sample_election: Election, keys_dir: Path) -> None:
    tab = _tab(sample_election, keys_dir)
    assert tab.store is None and tab.sent_seq == 0
    assert tab.record_sent(2) is tab.batches[1]
    assert tab.sent_seq == 2
    tab.mark_acked(1)
    assert [b.seq for b in tab.unacked()] == [2, 3, 4]


def test_open_with_a_store_gives_the_same_bytes_as_load(
    tmp_path: Path, sample_election: Election, keys_dir: Path
) -> None:
    device = sample_election.devices[0]
    with StateStore(tmp_path) as store:
        opened = Tabulator.open(sample_election, device, load_signing_key(keys_dir, device), 3, 4, store)
    assert [b.payload for b in opened.batches] == [b.payload for b in _tab(sample_election, keys_dir).batches]
