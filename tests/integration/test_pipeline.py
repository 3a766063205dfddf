"""The whole pipeline with real brokers and real processes: exact totals through crashes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetally.stack import Stack, StackConfig
from edgetally.verdict import Verdict, compare
from tests.helpers import SAMPLE_ELECTION, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[list[Stack]]:
    made: list[Stack] = []
    yield made
    for stack in made:
        stack.stop()
        for broker in (stack.edge, stack.cloud_broker):
            broker.kill()


def _stack(made: list[Stack], tmp_path: Path, **overrides: object) -> Stack:
    settings: dict[str, object] = {
        "workdir": tmp_path / "stack",
        "election_file": SAMPLE_ELECTION,
        "seed": 11,
        "batches_per_device": 4,
        "devices": 30,
        "resend_after": 1.0,
        "fleet_timeout": 150.0,
        "embedded_brokers": False,
    }
    settings.update(overrides)
    stack = Stack(StackConfig(**settings))  # type: ignore[arg-type]
    made.append(stack)
    return stack


def _ledger(stack: Stack) -> int:
    return int(stack.results().get("batches", 0))


def _finish(stack: Stack) -> Verdict:
    """Wait (bounded) for the fleet to be confirmed and the gateway to drain; return the verdict."""
    code = stack.fleet.wait(timeout=170)
    assert code == 0, f"fleet exited {code}:\n{stack.fleet.tail()}\n--- gateway:\n{stack.gateway.tail()}\n--- cloud:\n{stack.cloud.tail()}"
    expected = stack.expected()
    wait_until(lambda: _ledger(stack) >= expected.batches, 30, "every batch in the ledger")
    wait_until(
        lambda: (s := stack.buffer_stats()["states"])["pending"] + s["inflight"] == 0, 30, "gateway buffer drained"
    )
    return compare(stack.registry.election, expected, stack.results(), stack.fleet_summary(), stack.buffer_stats())


def _assert_match(verdict: Verdict) -> None:
    assert verdict.ok, verdict.to_mapping()


def test_full_pipeline_gives_exact_totals(stack_factory: list[Stack], tmp_path: Path) -> None:
    stack = _stack(stack_factory, tmp_path)
    stack.start()
    stack.start_fleet()
    verdict = _finish(stack)
    _assert_match(verdict)


def test_cloud_broker_sigkill_mid_run_loses_nothing(stack_factory: list[Stack], tmp_path: Path) -> None:
    stack = _stack(stack_factory, tmp_path, rate=60.0)
    stack.start()
    expected_batches = stack.expected().batches
    stack.start_fleet()
    wait_until(lambda: _ledger(stack) >= expected_batches // 4, 60, "a quarter of the batches in the ledger")
    stack.cloud_broker.kill()
    stack.cloud_broker.start()
    verdict = _finish(stack)
    _assert_match(verdict)


def test_gateway_sigkill_mid_run_restarts_on_its_buffer_without_double_count(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = _stack(stack_factory, tmp_path, rate=60.0)
    stack.start()
    expected_batches = stack.expected().batches
    stack.start_fleet()
    wait_until(lambda: _ledger(stack) >= expected_batches // 4, 60, "a quarter of the batches in the ledger")
    stack.gateway.kill()
    stack.gateway.start()
    stack.gateway.wait_ready()
    verdict = _finish(stack)
    _assert_match(verdict)


def test_gateway_killed_while_holding_an_outage_backlog_forwards_it_after_restart(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = _stack(stack_factory, tmp_path, devices=20, rate=0.0)
    stack.start()
    stack.cloud_broker.stop()
    stack.start_fleet()
    expected_batches = stack.expected().batches
    wait_until(
        lambda: stack.buffer_stats()["states"]["pending"] >= expected_batches // 2, 60, "a backlog in the gateway buffer"
    )
    stack.gateway.kill()
    stack.cloud_broker.start()
    stack.gateway.start()
    verdict = _finish(stack)
    _assert_match(verdict)
