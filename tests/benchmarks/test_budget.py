"""The CPU budget (benchmarks/budget.py): its arithmetic, that "of which" rows are not counted
twice, and a small real run of its in-process stages on the sample election's envelopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._budget_run import PROCESS_STAGES, ProcessRun, proc_cpu_s
from benchmarks._budget_stages import InProcess, measure_in_process
from benchmarks.budget import assemble, ceiling
from benchmarks.cloud import fleet_envelopes
from protocol import Election, Registry


def test_the_ceiling_is_cores_over_cpu_per_batch() -> None:
    assert ceiling(1000.0, 2) == pytest.approx(2000.0)
    assert ceiling(250.0, 1) == pytest.approx(4000.0)
    with pytest.raises(ValueError):
        ceiling(0.0, 2)


def test_the_sum_counts_each_process_once_and_receipts_per_batch() -> None:
    run = ProcessRun(1000, wall_s=2.0, receipts=250, cpu_s=dict.fromkeys(PROCESS_STAGES, 0.1))  # 100 µs each
    budget = assemble(InProcess(sign_us=40, gateway_verify_us=90, cloud_verify_us=95, receipt_us=120), [run])
    # six process rows of 100 µs + sign 40 + 0.25 receipts x 120 µs; the verify rows are inside
    assert budget.total_us == pytest.approx(600 + 40 + 30)
    assert budget.ceiling == pytest.approx(2e6 / 670)
    ratios = budget.ratios()
    assert ratios["budget.gateway_verify_of_process"] == pytest.approx(0.9)
    assert ratios["budget.run_rate_ceiling_ratio"] == pytest.approx(500 / budget.ceiling)
    assert sum(v for k, v in ratios.items() if k.startswith("budget.share_")) == pytest.approx(1.0)
    assert budget.to_json()["of_which_us"] == {"gateway_verify": 90, "cloud_verify": 95}


def test_process_cpu_is_read_from_proc() -> None:
    import os

    assert proc_cpu_s(os.getpid()) > 0


def test_in_process_stages_run_on_real_envelopes(sample_election: Election, keys_dir: Path, registry: Registry) -> None:
    envelopes = fleet_envelopes(sample_election, keys_dir, 40, seed=3)
    assert len(envelopes) == 40
    figures = measure_in_process(sample_election, keys_dir, registry, envelopes, rounds=1)
    assert figures.sign_us > 0 and figures.gateway_verify_us > 0
    assert figures.cloud_verify_us > 0 and figures.receipt_us > 0
