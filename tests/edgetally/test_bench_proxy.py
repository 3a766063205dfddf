"""Smoke test of `scripts/bench proxy` (benchmarks/proxy.py) with tiny sizes: it runs, prints its
table, and its own checks (bandwidth under the limit, latency bound, every client cut) hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_proxy_benchmark_runs_with_tiny_sizes() -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.proxy",
            "--messages", "300", "--rounds", "1",
            "--small-window-messages", "50",
            "--bandwidth", "200000", "--bandwidth-messages", "100",
            "--connections", "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Fault proxy benchmark" in out
    for row in (
        "publisher through the proxy, pass",
        "latency 5 ms",
        "bandwidth 200,000 B/s",
        "connect 20 through the proxy",
        "proxy RSS per connection",
        "cut all 20",
    ):
        assert row in out, out
