"""`scripts/bench all` (benchmarks/all.py): which benchmarks it runs, how it reads their ratios,
and that a crashed benchmark or a missing ratio fails the run by name (what CI relies on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import all as bench_all
from benchmarks._json import ratio, write_json

ROOT = Path(__file__).resolve().parents[2]


def test_every_benchmark_module_runs_in_all_with_expected_ratios() -> None:
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")} - {"all"}
    assert set(bench_all.BENCHMARKS) == modules
    assert set(bench_all.EXPECTED) == modules
    assert all(bench_all.EXPECTED[name] for name in modules)


def test_a_missing_ratio_is_a_problem_naming_it() -> None:
    collected = bench_all.Collected(ratios={"cloud.ingest_ratio_1worker": 0.2}, seconds={"cloud": 3.0})
    expected = {"cloud": ("cloud.ingest_ratio_1worker", "cloud.ingest_ratio_1worker_bundles")}
    assert bench_all.problems(collected, expected) == ["missing ratio cloud: cloud.ingest_ratio_1worker_bundles"]


def test_a_crashed_benchmark_is_a_problem_and_its_ratios_are_not_asked_for() -> None:
    collected = bench_all.Collected(seconds={"gateway": 1.0}, failed={"gateway": "exit 1: boom"})
    assert bench_all.problems(collected, {"gateway": ("gateway.bridge_ratio",)}) == ["gateway failed: exit 1: boom"]


def test_complete_results_have_no_problems_and_skipped_ones_are_not_missing() -> None:
    collected = bench_all.Collected(ratios={"engine.default_ledger_only_ratio": 2.7}, seconds={"engine": 2.0},
                                    skipped={"cluster": "nats-server is not installed"})  # fmt: skip
    expected = {"engine": ("engine.default_ledger_only_ratio",), "cluster": ("cluster.forward_1w_ratio_nats_r1",)}
    assert bench_all.problems(collected, expected) == []


def test_ratios_are_read_from_each_shape_of_json(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    write_json(out, {"x.a_ratio": 0.5, "x.none_ratio": ratio(1.0, 0.0)}, {"rate": 10})
    assert bench_all.ratios_of("x", json.loads(out.read_text())) == {"x.a_ratio": 0.5}
    cluster = {"cluster.forward_1w_mosquitto": 5000.0, "cluster.forward_1w_ratio_nats_r1": 0.8, "cluster.lost_ratio_nats_r1": None}
    assert bench_all.ratios_of("cluster", cluster) == {"cluster.forward_1w_ratio_nats_r1": 0.8}
    rules = {"results": {"all five rules together": {"us_per_message": 30.0},
                         "hand-written per contest": {"us_per_message": 10.0},
                         "orjson.loads(body)": {"us_per_message": 3.0}}}  # fmt: skip
    assert bench_all.ratios_of("rules", rules) == pytest.approx(
        {"rules.all_five_hand_written_ratio": 3.0, "rules.all_five_decode_ratio": 10.0}
    )


def test_the_pipeline_gets_the_budgets_ceiling_and_quick_sizes(tmp_path: Path) -> None:
    argv = bench_all.command("pipeline", True, tmp_path / "p.json", 2155.3)
    assert argv[-4:] == ["--ceiling", "2155.3", "--json", str(tmp_path / "p.json")]
    assert "--batches-per-device" in argv
    assert bench_all.command("rules", False, tmp_path / "r.json", 0.0)[-1] == "--json"  # rules prints its JSON


def test_an_unknown_benchmark_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown benchmark"):
        bench_all.main(["--only", "nosuch"])
