"""Helpers for the results, windows and audit tests: a ledger filled from the deterministic
generator, what each unit must hold (from ``devices.generator.expected_totals``), hand edits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from cloud.ledger.ledger import Inbound, Ledger
from devices.generator import expected_totals
from protocol import Election
from tests.cloud.support import SEED, Envelopes

BATCHES = 4
GROUP = 97  # groups that cut across devices


def fill(
    ledger: Ledger,
    envelopes: Envelopes,
    devices: Sequence[str] | None = None,
    batches: int = BATCHES,
    *,
    skip: Sequence[tuple[str, int]] = (),
) -> list[Inbound]:
    """Record every batch of ``devices`` (default: all) but the (device, seq) in ``skip``,
    interleaved across devices as a fleet sends them, in groups of :data:`GROUP`."""
    chosen = list(devices if devices is not None else envelopes.election.devices)
    bodies = {d: envelopes.bodies(d, batches) for d in chosen}
    messages = [
        envelopes.inbound(bodies[d][seq - 1])
        for seq in range(1, batches + 1)
        for d in chosen
        if (d, seq) not in skip
    ]
    for start in range(0, len(messages), GROUP):
        ledger.record(messages[start : start + GROUP])
    return messages


def devices_of(election: Election, unit: str) -> list[str]:
    return [d for u in election.walk(unit) for d in u.devices]


def expected_for(
    election: Election, unit: str, devices: Sequence[str], batches: int = BATCHES
) -> dict[str, Any]:
    """What ``unit`` must show once ``devices`` sent all their batches."""
    mine = [d for d in devices_of(election, unit) if d in set(devices)]
    return expected_totals(election, SEED, batches, mine).to_mapping()


def sql(engine: Engine, statement: str, **params: Any) -> int:
    """Alter the database by hand, as someone with write access could; rows affected."""
    with engine.begin() as conn:
        return int(conn.execute(text(statement), params).rowcount)


def scalar(engine: Engine, statement: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(statement), params).scalar_one()
