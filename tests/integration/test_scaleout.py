"""Scale-out, end to end: three `cloud run --share` workers on one PostgreSQL behind the whole
stack (fleet with receipts, edge broker, gateway, cloud broker). One worker is SIGKILLed mid-run
and never restarted: what it held unacknowledged dies with its clean session at the broker, the
devices resend it (no receipt covers it), and the totals still come out exact, nothing counted
twice, every device confirmed, and the audit passes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cloud import models
from cloud.db import make_engine
from edgetally.stack import Stack, StackConfig
from edgetally.verdict import compare
from tests.helpers import SAMPLE_ELECTION, run_cli, wait_until
from tests.support.postgres import PG_ADMIN_URL, require_server

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
def postgres_admin() -> str:
    return require_server(PG_ADMIN_URL)


@pytest.fixture
def stack(tmp_path: Path, postgres_admin: str) -> Iterator[Stack]:
    made = Stack(
        StackConfig(
            workdir=tmp_path / "stack",
            election_file=SAMPLE_ELECTION,
            seed=17,
            batches_per_device=6,
            devices=0,  # every registered device: the audit wants a final batch from each
            rate=60.0,  # about 9 s of sending: the kill lands mid-run even on a busy machine
            resend_after=1.0,
            fleet_timeout=150.0,
            embedded_brokers=False,
            workers=3,
            postgres_admin_url=postgres_admin,
        )
    )
    yield made
    made.stop()  # drops the stack's database
    for broker in (made.edge, made.cloud_broker):
        broker.kill()


def _ledger(stack: Stack) -> int:
    """Ledger rows, read straight from PostgreSQL (the CLI's start-up would blur the kill point)."""
    engine = make_engine(stack.db_url, create=False, writer=False)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(models.ledger)).scalar_one())
    finally:
        engine.dispose()


def _tails(stack: Stack) -> str:
    parts = [f"--- {c.name}:\n{c.tail()}" for c in (stack.fleet, stack.gateway, *stack.clouds)]
    return "\n".join(parts)


def test_three_workers_one_sigkilled_for_good_give_exact_totals_and_a_clean_audit(
    stack: Stack,
) -> None:
    stack.start()
    expected = stack.expected()
    stack.start_fleet()
    at_kill = wait_until(
        lambda: (n := _ledger(stack)) >= expected.batches // 4 and n, 60, "a quarter in the ledger"
    )
    stack.clouds[1].kill()  # never restarted

    code = stack.fleet.wait(timeout=170)
    assert code == 0, f"fleet exited {code}\n{_tails(stack)}"  # every device confirmed
    assert at_kill < expected.batches, "the run was over before the kill: it proved nothing"
    wait_until(lambda: _ledger(stack) >= expected.batches, 30, "every batch in the ledger")
    wait_until(
        lambda: (s := stack.buffer_stats()["states"])["pending"] + s["inflight"] == 0,
        30,
        "gateway buffer drained",
    )
    verdict = compare(
        stack.registry.election,
        expected,
        stack.results(),
        stack.fleet_summary(),
        stack.buffer_stats(),
    )
    assert verdict.ok, verdict.to_mapping()

    # Our own checks, whatever the audit says: one ledger row per key, every device complete.
    engine = make_engine(stack.db_url, create=False, writer=False)
    try:
        lc, dc = models.ledger.c, models.devices.c
        with engine.connect() as conn:
            repeated = conn.execute(
                select(lc.device, lc.seq).group_by(lc.device, lc.seq).having(func.count() > 1)
            ).all()
            rows = conn.execute(select(func.count()).select_from(models.ledger)).scalar_one()
            incomplete = conn.execute(
                select(dc.device).where(
                    dc.device.in_(stack.device_ids),
                    (dc.contiguous_seq != stack.config.batches_per_device)
                    | (dc.final_seq != stack.config.batches_per_device),
                )
            ).all()
    finally:
        engine.dispose()
    assert repeated == []
    assert rows == expected.batches
    assert incomplete == []

    # AUDIT (issue 4 item 4): `edgetally cloud audit` re-verifies every signature and chain,
    # looks for gaps and recomputes every tally from the ledger; exit 0 only if all hold.
    audit = run_cli(
        "--log-level", "WARNING", "cloud", "audit", "--db", stack.db_url,
        "--keys", str(stack.keys), "--json", check=False,
    )  # fmt: skip
    assert audit.returncode == 0, f"audit failed:\n{audit.stdout}\n{audit.stderr}"
    assert json.loads(audit.stdout)["ok"] is True
