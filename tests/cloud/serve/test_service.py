"""`edgetally cloud serve` as a real process over a real cloud database (SQLite and PostgreSQL)
filled by the cloud's own ledger: every unit's JSON equals `cloud results` for that unit, ETags
give 304s, SSE pushes each change with a rising version, and SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from cloud.ledger.ledger import Ledger
from cloud.results.results import load_results
from tests.cloud.results_support import fill
from tests.cloud.support import Envelopes
from tests.helpers import run_cli, start_cli, wait_until

TIMEOUT_S = 20


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.log = proc, log
        self.base = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.base, timeout=TIMEOUT_S)

    def get(self, path: str, **headers: str) -> httpx.Response:
        return self.http.get(path, headers=headers)


@pytest.fixture
def served(db_url: str, ledger: Ledger, tmp_path: Path) -> Iterator[Served]:
    ready = tmp_path / "serve.ready"
    log = tmp_path / "serve.log"
    proc = start_cli("cloud", "serve", "--db", db_url, "--port", "0", "--poll", "0.1", "--ready-file", str(ready), log=log)
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, TIMEOUT_S, "the results service ready")
        assert proc.poll() is None, log.read_text()
        made = Served(proc, int(json.loads(ready.read_text())["port"]), log)
        yield made
        made.http.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT_S)


def _halves(envelopes: Envelopes) -> tuple[list[str], list[str]]:
    devices = list(envelopes.election.devices)
    return devices[: len(devices) // 2], devices[len(devices) // 2 :]


def test_every_unit_is_served_as_cloud_results_reads_it_with_an_etag(
    served: Served, ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    first, _ = _halves(envelopes)
    fill(ledger, envelopes, first)
    expected = load_results(engine).to_mapping()
    wait_until(lambda: served.get("/api/results").json()["batches"] == expected["batches"], TIMEOUT_S, "the service caught up")
    root = served.get("/api/results")
    assert root.json() == expected
    some_precinct = next(p for p in envelopes.election.units.values() if p.kind == "precinct")
    for unit in [*(c["id"] for c in expected["children"]), some_precinct.id]:
        assert served.get(f"/api/units/{unit}").json() == load_results(engine, unit_id=unit).to_mapping(), unit
    again = served.get("/api/results", **{"If-None-Match": root.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert "GMT" in root.headers["last-modified"]
    missing = served.get("/api/units/atlantis")
    assert missing.status_code == 404 and "has no reporting unit 'atlantis'" in missing.json()["error"]


def _read_events(served: Served, into: queue.Queue[dict[str, Any]]) -> None:
    """Parse the SSE stream into ``into`` until it ends (the server stops) or stays silent."""
    with httpx.stream("GET", f"{served.base}/events", timeout=TIMEOUT_S) as stream:
        event: dict[str, Any] = {}
        for line in stream.iter_lines():
            if not line:
                if "event" in event:
                    into.put(event)
                event = {}
            elif line.startswith(("event:", "id:", "data:")):
                name, _, value = line.partition(":")
                event[name] = value.strip()


def test_subscribers_get_each_change_with_a_rising_version_and_the_final_figures(
    served: Served, ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    first, second = _halves(envelopes)
    fill(ledger, envelopes, first)
    wait_until(lambda: served.get("/api/results").json()["batches"] > 0, TIMEOUT_S, "the first half served")
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    reader = threading.Thread(target=_read_events, args=(served, events), daemon=True)
    reader.start()
    hello = events.get(timeout=TIMEOUT_S)
    assert hello["event"] == "version"
    assert "edgetally_sse_clients 1" in served.get("/metrics").text

    fill(ledger, envelopes, second)
    final = load_results(engine)
    versions = [int(hello["id"])]
    while True:
        change = events.get(timeout=TIMEOUT_S)
        assert change["event"] == "change"
        data = json.loads(change["data"])
        assert data["version"] == int(change["id"]) > versions[-1]
        versions.append(data["version"])
        if data["units"].get(final.unit.id, {}).get("batches") == final.batches:
            break
    root = data["units"][final.unit.id]
    assert root["ballots"] == final.ballots and root["contests"] == final.contests
    assert root["precincts_reporting"] == final.rollup.precincts_reporting
    assert served.get("/api/version").json()["version"] == versions[-1]

    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(TIMEOUT_S) == 0, served.log.read_text()
    reader.join(TIMEOUT_S)
    assert not reader.is_alive()  # the stream ended with the server


def test_serve_refuses_a_database_that_does_not_exist(tmp_path: Path) -> None:

    proc = run_cli("cloud", "serve", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--port", "0", check=False, timeout=60)
    assert proc.returncode == 1
    assert "none.db" in proc.stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_audit_verdict_is_served_with_keys_and_refused_with_a_reason_without(
    served: Served, db_url: str, ledger: Ledger, envelopes: Envelopes, keys_dir: Path, tmp_path: Path
) -> None:
    first, _ = _halves(envelopes)
    fill(ledger, envelopes, first)
    without = served.get("/api/audit")
    assert without.status_code == 404 and "--keys" in without.json()["error"]
    ready = tmp_path / "audit.ready"
    proc = start_cli("cloud", "serve", "--db", db_url, "--port", "0", "--keys", str(keys_dir), "--ready-file", str(ready), log=tmp_path / "audit.log")
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, TIMEOUT_S, "the audited service ready")
        verdict = httpx.get(f"http://127.0.0.1:{json.loads(ready.read_text())['port']}/api/audit", timeout=TIMEOUT_S).json()
        expected = json.loads(run_cli("cloud", "audit", "--db", db_url, "--keys", str(keys_dir), "--json", check=False).stdout)
        assert verdict["ok"] is expected["ok"] is False  # half the devices have no final batch yet
        assert [c["name"] for c in verdict["checks"]] == [c["name"] for c in expected["checks"]]
        assert verdict["version"] >= 1 and "audited_at" in verdict
    finally:
        proc.kill()
        proc.wait(TIMEOUT_S)


def test_the_listening_socket_says_tcp_so_every_connection_has_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose protocol is IPPROTO_TCP; with Nagle on, a
    keep-alive client waited 40 ms per request (the headers and body are two writes)."""
    import socket

    from cloud.serve.server import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
