"""Every misbehaviour through the real stack; the cloud must agree with the fleet's truth file.

Real edge broker, gateway, cloud broker and cloud (edgetally/stack.py). The comparison is the
scenario verdict's (edgetally/scenarios/checks.py ``judge``): accepted batches read from the
cloud's ledger, refusals from the cloud's rejections table (stateful reasons) and from the
gateway buffer's quarantine (stateless reasons: the gateway verifies every envelope and never
forwards one that fails, see devices/truth.py), the totals, the fleet's confirmations, the
audit, and the gaps (lossy: a seq's first publish lost on the way) the audit's ``repairs`` must
list as repaired. Every check must hold.
"""

from __future__ import annotations

import copy
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.behaviours import Behaviour
from devices.truth import load_truth
from edgetally.processes import Component
from edgetally.scenarios.checks import LEDGER, REFUSALS, REPAIRS, judge
from edgetally.scenarios.observe import (
    Observations,
    cloud_engine,
    expected_accepts,
    expected_refusals,
    read_ledger,
    read_refusals,
    undelivered,
)
from edgetally.scenarios.verdict import ScenarioVerdict
from edgetally.stack import Stack, StackConfig
from tests.helpers import SAMPLE_ELECTION, wait_until

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


def _ledger(stack: Stack, election: str) -> dict[tuple[str, int], list[str]]:
    engine = cloud_engine(stack.db_url)
    try:
        return read_ledger(engine, election)
    finally:
        engine.dispose()


def _observations(stack: Stack, truth: dict[str, Any], drained_s: float) -> Observations:
    summary = stack.fleet_summary()
    return Observations(
        db_url=stack.db_url,
        keys_dir=stack.keys,
        buffers=(stack.buffer_path,),
        fleet_summaries=(summary,) if summary is not None else (),
        truth=truth,
        last_fault_s=None,
        drained_s=drained_s,
        peak_buffer_depth=0,
    )


def _assert_cloud_matches_truth(stack: Stack, truth: dict[str, Any], started: float) -> ScenarioVerdict:
    """Wait (bounded) until the cloud holds as much as the truth says and the gateway drained,
    then every check of the scenario verdict must hold: the ledger is exactly the truth's
    accepted batches (each once, with its hash), every refusal is where the truth says with its
    reason (and nothing else refused), totals, confirmations, audit, gaps repaired."""
    must_accept, must_refuse = expected_accepts(truth), expected_refusals(truth)
    buffers = [stack.buffer_path]
    engine = cloud_engine(stack.db_url)
    try:
        wait_until(
            lambda: len(read_ledger(engine, truth["election"])) >= len(must_accept), 60, "every accepted batch in the ledger"
        )
        wait_until(lambda: must_refuse.keys() <= read_refusals(engine, buffers).keys(), 60, "every refusal recorded")
    finally:
        engine.dispose()
    wait_until(lambda: sum(undelivered(buffers)[stack.buffer_path]) == 0, 60, "the gateway buffer drained")
    verdict = judge(_observations(stack, truth, time.monotonic() - started))
    assert verdict.ok, verdict.to_mapping()
    return verdict


def test_every_behaviour_through_the_stack_matches_the_truth_file(stacks: list[Stack], tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    specs = [a for b in Behaviour for a in ("--behaviour", f"{b.value}=1")]
    stack = _stack(stacks, tmp_path, *specs, "--state-dir", str(tmp_path / "state"), "--truth", str(truth_path))
    started = time.monotonic()
    stack.start()
    stack.start_fleet()
    code = stack.fleet.wait(timeout=150)
    assert code == 0, f"fleet exited {code}:\n{stack.fleet.tail()}"
    truth = load_truth(truth_path)
    assert set(truth["behaviours"].values()) == {b.value for b in Behaviour}
    assert truth["devices"][_device(truth, Behaviour.DUPLICATE)]["published"] >= 2 * BATCHES
    verdict = _assert_cloud_matches_truth(stack, truth, started)
    assert "tampered 1/1 quarantined (bad_signature)" in verdict.check(REFUSALS).detail
    assert "after_final 1/1 rejected by the cloud (after_final)" in verdict.check(REFUSALS).detail
    # The comparison bites: a truth the cloud disagrees with fails it.
    altered = copy.deepcopy(truth)
    honest = next(d for d, e in altered["devices"].items() if e["behaviour"] is None)
    altered["devices"][honest]["accept"][0]["body_hash"] = "0" * 64
    altered["devices"][_device(truth, Behaviour.TAMPERED)]["reject"][0]["where"] = "cloud"
    # a gap the audit never listed, in seqs the ledger does not hold either
    altered["devices"][_device(truth, Behaviour.LOSSY)]["repairs"].append({"seqs": str(BATCHES + 5), "state": "repaired"})
    wrong = judge(_observations(stack, altered, time.monotonic() - started))
    assert {LEDGER, REFUSALS, REPAIRS} <= set(wrong.failed), wrong.to_mapping()
    # lossy: its withheld seqs were resent, are each in the ledger once, and it is confirmed.
    lossy = _device(truth, Behaviour.LOSSY)
    entry = truth["devices"][lossy]
    assert entry["withheld"] and set(entry["withheld"]) <= set(range(2, BATCHES))  # not 1, not final
    assert entry["repairs"] and entry["confirmed"] is True
    assert entry["resends"] >= len(entry["withheld"])
    ledger = _ledger(stack, truth["election"])
    assert all(len(ledger[(lossy, seq)]) == 1 for seq in entry["withheld"])
    summary = stack.fleet_summary()
    assert summary is not None and lossy not in summary["unconfirmed_devices"]


def _device(truth: dict[str, Any], behaviour: Behaviour) -> str:
    return str(next(d for d, b in truth["behaviours"].items() if b == behaviour.value))


def test_fleet_sigkilled_and_restarted_on_its_state_dir_ends_with_exact_totals(
    stacks: list[Stack], tmp_path: Path
) -> None:
    truth_path = tmp_path / "truth.json"
    stack = _stack(
        stacks, tmp_path, "--state-dir", str(tmp_path / "state"), "--truth", str(truth_path), rate=15.0  # ~7 s of sending: the kill lands mid-run
    )
    started = time.monotonic()
    stack.start()
    stack.start_fleet()
    election = stack.registry.election.id
    wait_until(lambda: len(_ledger(stack, election)) >= DEVICES * BATCHES // 3, 60, "a third of the batches in the ledger")
    assert stack.fleet.running, "the fleet finished before the kill"
    stack.fleet.kill()  # SIGKILL
    assert stack.fleet.returncode == -signal.SIGKILL
    stack.fleet.start()  # the same command, the same --state-dir
    code = stack.fleet.wait(timeout=150)
    assert code == 0, f"fleet exited {code}:\n{stack.fleet.tail()}"
    _assert_cloud_matches_truth(stack, load_truth(truth_path), started)
    expected = stack.expected()
    assert stack.results()["ballots"] == expected.ballots
