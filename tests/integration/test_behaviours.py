"""Every misbehaviour through the real stack; the cloud must agree with the fleet's truth file.

Real edge broker, gateway, cloud broker and cloud (edgetally/stack.py). Accepted batches are
read from the cloud's ledger, refusals from the cloud's rejections table (stateful reasons) and
from the gateway buffer's quarantine (stateless reasons: the gateway verifies every envelope
and never forwards one that fails, see devices/truth.py). Gaps (lossy: a seq's first publish
lost on the way) are read from ``cloud audit --json``'s ``repairs``: each must end repaired.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.behaviours import Behaviour
from devices.truth import load_truth
from edgetally.processes import Component
from edgetally.stack import Stack, StackConfig
from protocol import sha256_hex
from tests.helpers import SAMPLE_ELECTION, run_cli, wait_until

pytestmark = pytest.mark.integration

DEVICES = 26
BATCHES = 4


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    made: list[Stack] = []
    yield made
    for stack in made:
        stack.stop()
        for broker in (stack.edge, stack.cloud_broker):
            broker.kill()


def _stack(made: list[Stack], tmp_path: Path, *extra: str, **overrides: Any) -> Stack:
    settings: dict[str, Any] = {
        "workdir": tmp_path / "stack",
        "election_file": SAMPLE_ELECTION,
        "seed": 5,
        "batches_per_device": BATCHES,
        "devices": DEVICES,
        "resend_after": 1.0,
        "fleet_timeout": 120.0,
        "embedded_brokers": False,
    }
    settings.update(overrides)
    stack = Stack(StackConfig(**settings))
    stack.fleet = Component("fleet", [*stack.fleet.args, *extra], stack.config.workdir, ready=False)
    made.append(stack)
    return stack


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def _cloud_db(stack: Stack) -> Path:
    return stack.config.workdir / "cloud.db"


def _ledger(stack: Stack) -> dict[tuple[str, int], list[str]]:
    held: dict[tuple[str, int], list[str]] = {}
    for device, seq, digest in _rows(_cloud_db(stack), "SELECT device, seq, body_hash FROM ledger"):
        held.setdefault((device, seq), []).append(digest)
    return held


def _refused(stack: Stack) -> dict[str, set[tuple[str, str]]]:
    """payload hash -> {(where, reason)} over the cloud's rejections and the gateway's quarantine."""
    found: dict[str, set[tuple[str, str]]] = {}
    for digest, reason in _rows(_cloud_db(stack), "SELECT payload_hash, reason FROM rejections"):
        found.setdefault(digest, set()).add(("cloud", reason))
    quarantined = _rows(stack.buffer_path, "SELECT payload, reason FROM messages WHERE state = 'quarantined'")
    for payload, reason in quarantined:
        found.setdefault(sha256_hex(bytes(payload)), set()).add(("gateway", reason))
    return found


def _assert_cloud_matches_truth(stack: Stack, truth: dict[str, Any]) -> None:
    devices = truth["devices"]
    must_accept = {(d, a["seq"]): a["body_hash"] for d, e in devices.items() for a in e["accept"]}
    must_refuse = {r["payload_hash"]: (r["where"], r["reason"]) for e in devices.values() for r in e["reject"]}
    wait_until(lambda: len(_ledger(stack)) >= len(must_accept), 60, "every accepted batch in the ledger")
    wait_until(lambda: must_refuse.keys() <= _refused(stack).keys(), 60, "every refusal recorded")
    ledger = _ledger(stack)
    assert {k: v[0] for k, v in ledger.items()} == must_accept  # exactly these, nothing else
    assert all(len(v) == 1 for v in ledger.values())  # never two rows (bodies) for one seq
    refused = _refused(stack)
    assert set(refused) == set(must_refuse), "refused messages differ from the truth"
    for digest, expected in must_refuse.items():
        assert refused[digest] == {expected}, (digest, refused[digest], expected)
    results = stack.results()
    expected = truth["expected"]
    assert results["batches"] == expected["batches"]
    assert results["ballots"] == expected["ballots"], (results, expected)
    _assert_gaps_repaired(stack, truth)


def _seqs(text: str) -> set[int]:
    """An audit ``repairs`` row's ``seqs``, "3" or "3-4", as a set."""
    first, _, last = text.partition("-")
    return set(range(int(first), int(last or first) + 1))


def _assert_gaps_repaired(stack: Stack, truth: dict[str, Any]) -> None:
    """Every gap the truth names is listed repaired by the cloud audit, and none is open."""
    audit = run_cli(
        "--log-level", "WARNING", "cloud", "audit", "--db", stack.db_url,
        "--keys", str(stack.keys), "--limit", "0", "--json", check=False,
    )  # fmt: skip
    repairs = json.loads(audit.stdout)["repairs"]  # exits 1 here anyway: silent has no final
    assert [r for r in repairs if r["state"] != "repaired"] == [], "open gaps left"
    for device, entry in truth["devices"].items():
        covered = set().union(*(_seqs(r["seqs"]) for r in repairs if r["device"] == device))
        for gap in entry["repairs"]:
            assert gap["state"] == "repaired"
            assert _seqs(gap["seqs"]) <= covered, (device, gap, repairs)


def test_every_behaviour_through_the_stack_matches_the_truth_file(stacks: list[Stack], tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    specs = [a for b in Behaviour for a in ("--behaviour", f"{b.value}=1")]
    stack = _stack(stacks, tmp_path, *specs, "--state-dir", str(tmp_path / "state"), "--truth", str(truth_path))
    stack.start()
    stack.start_fleet()
    code = stack.fleet.wait(timeout=150)
    assert code == 0, f"fleet exited {code}:\n{stack.fleet.tail()}"
    truth = load_truth(truth_path)
    assert set(truth["behaviours"].values()) == {b.value for b in Behaviour}
    assert truth["devices"][_device(truth, Behaviour.DUPLICATE)]["published"] >= 2 * BATCHES
    _assert_cloud_matches_truth(stack, truth)
    # lossy: its withheld seqs were resent, are each in the ledger once, and it is confirmed.
    lossy = _device(truth, Behaviour.LOSSY)
    entry = truth["devices"][lossy]
    assert entry["withheld"] and set(entry["withheld"]) <= set(range(2, BATCHES))  # not 1, not final
    assert entry["repairs"] and entry["confirmed"] is True
    assert entry["resends"] >= len(entry["withheld"])
    ledger = _ledger(stack)
    assert all(len(ledger[(lossy, seq)]) == 1 for seq in entry["withheld"])
    summary = stack.fleet_summary()
    assert summary is not None and lossy not in summary["unconfirmed_devices"]


def _device(truth: dict[str, Any], behaviour: Behaviour) -> str:
    return next(d for d, b in truth["behaviours"].items() if b == behaviour.value)


def test_fleet_sigkilled_and_restarted_on_its_state_dir_ends_with_exact_totals(
    stacks: list[Stack], tmp_path: Path
) -> None:
    truth_path = tmp_path / "truth.json"
    stack = _stack(
        stacks, tmp_path, "--state-dir", str(tmp_path / "state"), "--truth", str(truth_path), rate=15.0  # ~7 s of sending: the kill lands mid-run
    )
    stack.start()
    stack.start_fleet()
    wait_until(lambda: len(_ledger(stack)) >= DEVICES * BATCHES // 3, 60, "a third of the batches in the ledger")
    assert stack.fleet.running, "the fleet finished before the kill"
    stack.fleet.kill()  # SIGKILL
    assert stack.fleet.returncode == -signal.SIGKILL
    stack.fleet.start()  # the same command, the same --state-dir
    code = stack.fleet.wait(timeout=150)
    assert code == 0, f"fleet exited {code}:\n{stack.fleet.tail()}"
    _assert_cloud_matches_truth(stack, load_truth(truth_path))
    expected = stack.expected()
    assert stack.results()["ballots"] == expected.ballots
