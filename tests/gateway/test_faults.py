"""The test-only fault points (gateway/faults.py): off unless armed, exact hit counts, a marker,
then a thread blocked for good so that a test can SIGKILL the process right there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import faults
from gateway._exceptions import ConfigError
from tests.helpers import REPO, edgetally_cmd, wait_until


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    faults.arm_from_environment({})


def test_fault_injection_is_off_without_the_environment_variable() -> None:
    assert faults.arm_from_environment({}) is None
    assert faults._plan is None and not faults.ack_before_commit
    for point in faults.POINTS:
        faults.checkpoint(point)  # returns at once: nothing armed


def test_spec_names_points_and_the_hit_that_trips_each() -> None:
    assert faults.parse("committed:3") == {"committed": 3}
    assert faults.parse("received:40, puback:1") == {"received": 40, "puback": 1}
    assert faults.parse("acked") == {"acked": 1}


@pytest.mark.parametrize("spec", ["commited:3", "committed:0", "committed:x", ""])
def test_a_malformed_spec_is_a_config_error_naming_the_known_points(spec: str) -> None:
    with pytest.raises(ConfigError, match="EDGETALLY_FAULT"):
        faults.parse(spec)


def test_arming_describes_what_is_armed(tmp_path: Path) -> None:
    described = faults.arm_from_environment(
        {faults.FAULT_ENV: "puback:2", faults.FAULT_DIR_ENV: str(tmp_path), faults.UNSAFE_ACK_ENV: "1"}
    )
    assert described is not None
    assert "puback:2" in described and str(tmp_path) in described and "BEFORE commit" in described
    assert faults.ack_before_commit


def test_the_nth_hit_writes_a_marker_and_blocks_that_thread_for_good(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from gateway import faults\n"
        "faults.arm_from_environment()\n"
        "for i in range(5):\n"
        "    faults.checkpoint('acked')\n"  # not armed: never trips
        "    faults.checkpoint('committed')\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, faults.FAULT_ENV: "committed:3", faults.FAULT_DIR_ENV: str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        marker = faults.marker_path(tmp_path, "committed")
        wait_until(lambda: marker.exists() or proc.poll() is not None, 20, "the fault marker")
        assert proc.poll() is None, "the process went past the fault point"
        data = json.loads(marker.read_text())
        assert (data["point"], data["count"], data["pid"]) == ("committed", 3, proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    assert out.decode().split() == ["0", "1"]  # the third hit never returned


def test_gateway_refuses_to_start_with_a_malformed_fault_spec(tmp_path: Path, keys_dir: Path) -> None:
    proc = subprocess.run(
        edgetally_cmd(
            "gateway",
            "run",
            "--edge",
            "mqtt://127.0.0.1:9",
            "--cloud",
            "mqtt://127.0.0.1:9",
            "--buffer",
            str(tmp_path / "b.db"),
            "--keys",
            str(keys_dir),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, faults.FAULT_ENV: "nowhere:1"},
    )
    assert proc.returncode == 1
    assert "unknown fault point 'nowhere'" in proc.stderr
    assert not (tmp_path / "b.db").exists()
