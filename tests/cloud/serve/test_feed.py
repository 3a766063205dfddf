"""`edgetally cloud publish`: a static, versioned feed (cloud/serve/feed.py) from a real cloud
database, read as a CDN's readers would: every version complete when the pointer names it,
the figures those of `cloud results`, old versions pruned, and `cloud serve --feed` serving it."""

from __future__ import annotations

import json
import signal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.ledger.ledger import Ledger
from tests.cloud.results_support import fill
from tests.cloud.support import Envelopes
from tests.helpers import run_cli, start_cli, wait_until

TIMEOUT_S = 20


def _results(db_url: str, unit: str | None = None) -> dict[str, Any]:
    args = ["cloud", "results", "--db", db_url, "--json", *(["--unit", unit] if unit else [])]
    found: dict[str, Any] = json.loads(run_cli(*args).stdout)
    return found


def _read_version(out: Path) -> tuple[int, dict[str, Any]]:
    """What a reader does: the pointer, then that version's summary."""
    version = int((out / "current_ver.txt").read_text())
    summary: dict[str, Any] = json.loads((out / "v" / str(version) / "summary.json").read_text())
    return version, summary


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_published_version_holds_every_units_figures_and_is_not_written_twice(
    db_url: str, ledger: Ledger, envelopes: Envelopes, tmp_path: Path
) -> None:
    devices = list(envelopes.election.devices)
    fill(ledger, envelopes, devices[:20])
    out = tmp_path / "feed"
    assert "published 1 new version(s)" in run_cli("cloud", "publish", "--db", db_url, "--out", str(out)).stdout
    version, summary = _read_version(out)
    root = _results(db_url)
    assert summary["results"] == root and summary["version"] == version
    assert summary["election"]["id"] == envelopes.election.id
    county = root["children"][0]["id"]
    assert json.loads((out / "v" / str(version) / "units" / f"{county}.json").read_text()) == _results(db_url, county)
    assert len(list((out / "v" / str(version) / "units").iterdir())) == len(envelopes.election.units)
    nist = json.loads((out / "v" / str(version) / "nist-1500-100.json").read_text())
    exported = json.loads(run_cli("cloud", "export", "--db", db_url, "--format", "nist-1500-100").stdout)
    assert {k: v for k, v in nist.items() if k != "GeneratedDate"} == {k: v for k, v in exported.items() if k != "GeneratedDate"}
    csv_text = (out / "v" / str(version) / "results.csv").read_text()
    assert csv_text.splitlines() == run_cli("cloud", "export", "--db", db_url, "--format", "csv").stdout.splitlines()
    again = run_cli("cloud", "publish", "--db", db_url, "--out", str(out)).stdout
    assert "published 0 new version(s)" in again and _read_version(out)[0] == version

    for chunk in (devices[20:40], devices[40:60], devices[60:]):
        fill(ledger, envelopes, chunk)
        run_cli("cloud", "publish", "--db", db_url, "--out", str(out), "--keep", "2")
    newest, summary = _read_version(out)
    assert newest > version and summary["results"] == _results(db_url)
    assert len([p for p in (out / "v").iterdir() if p.name.isdigit()]) == 2  # the older ones pruned
    assert not [p for p in (out / "v").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_reader_never_finds_a_half_written_version_while_the_feed_keeps_publishing(
    db_url: str, ledger: Ledger, envelopes: Envelopes, tmp_path: Path
) -> None:
    out = tmp_path / "feed"
    log = tmp_path / "publish.log"
    proc = start_cli("cloud", "publish", "--db", db_url, "--out", str(out), "--every", "0.05", "--keep", "4", log=log)
    try:
        wait_until(lambda: (out / "current_ver.txt").exists() or proc.poll() is not None, TIMEOUT_S, "the first version")
        seen: set[int] = set()
        units = list(envelopes.election.units)

        def checked_read() -> int:
            """Read as a reader would, asserting that the version named is whole."""
            version, summary = _read_version(out)
            assert summary["version"] == version
            for unit in units:
                json.loads((out / "v" / str(version) / "units" / f"{unit}.json").read_text())
            seen.add(version)
            return version

        def newer(than: int) -> bool:
            return checked_read() > than

        for device in list(envelopes.election.devices)[:30]:  # one device per commit: many versions
            before = checked_read()
            fill(ledger, envelopes, [device])
            wait_until(partial(newer, before), TIMEOUT_S, "the next version", interval=0.002)
        final = _results(db_url)
        wait_until(lambda: _read_version(out)[1]["results"] == final, TIMEOUT_S, "the final version published")
        assert len(seen) > 30  # a new version after every commit, each read while the next was written
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT_S)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cloud_serve_serves_the_feed_as_static_files(db_url: str, ledger: Ledger, envelopes: Envelopes, tmp_path: Path) -> None:
    fill(ledger, envelopes, list(envelopes.election.devices)[:10])
    out = tmp_path / "feed"
    run_cli("cloud", "publish", "--db", db_url, "--out", str(out))
    ready = tmp_path / "ready"
    proc = start_cli("cloud", "serve", "--db", db_url, "--port", "0", "--feed", str(out), "--ready-file", str(ready), log=tmp_path / "serve.log")
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, TIMEOUT_S, "the service ready")
        base = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
        pointer = httpx.get(f"{base}/feed/current_ver.txt", timeout=TIMEOUT_S).text.strip()
        summary = httpx.get(f"{base}/feed/v/{pointer}/summary.json", timeout=TIMEOUT_S).json()
        assert summary["results"] == httpx.get(f"{base}/api/results", timeout=TIMEOUT_S).json()
    finally:
        proc.kill()
        proc.wait(TIMEOUT_S)
    missing = run_cli("cloud", "serve", "--db", db_url, "--feed", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 1 and "no such directory" in missing.stderr
