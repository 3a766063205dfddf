"""Device state on disk: resume the chain after a reboot, never two bodies for one seq.

The crash tests run tests/devices/state_support.py as a real child process that SIGKILLs
itself at a named point (or is SIGKILLed from outside at random moments), then restart it on
the same state directory and read the "wire" file to see exactly what it sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices._exceptions import StateError, StateMismatch
from devices.state import STATE_FILE, StateStore
from devices.tabulator import Tabulator
from edgetally.brokers import BrokerProcess
from protocol import GENESIS_HASH, Election, Receipt, Registry, load_signing_key, verify
from tests.devices.state_support import read_wire
from tests.helpers import REPO, edgetally_cmd, wait_until

SEED = 7
BATCHES = 5
DEVICES = 3


def _child(
    keys: Path, work: Path, *extra: str, batches: int = BATCHES, devices: int = DEVICES, seed: int = SEED
) -> list[str]:
    return [
        sys.executable, "-m", "tests.devices.state_support",
        "--keys", str(keys), "--state-dir", str(work / "state"), "--wire", str(work / "wire.jsonl"),
        "--report", str(work / "report.json"), "--seed", str(seed),
        "--batches", str(batches), "--devices", str(devices), *extra,
    ]  # fmt: skip


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)


def _expected(election: Election, keys: Path, device: str, batches: int = BATCHES) -> list[bytes]:
    tab = Tabulator.load(election, keys, device, SEED, batches)
    return [b.payload for b in tab.batches]


def _bodies_by_seq(wire: Path) -> dict[tuple[str, int], set[str]]:
    seen: dict[tuple[str, int], set[str]] = defaultdict(set)
    for line in read_wire(wire):
        seen[(str(line["device"]), int(str(line["seq"])))].add(str(line["payload"]))
    return seen


def _assert_wire_is_one_body_per_seq(
    wire: Path, election: Election, keys: Path, devices: int = DEVICES, batches: int = BATCHES
) -> None:
    seen = _bodies_by_seq(wire)
    for device in election.devices[:devices]:
        expected = _expected(election, keys, device, batches)
        for seq in range(1, batches + 1):
            bodies = seen.get((device, seq), set())
            assert bodies == {expected[seq - 1].decode()}, f"device={device} seq={seq}: {len(bodies)} bodies"


# -- the store itself -------------------------------------------------------------------------


def _open(store: StateStore, election: Election, keys: Path, device: str, seed: int = SEED) -> Tabulator:
    return Tabulator.open(election, device, load_signing_key(keys, device), seed, BATCHES, store)


def test_reopened_device_resumes_seq_prev_hash_and_unreceipted_batches(
    tmp_path: Path, sample_election: Election, keys_dir: Path, registry: Registry
) -> None:
    device = sample_election.devices[0]
    with StateStore(tmp_path) as store:
        tab = _open(store, sample_election, keys_dir, device)
        for seq in (1, 2, 3):
            tab.record_sent(seq)
        tab.mark_acked(1)
        tab.mark_acked(2)
        assert tab.apply_receipt(Receipt(sample_election.id, device, 1, tab.batches[0].body_hash))
    with StateStore(tmp_path) as store:
        state = store.load(device)
        assert state is not None
        assert state.seq == 3 and state.prev_hash == tab.batches[2].body_hash
        assert state.receipted_seq == 1
        assert [b.seq for b in state.unreceipted] == [2, 3]
        assert [b.seq for b in state.unacked] == [3]
        assert state.sent[0].payload is None  # receipted: only its hash is kept
        assert [b.payload for b in state.unreceipted] == [b.payload for b in tab.batches[1:3]]
        again = _open(store, sample_election, keys_dir, device)
    assert again.sent_seq == 3 and again.receipted == 1 and again.acked == {1, 2}
    assert [b.seq for b in again.unacked()] == [3, 4, 5]
    assert [b.payload for b in again.batches] == [b.payload for b in tab.batches]
    for batch in again.unreceipted():
        assert verify(batch.payload, registry, topic_device=device).body.seq == batch.seq


def test_new_device_starts_at_genesis(tmp_path: Path, sample_election: Election, keys_dir: Path) -> None:
    with StateStore(tmp_path) as store:
        tab = _open(store, sample_election, keys_dir, sample_election.devices[1])
        state = store.load(tab.device)
    assert tab.sent_seq == 0 and tab.receipted == 0
    assert state is not None and state.seq == 0 and state.prev_hash == GENESIS_HASH


def test_store_refuses_a_second_body_for_a_sent_seq(
    tmp_path: Path, sample_election: Election, keys_dir: Path
) -> None:
    device = sample_election.devices[0]
    with StateStore(tmp_path) as store:
        tab = _open(store, sample_election, keys_dir, device)
        tab.record_sent(1)
        with pytest.raises(StateMismatch, match=rf"device={device} seq=1 was already sent"):
            store.record_sent(device, 1, "ab" * 32, b"other")
        store.record_sent(device, 1, tab.batches[0].body_hash, tab.batches[0].payload)  # same: no-op


def test_state_made_with_another_seed_is_refused(
    tmp_path: Path, sample_election: Election, keys_dir: Path
) -> None:
    device = sample_election.devices[0]
    with StateStore(tmp_path) as store:
        _open(store, sample_election, keys_dir, device).record_sent(1)
        with pytest.raises(StateMismatch, match=rf"{STATE_FILE}: device '{device}' has state .*another"):
            _open(store, sample_election, keys_dir, device, seed=SEED + 1)


def test_a_failed_group_commits_nothing(tmp_path: Path, sample_election: Election, keys_dir: Path) -> None:
    device = sample_election.devices[0]
    with StateStore(tmp_path) as store:
        tab = _open(store, sample_election, keys_dir, device)
        with pytest.raises(RuntimeError), store.group():
            tab.record_sent(1)
            raise RuntimeError("power cut")
        state = store.load(device)
        assert state is not None and state.seq == 0


def test_a_file_that_is_not_a_state_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=rf"{STATE_FILE}: not a readable device state file"):
        StateStore(tmp_path).open()


# -- real processes, SIGKILLed ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "resent"),
    [
        ("before-record", []),  # nothing of seq 3 committed: it is simply generated again
        ("after-record", [3]),  # recorded, never sent: goes out from the store
        ("after-send", [3]),  # sent, never acknowledged: resent, same bytes
        ("after-ack", []),  # acknowledged: not resent
    ],
)
def test_device_killed_mid_send_resumes_its_chain_with_the_same_bytes(
    tmp_path: Path, sample_election: Election, keys_dir: Path, point: str, resent: list[int]
) -> None:
    device = sample_election.devices[1]
    first = _run(_child(keys_dir, tmp_path, "--kill-at", f"{device}:3:{point}"))
    assert first.returncode == -signal.SIGKILL, first.stderr
    sent_before = _bodies_by_seq(tmp_path / "wire.jsonl")
    assert ((device, 3) in sent_before) == (point in ("after-send", "after-ack"))

    second = _run(_child(keys_dir, tmp_path))
    assert second.returncode == 0, second.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed"][device] == (2 if point == "before-record" else 3)
    assert report["resent"][device] == resent
    _assert_wire_is_one_body_per_seq(tmp_path / "wire.jsonl", sample_election, keys_dir)
    with StateStore(tmp_path / "state") as store:
        for name in sample_election.devices[:DEVICES]:
            state = store.load(name)
            assert state is not None and state.seq == BATCHES and not state.unacked
            assert [b.payload for b in state.unreceipted] == _expected(sample_election, keys_dir, name)


def test_receipted_batches_are_not_resent_after_a_reboot(
    tmp_path: Path, sample_election: Election, keys_dir: Path
) -> None:
    device = sample_election.devices[0]
    assert _run(_child(keys_dir, tmp_path, "--kill-at", f"{device}:4:after-send")).returncode == -9
    with StateStore(tmp_path / "state") as store:  # the cloud's receipt for seq 2 arrives
        tab = _open(store, sample_election, keys_dir, device)
        assert tab.apply_receipt(Receipt(sample_election.id, device, 2, tab.batches[1].body_hash))
    assert _run(_child(keys_dir, tmp_path)).returncode == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resent"][device] == [4]
    with StateStore(tmp_path / "state") as store:
        state = store.load(device)
    assert state is not None and state.receipted_seq == 2
    assert [b.seq for b in state.unreceipted] == [3, 4, 5]
    assert all(b.payload for b in state.unreceipted)


def test_restart_with_another_seed_refuses_and_sends_nothing(
    tmp_path: Path, sample_election: Election, keys_dir: Path
) -> None:
    device = sample_election.devices[0]
    assert _run(_child(keys_dir, tmp_path, "--kill-at", f"{device}:2:after-ack")).returncode == -9
    before = (tmp_path / "wire.jsonl").read_bytes()
    refused = _run(_child(keys_dir, tmp_path, seed=SEED + 1))
    assert refused.returncode == 2
    assert f"device '{device}' has state" in refused.stderr and "another" in refused.stderr
    assert (tmp_path / "wire.jsonl").read_bytes() == before


def test_random_sigkills_never_give_two_bodies_for_one_seq(
    tmp_path: Path, sample_election: Election, keys_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    devices, batches = 40, 30
    wire = tmp_path / "wire.jsonl"
    log = tmp_path / "child.log"
    killed_mid_run = 0
    for cycle in range(1, 6):
        with log.open("ab") as out:
            child = subprocess.Popen(
                _child(keys_dir, tmp_path, devices=devices, batches=batches),
                cwd=REPO,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        processes.append(child)
        target = cycle * devices * batches // 6
        wait_until(
            lambda t=target, c=child: c.poll() is not None or len(read_wire(wire)) >= t,  # type: ignore[misc]
            30,
            f"cycle {cycle}: {target} sends",
            interval=0.01,
        )
        killed_mid_run += child.poll() is None
        with contextlib.suppress(ProcessLookupError):  # it may have finished by itself
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
        assert child.returncode in (0, -signal.SIGKILL), log.read_text()
    assert killed_mid_run >= 3, "the children finished before they could be killed: make them longer"
    final = _run(_child(keys_dir, tmp_path, devices=devices, batches=batches))
    assert final.returncode == 0, final.stderr
    _assert_wire_is_one_body_per_seq(wire, sample_election, keys_dir, devices, batches)
    with StateStore(tmp_path / "state") as store:
        for name in sample_election.devices[:devices]:
            state = store.load(name)
            assert state is not None and state.seq == batches and not state.unacked


def test_acks_outside_a_group_are_written_with_the_next_transaction(
    tmp_path: Path, sample_election: Election, keys_dir: Path
) -> None:
    first, second = sample_election.devices[:2]
    with StateStore(tmp_path) as store, StateStore(tmp_path) as observer:
        tab = _open(store, sample_election, keys_dir, first)
        other = _open(store, sample_election, keys_dir, second)
        tab.record_sent(1)
        tab.mark_acked(1)

        def acked() -> bool:
            state = observer.load(first)
            return state is not None and state.sent[0].acked

        assert not acked()  # deferred: no fsync of its own
        other.record_sent(1)  # any device's next write-ahead carries it
        assert acked()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs the test can fill (needs root and mount rights; skipped without)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> None:
    """Write zeros until the file system is full."""
    with open(directory / "filler", "wb") as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
            os.fsync(filler.fileno())


@pytest.mark.integration
def test_a_state_store_whose_disk_fills_mid_run_stops_the_fleet_with_one_line(
    small_disk: Path, broker: BrokerProcess, keys_dir: Path
) -> None:
    state = small_disk / "state"
    proc = subprocess.Popen(
        edgetally_cmd(
            "devices", "run", "--broker", broker.url, "--keys", str(keys_dir), "--seed", str(SEED),
            "--devices", "20", "--batches-per-device", "10", "--rate", "40", "--no-confirm",
            "--no-live", "--state-dir", str(state), "--timeout", "60",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_until(lambda: len(set(broker.log_path.read_text().split("New client connected"))) > 5, 30, "devices connected")
        _fill(small_disk)  # the fleet is publishing: its next state write finds the disk full
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, err[-3000:]
    assert "the fleet stopped:" in err and "full" in err, err[-3000:]
    assert "Traceback" not in err


def test_sigterm_stops_a_fleet_run_cleanly_with_its_acks_saved(
    tmp_path: Path, broker: BrokerProcess, keys_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """SIGTERM is Ctrl-C for ``devices run``: the fleet stops, and the acks it holds in memory
    (deferred, see devices/state.py) are written before it exits, not lost with the process."""
    summary = tmp_path / "summary.json"
    with open(tmp_path / "fleet.log", "wb") as log:
        proc = subprocess.Popen(
            edgetally_cmd(
                "devices", "run", "--broker", broker.url, "--keys", str(keys_dir), "--seed", str(SEED),
                "--devices", "4", "--batches-per-device", "200", "--rate", "20", "--no-confirm",
                "--no-live", "--state-dir", str(tmp_path / "state"), "--summary", str(summary),
            ),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    processes.append(proc)
    wait_until(lambda: summary.exists() and json.loads(summary.read_text())["acked"] >= 5, 30, "acked batches")

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(20) == 130, (tmp_path / "fleet.log").read_text()[-2000:]
    assert "interrupted (SIGTERM)" in (tmp_path / "fleet.log").read_text()
    acked_before = json.loads(summary.read_text())["acked"]  # the last snapshot: at most 0.5 s old
    with StateStore(tmp_path / "state") as store:
        saved = [b for d in store.devices() if (s := store.load(d)) is not None for b in s.sent if b.acked]
    assert len(saved) >= acked_before > 0
