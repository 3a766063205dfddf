"""`edgetally broker --kind nats --cluster 3`: a locked JetStream cluster from the command line,
stopped whole by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cloud.support import Envelopes, Publisher
from tests.helpers import run_cli, start_cli, wait_until
from tests.support import wire
from tests.support.nats import require_nats

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _nats_server() -> None:
    require_nats()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")


def test_broker_kind_nats_runs_a_locked_three_node_cluster_and_sigterm_stops_every_node(
    tmp_path: Path, keys_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    workdir = tmp_path / "nats"
    proc = start_cli(
        "broker", "--kind", "nats", "--cluster", "3", "--pki", str(wire.current().pki), "--keys", str(keys_dir),
        "--dir", str(workdir), *(arg for g in wire.GATEWAYS for arg in ("--gateway", g)), log=tmp_path / "broker.log",
    )  # fmt: skip
    processes.append(proc)
    info_path = workdir / "cluster.json"
    wait_until(lambda: info_path.exists() or proc.poll() is not None, 60, "the cluster's addresses")
    assert proc.poll() is None, (tmp_path / "broker.log").read_text()
    info = json.loads(info_path.read_text())
    try:
        _check_and_stop(proc, info, workdir, tmp_path, keys_dir)
    finally:  # the nodes run in sessions of their own: a failed test must not leave them behind
        for pid in info["pids"]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _check_and_stop(proc: subprocess.Popen[bytes], info: dict[str, list], workdir: Path, tmp_path: Path, keys_dir: Path) -> None:
    assert len(info["pids"]) == 3 and all(_alive(p) for p in info["pids"])
    assert all(url.startswith("mqtts://127.0.0.1:") for url in info["mqtt"])
    assert all(url.startswith("tls://127.0.0.1:") for url in info["jetstream"])
    for name in ("n1", "n2", "n3"):
        assert (workdir / f"{name}.conf").stat().st_mode & 0o777 == 0o600  # holds the route password
    # A gateway forwards through any node.
    port = int(info["mqtt"][2].rsplit(":", 1)[1])
    wire.current().kinds[port] = wire.BrokerKind.CLOUD
    wire.current().locked.add(port)
    envelopes = Envelopes(keys_dir)
    publisher = Publisher(port)
    publisher.publish_all([envelopes.inbound(b) for b in envelopes.bodies(envelopes.devices(1)[0], 3)])
    publisher.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not any(_alive(p) for p in info["pids"]), "a node outlived the command"
    for name in ("n1", "n2", "n3"):  # each node took the SIGTERM itself (not a kill after a timeout)
        assert "Server Exiting" in (workdir / f"{name}.log").read_text(), name
    assert "ready" in (tmp_path / "broker.log").read_text()


def test_broker_kind_nats_refuses_to_run_unlocked_without_plain(tmp_path: Path) -> None:
    result = run_cli("broker", "--kind", "nats", "--dir", str(tmp_path / "n"), check=False)
    assert result.returncode == 1
    assert "needs --pki DIR and --keys DIR" in result.stderr
