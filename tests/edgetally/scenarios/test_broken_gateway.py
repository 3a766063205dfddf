"""The crash scenarios catch the bug they exist for: a gateway that acknowledges a batch before
committing it loses that batch when it is SIGKILLed, and the verdict names what was lost.

Hop by hop (``confirm: false``: devices forget a batch at the edge broker's PUBACK), so only
the gateway's own guarantee stands between a crash and a loss. The gateway's first start
freezes right after acknowledging its 2nd group (gateway/faults.py ``acked:2``) and the
scenario's first crash SIGKILLs it there: with the hidden unsafe switch the group was
acknowledged and never committed, and is gone; without it the group was committed first.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgetally.scenarios.checks import LEDGER
from edgetally.scenarios.model import shipped
from edgetally.scenarios.runner import Report, RunOptions, ScenarioRunner
from gateway.faults import FAULT_DIR_ENV, FAULT_ENV, UNSAFE_ACK_ENV

pytestmark = pytest.mark.integration


def _crash_loop(tmp_path: Path, *, unsafe: bool) -> Report:
    scenario = next(s for s in shipped() if s.name == "gateway-crash-loop")
    # What the unsafe gateway lost never arrives, so its run waits out the whole drain timeout:
    # 10 s, which the correct gateway's run (the test below, same timeout) drains well within.
    # One SIGKILL (the loop's first, at the fault point) is the claim; the four after it only
    # made each run 12 s longer.
    first_crash = tuple(a for a in scenario.timeline if a.verb == "crash")[:1]
    assert first_crash, "gateway-crash-loop lost its crash"
    scenario = replace(
        scenario.with_topology(devices=16, batches=4, confirm=False), drain_timeout=10.0, timeline=first_crash
    )
    env = {FAULT_ENV: "acked:2", FAULT_DIR_ENV: str(tmp_path)}
    if unsafe:
        env[UNSAFE_ACK_ENV] = "1"
    options = RunOptions(workdir=tmp_path / "world", speed=1.0, fleet_timeout=120, first_gateway_env=env)
    return ScenarioRunner(scenario, options).run()


@pytest.mark.timeout(240)
def test_a_gateway_acking_before_commit_fails_the_crash_scenario_naming_the_lost_batches(tmp_path: Path) -> None:
    report = _crash_loop(tmp_path, unsafe=True)

    assert (tmp_path / "acked.hit").exists(), "the gateway never reached the fault point"
    assert report.verdict is not None and not report.ok
    ledger = report.verdict.check(LEDGER)
    assert not ledger.ok and "missing" in ledger.detail, ledger
    assert report.verdict.lost, "the verdict must name the lost batches"
    assert report.to_mapping()["verdict"]["lost"]


@pytest.mark.timeout(240)
def test_the_same_crash_with_a_correct_gateway_loses_nothing(tmp_path: Path) -> None:
    report = _crash_loop(tmp_path, unsafe=False)

    assert (tmp_path / "acked.hit").exists(), "the gateway never reached the fault point"
    assert report.verdict is not None
    ledger = report.verdict.check(LEDGER)
    assert ledger.ok, ledger
    assert report.verdict.lost == ()
