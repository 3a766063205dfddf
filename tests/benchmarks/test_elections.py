"""`scripts/bench elections` (benchmarks/elections.py): its totals check is what makes its rate
mean anything, so it must refuse a database whose figures differ from what the devices sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from benchmarks import elections as bench
from cloud import models
from cloud.db import make_engine, upgrade
from cloud.elections import Elections, served_from
from cloud.ledger.ledger import Inbound, Ledger

pytestmark = pytest.mark.integration


def test_the_benchmark_runs_both_shapes_and_writes_its_ratio(tmp_path: Path) -> None:
    out = tmp_path / "ratios.json"
    bench.main(["--elections", "3", "--devices", "2", "--batches", "2", "--repeat", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["ratios"]["elections.many_vs_single_ratio"] > 0
    assert data["figures"]["many_rate"] > 0 and data["figures"]["single_rate"] > 0


def test_the_totals_check_refuses_one_election_whose_tally_is_off(tmp_path: Path) -> None:
    shape = bench.make_shape("many", tmp_path, 2, 2, 2)
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = make_engine(db)
    upgrade(engine)
    ledger = Ledger(engine, Elections([served_from(k) for _, k in shape.elections]), max_payload_bytes=65536)
    ledger.prepare()
    ledger.record([Inbound(t, p, datetime.now(UTC)) for t, p in shape.envelopes])
    bench.check_totals(db, shape)  # as sent: passes
    victim = shape.elections[1][0].id
    with engine.begin() as conn:
        conn.execute(update(models.tallies).where(models.tallies.c.election == victim).values(votes=models.tallies.c.votes + 1))
    engine.dispose()
    with pytest.raises(RuntimeError, match=victim):
        bench.check_totals(db, shape)
