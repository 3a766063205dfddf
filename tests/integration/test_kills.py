"""Issue 6's kill tests: a broker or the gateway's disk dies with batches in its care, and still
every device ends confirmed by a receipt, with exact totals and nothing counted twice.

MQTT acknowledgements are hop by hop, so each test kills the hop that holds batches its
sender already let go of: the edge broker holding batches queued for a gateway that is not
reading (persistence off, then on with a 1 s autosave, so the restarted broker restores a stale
store), the cloud broker while the gateway forwards, and the gateway's buffer file (deleted
while the gateway is down: disk lost). Only the devices still hold those batches (they keep
each one until a receipt covers it); their resends, absorbed by the ledger, must close every hole.

``scripts/kill-test N`` runs each test N times (``--kill-runs N``): issue 6 asks for 20 in a row.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from edgetally.brokers import BrokerSettings
from edgetally.stack import Stack, StackConfig
from edgetally.verdict import Verdict, compare
from protocol import BATCH_FILTER
from protocol.tls import ClientTls, Role
from tests.cloud.support import ledger_rows
from tests.gateway.support import Collector
from tests.helpers import SAMPLE_ELECTION, wait_until

pytestmark = pytest.mark.integration

DEVICES = 20
BATCHES = 4
# Devices resend after 1 s without receipt progress, doubling up to 4 s, and reconnect within
# 2 s: the outages here last seconds, the defaults (60 s, 30 s) would only make the tests slow.
FLEET_ARGS = ("--resend-cap", "4", "--reconnect-max", "2")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kill_run" in metafunc.fixturenames:
        runs = int(metafunc.config.getoption("--kill-runs"))
        metafunc.parametrize("kill_run", range(1, runs + 1), ids=[f"run{n}" for n in range(1, runs + 1)])


@pytest.fixture
def made() -> Iterator[list[Stack]]:
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        stack.stop()
        for broker in (stack.edge, stack.cloud_broker):
            broker.kill()


def _watcher(stack: Stack) -> ClientTls:
    assert stack.wire is not None
    return stack.wire.client(Role.MONITOR, "watcher")


def _stack(made: list[Stack], tmp_path: Path, kill_run: int, **overrides: object) -> Stack:
    settings: dict[str, object] = {
        "workdir": tmp_path / "stack",
        "election_file": SAMPLE_ELECTION,
        "seed": 100 + kill_run,  # each run its own ballots
        "batches_per_device": BATCHES,
        "devices": DEVICES,
        "resend_after": 1.0,
        "fleet_timeout": 150.0,
        "embedded_brokers": False,
        "fleet_args": FLEET_ARGS,
        "monitors": ("watcher",),  # a read-only identity the tests watch the brokers with
    }
    settings.update(overrides)
    stack = Stack(StackConfig(**settings))  # type: ignore[arg-type]
    made.append(stack)
    return stack


def _ledger_rows(stack: Stack) -> int:
    """Rows in the cloud's ledger, read straight from its SQLite file (a CLI call takes ~1.5 s)."""
    engine = create_engine(stack.db_url)
    try:
        return ledger_rows(engine)
    except OperationalError:  # the cloud has not created the schema yet
        return 0
    finally:
        engine.dispose()


def _buffered(stack: Stack) -> int:
    """Batches the gateway took into its buffer (pending or forwarded already)."""
    states = stack.buffer_stats()["states"]
    return int(states["pending"]) + int(states["inflight"]) + int(states["delivered"])


def _finish(stack: Stack) -> Verdict:
    """Wait (bounded) for the fleet to end confirmed and the gateway to drain; the verdict."""
    code = stack.fleet.wait(timeout=170)
    assert code == 0, (
        f"fleet exited {code}:\n{stack.fleet.tail()}\n--- gateway:\n{stack.gateway.tail()}"
        f"\n--- cloud:\n{stack.cloud.tail()}"
    )
    expected = stack.expected()
    wait_until(lambda: _ledger_rows(stack) >= expected.batches, 30, "every batch in the ledger")
    wait_until(
        lambda: (s := stack.buffer_stats()["states"])["pending"] + s["inflight"] == 0,
        30,
        "gateway buffer drained",
    )
    verdict = compare(
        stack.registry.election, expected, stack.results(), stack.fleet_summary(), stack.buffer_stats()
    )
    assert verdict.ok, verdict.to_mapping()
    summary = stack.fleet_summary()
    assert summary is not None and summary["confirmed_devices"] == DEVICES, summary
    return verdict


@pytest.mark.parametrize("persistence", [False, True], ids=["persistence-off", "persistence-on"])
def test_edge_broker_sigkilled_with_batches_queued_for_the_gateway_loses_none(
    made: list[Stack], tmp_path: Path, kill_run: int, persistence: bool
) -> None:
    stack = _stack(made, tmp_path, kill_run, rate=8.0)
    # Persistence on: no autosave of its own; the test has it save once (SIGUSR1) when half the
    # batches are queued, so the restarted broker restores a stale store: the gateway's session
    # with the first half, the second half lost.
    stack.edge.settings = BrokerSettings(persistence=persistence, autosave_interval=86_400)
    stack.start()
    stack.cloud_broker.stop()  # the cloud link is down: the gateway holds what it takes
    expected = stack.expected().batches
    watcher = Collector(stack.edge.url, BATCH_FILTER, tls=_watcher(stack)).start()
    try:
        stack.start_fleet()
        wait_until(
            lambda: _buffered(stack) >= expected // 4, 60, "a quarter of the batches in the gateway's buffer"
        )
        # The gateway goes away mid-run (its session stays): the edge broker queues the rest.
        # (A SIGSTOPped gateway would not do: what the broker already wrote into its socket
        # would still be read after the broker's death.)
        stack.gateway.stop()
        if persistence:
            wait_until(lambda: len(watcher.payloads()) >= expected // 2, 60, "half the batches published")
            assert stack.edge.pid is not None
            os.kill(stack.edge.pid, signal.SIGUSR1)  # Mosquitto writes its store now
            wait_until((stack.edge.workdir / "mosquitto.db").exists, 10, "the edge broker's store")
        wait_until(lambda: len(watcher.payloads()) >= expected, 60, "every batch published to the edge")
    finally:
        watcher.stop()
    assert _buffered(stack) < expected, "no batch was left queued in the edge broker"
    stack.edge.kill()
    stack.edge.start()
    stack.gateway.start()
    stack.cloud_broker.start()
    _finish(stack)


def test_cloud_broker_sigkilled_while_the_gateway_forwards_loses_none(
    made: list[Stack], tmp_path: Path, kill_run: int
) -> None:
    stack = _stack(made, tmp_path, kill_run, rate=10.0)
    stack.start()
    # The cloud is away (its session stays): what the gateway forwards waits in the cloud broker.
    stack.cloud.stop()
    expected = stack.expected().batches
    stack.start_fleet()
    wait_until(
        lambda: stack.buffer_stats()["states"]["delivered"] >= expected // 4,
        60,
        "a quarter of the batches forwarded to the cloud broker",
    )
    stack.cloud_broker.kill()  # the fleet is still sending, the gateway still forwarding
    stack.cloud_broker.start()
    stack.cloud.start()
    _finish(stack)


def test_gateway_restarted_on_an_empty_buffer_file_loses_none(
    made: list[Stack], tmp_path: Path, kill_run: int
) -> None:
    stack = _stack(made, tmp_path, kill_run)
    stack.start()
    stack.cloud_broker.stop()  # the cloud link is down: every batch waits in the gateway buffer
    expected = stack.expected().batches
    stack.start_fleet()
    wait_until(
        lambda: stack.buffer_stats()["states"]["pending"] >= expected,
        60,
        "every batch in the gateway's buffer (and acknowledged to the edge broker)",
    )
    stack.gateway.kill()
    lost = [p for p in stack.buffer_path.parent.glob(stack.buffer_path.name + "*") if p.is_file()]
    assert stack.buffer_path in lost
    for path in lost:  # the disk is gone: buffer, WAL and shared memory
        path.unlink()
    stack.cloud_broker.start()
    stack.gateway.start()
    stack.gateway.wait_ready()
    _finish(stack)
