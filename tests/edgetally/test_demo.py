"""`edgetally demo` end to end, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import alive, descendants_of, edgetally_cmd, run_cli, wait_until

pytestmark = pytest.mark.integration


def _verdict(stdout: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(stdout[stdout.index('{\n  "ok"') :])
    return data


def test_demo_with_a_cloud_outage_prints_a_matching_verdict(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--devices", "16", "--batches", "3", "--outage", "2", "--rate", "20",
        "--workdir", str(tmp_path / "demo"), "--json",
        timeout=200,
    )
    assert "VERDICT: MATCH" in result.stdout
    assert "wire: locked down" in result.stdout
    assert "cloud broker SIGKILLed for 2s" in result.stdout
    verdict = _verdict(result.stdout)
    assert verdict["ok"] is True and verdict["mismatches"] == []


def test_demo_runs_on_the_embedded_broker_in_plain_mode_when_asked(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--devices", "8", "--batches", "2", "--embedded-brokers", "--plain",
        "--workdir", str(tmp_path / "demo"), "--json",
        timeout=200,
    )  # fmt: skip
    assert "brokers: embedded amqtt" in result.stdout
    assert "wire: PLAIN" in result.stdout
    assert _verdict(result.stdout)["ok"] is True


def test_demo_refuses_the_embedded_broker_without_plain_naming_the_flag(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--devices", "4", "--batches", "1", "--embedded-brokers", "--workdir", str(tmp_path / "demo"),
        timeout=100, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "the embedded broker speaks plain MQTT only" in result.stdout + result.stderr
    assert "--plain" in result.stdout + result.stderr


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_process_the_demo_started(tmp_path: Path, sig: signal.Signals) -> None:
    workdir = tmp_path / "demo-interrupted"
    demo = subprocess.Popen(
        edgetally_cmd("demo", "--devices", "20", "--batches", "50", "--rate", "5", "--workdir", str(workdir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: (workdir / "fleet.log").exists(), 60, "the demo to start its fleet")
        assert len(_processes_mentioning(str(workdir))) >= 5  # 2 brokers, gateway, cloud, fleet
        started = descendants_of(demo.pid)
        demo.send_signal(sig)
        assert demo.wait(60) == 130  # interrupted, whichever signal: the same cleanup ran
        assert not [pid for pid in started if alive(pid)]
        assert _processes_mentioning(str(workdir)) == []  # no broker left holding its port
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)


def test_demo_serve_shows_the_page_with_the_verdicts_totals_until_ctrl_c(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-serve"
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen(
            edgetally_cmd("demo", "--devices", "8", "--batches", "2", "--serve", "--serve-port", "0", "--workdir", str(workdir)),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    try:
        wait_until(lambda: "serving until Ctrl-C" in out.read_text() or demo.poll() is not None, 200, "the verdict and the page")
        text = out.read_text()
        assert "VERDICT: MATCH" in text
        assert "shows the same totals as the verdict (MATCH)" in text
        url = text[text.index("live results page: http://") + len("live results page: ") :].split()[0]
        import urllib.request

        with urllib.request.urlopen(f"{url}api/results", timeout=10) as reply:
            assert json.loads(reply.read())["batches"] == 16
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert b"Live results" in reply.read()
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.wait(60) == 0, out.read_text()
        assert _processes_mentioning(str(workdir)) == []
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(60)
