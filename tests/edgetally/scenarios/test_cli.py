"""`edgetally scenario list|run` as a user runs them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from devices.state import StateStore
from tests.helpers import alive, descendants_of, run_cli, start_cli, wait_until


def test_list_shows_every_shipped_scenario_with_its_faults() -> None:
    rows = json.loads(run_cli("scenario", "list", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert "uplink-outage" in by_name and "election-night" in by_name
    assert by_name["uplink-outage"]["faults"] == ["cut uplink", "restore uplink"]
    assert "long" in by_name["election-night"]["tags"]


def test_a_bad_scenario_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("topology: {devices: 4}\ntimeline:\n  - {at: 2s, cut: uplink}\n")
    proc = run_cli("scenario", "run", str(bad), "--no-live", check=False)
    assert proc.returncode == 2
    assert "bad.yaml: timeline[0]: link 'uplink' has no fault proxy" in proc.stderr
    missing = run_cli("scenario", "run", "no-such-scenario", "--no-live", check=False)
    assert missing.returncode == 2 and "no shipped scenario of that name" in missing.stderr
    too_few = run_cli("scenario", "run", "election-night", "--devices", "1", "--no-live", check=False)
    assert too_few.returncode == 2 and "--devices 1 cannot fill 2 sites" in too_few.stderr


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_run_plays_the_faults_and_writes_a_passing_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = run_cli(
        "scenario", "run", "uplink-outage", "--speed", "2", "--devices", "12", "--batches", "4",
        "--no-live", "--report", str(report),
        "--workdir", str(tmp_path / "world"), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["ok"] is True and data["scenario"] == "uplink-outage" and data["speed"] == 2.0
    assert (data["topology"]["devices"], data["topology"]["batches"]) == (12, 4)
    assert [e["what"] for e in data["events"]][:3] == ["fleets started", "cut uplink", "restore uplink"]
    assert data["verdict"]["ok"] and data["verdict"]["lost"] == []
    assert "VERDICT: PASS" in proc.stdout


def test_the_live_view_shows_components_stages_and_the_timeline(tmp_path: Path) -> None:
    from rich.console import Console

    from edgetally.scenarios.cli import _LiveView
    from edgetally.scenarios.model import shipped
    from edgetally.scenarios.runner import Event, Sample
    from edgetally.scenarios.world import World

    scenario = next(s for s in shipped() if s.name == "cloud-worker-crash")
    world = World(scenario, tmp_path / "world")  # no I/O: nothing started
    sample = Sample(
        elapsed=4.2,
        ledger=37,
        expected=120,
        backlog=5,
        peak_backlog=9,
        fleet={'edgetally_fleet_batches_total{stage="sent"}': 50.0},
        phase="timeline",
    )
    console = Console(width=120, record=True)
    console.print(_LiveView(console, scenario.name).render(sample, [Event(3.0, "kill cloud1")], world))
    text = console.export_text()
    for expected in ("cloud-worker-crash · timeline · 4.2s", "cloud1", "cloud2", "gateway1", "fleet1",
                     "sent by devices", "50", "gateway backlog", "5 (peak 9)", "37 / 120", "kill cloud1"):  # fmt: skip
        assert expected in text, (expected, text)


def test_a_wipe_deletes_a_stopped_gateways_buffer_and_refuses_a_running_one(tmp_path: Path) -> None:
    from edgetally.scenarios.model import shipped
    from edgetally.scenarios.world import World, WorldError

    world = World(next(s for s in shipped() if s.name == "rogue-client"), tmp_path / "world")
    site = world.sites[0]
    site.buffer_path.parent.mkdir(parents=True)
    files = [site.buffer_path.with_name(site.buffer_path.name + suffix) for suffix in ("", "-wal", "-shm")]
    for path in files:
        path.write_bytes(b"held batches")
    world.wipe(site.gateway)
    assert not any(path.exists() for path in files)
    site.gateway.args = ["proxy", "--listen", "0", "--target", "127.0.0.1:9"]  # any process that stays up
    site.gateway.start()
    try:
        site.gateway.wait_ready(30)
        with pytest.raises(WorldError, match="gateway1 is running: kill it before its disk is wiped"):
            world.wipe(site.gateway)
    finally:
        site.gateway.kill()


def _listen_ports(world: Path) -> list[int]:
    """The ports the world's Mosquitto brokers were told to listen on."""
    return [
        int(line.split()[1])
        for conf in world.rglob("mosquitto.conf")
        for line in conf.read_text().splitlines()
        if line.startswith("listener ")
    ]


@pytest.mark.integration
def test_sigterm_stops_a_scenario_run_and_every_process_it_started_with_their_state_saved(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    world = tmp_path / "world"
    summary = world / "site1" / "fleet-summary.json"
    proc = start_cli(
        "scenario", "run", "uplink-outage", "--devices", "12", "--batches", "50", "--no-live",
        "--workdir", str(world), log=tmp_path / "scenario.log",
    )  # fmt: skip
    processes.append(proc)
    wait_until(lambda: summary.exists() and json.loads(summary.read_text())["acked"] >= 3, 60, "the fleet publishing")
    started = descendants_of(proc.pid)
    assert len(started) >= 6  # two brokers, a proxy, a gateway, a cloud worker, a fleet (and more)
    ports = _listen_ports(world)
    assert len(ports) == 2

    proc.send_signal(signal.SIGTERM)

    assert proc.wait(30) == 130, (tmp_path / "scenario.log").read_text()[-3000:]
    assert "interrupted (SIGTERM): every process stopped" in (tmp_path / "scenario.log").read_text()
    assert not [pid for pid in started if alive(pid)]
    for port in ports:  # no broker left holding its port
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # The world was stopped, not killed: the fleet saved what the broker acknowledged, the
    # gateway's buffer is whole.
    with StateStore(world / "site1" / "fleet-state") as store:
        saved = sum(b.acked for d in store.devices() if (s := store.load(d)) is not None for b in s.sent)
    assert saved >= json.loads(summary.read_text())["acked"] >= 3
    assert run_cli("gateway", "buffer", "check", "--buffer", str(world / "site1" / "gateway-buffer.db")).returncode == 0
