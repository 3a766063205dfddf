"""The results service over a real locked-down stack: its event stream while a fleet sends, and
the live results page (cloud/serve/static/) in real headless Chromium (Debian's `chromium`,
driven by Playwright with ``executable_path``) over a real locked-down stack: it is open while
the fleet sends, ends showing exactly what the cloud counted (every contest's votes, precincts
reporting, turnout, ballots; then one county and one precinct after drilling down), and when the
service is stopped it shows the banner, then recovers by itself when it is back.
Screenshots are kept in build/test-artifacts/ (or $EDGETALLY_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgetally.brokers import free_port
from edgetally.stack import Stack, StackConfig
from tests.helpers import REPO, SAMPLE_ELECTION, run_cli, start_cli, wait_until

pytestmark = pytest.mark.integration
TIMEOUT_S = 60
DEVICES, BATCHES = 12, 4


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium: scripts/test installs Debian's chromium (as root, with apt-get)")
        pytest.skip("no chromium on PATH (apt-get install chromium; scripts/test does it as root)")
    return found


def _artifacts() -> Path:
    where = Path(os.environ.get("EDGETALLY_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


class Service:
    """`edgetally cloud serve` on a fixed port, so that it comes back where the page expects it."""

    def __init__(self, db_url: str, workdir: Path, keys: Path | None = None) -> None:
        self.db_url, self.workdir, self.port, self.keys = db_url, workdir, free_port(), keys
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        ready = self.workdir / "serve.ready"
        ready.unlink(missing_ok=True)
        args = ["cloud", "serve", "--db", self.db_url, "--port", str(self.port), "--poll", "0.1", "--ready-file", str(ready)]
        args += ["--keys", str(self.keys)] if self.keys is not None else []
        self.proc = proc = start_cli(*args, log=self.workdir / "serve.log")
        wait_until(lambda: ready.exists() or proc.poll() is not None, TIMEOUT_S, "the results service ready")
        assert proc.poll() is None, (self.workdir / "serve.log").read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(TIMEOUT_S) == 0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    made = Stack(
        StackConfig(
            workdir=tmp_path / "stack", election_file=SAMPLE_ELECTION, seed=5, batches_per_device=BATCHES,
            devices=DEVICES, rate=8.0, fleet_timeout=150.0, embedded_brokers=False,
        )
    )  # fmt: skip
    yield made
    made.stop()
    for broker in (made.edge, made.cloud_broker):
        broker.kill()


def _results(stack: Stack, unit: str | None = None) -> dict[str, Any]:
    args = ["cloud", "results", "--db", stack.db_url, "--json", *(["--unit", unit] if unit else [])]
    found: dict[str, Any] = json.loads(run_cli(*args).stdout)
    return found


def _shown(page: Any) -> dict[str, Any]:
    """What the page shows for the unit on screen, read from the DOM."""
    votes = page.eval_on_selector_all(
        "[data-contest]",
        """cards => Object.fromEntries(cards.map(c => [c.dataset.contest, Object.fromEntries(
             [...c.querySelectorAll('[data-choice]')].map(x => [x.dataset.choice, Number(x.dataset.votes)]))]))""",
    )
    return {
        "unit": page.inner_text("#unit-name"),
        "contests": votes,
        "precincts": page.inner_text("#precincts"),
        "ballots": page.inner_text("#ballots"),
        "turnout": page.inner_text("#turnout"),
    }


def _as_page_shows(results: dict[str, Any]) -> dict[str, Any]:
    turnout = results["turnout"]
    return {
        "unit": results["unit"]["name"],
        "contests": results["contests"],
        "precincts": f"{results['precincts_reporting']:,} of {results['precincts_total']:,}",
        "ballots": f"{results['ballots']:,}",
        "turnout": "-" if turnout is None else f"{100 * turnout:.1f}%",
    }


def _wait_batches(page: Any, batches: int) -> None:
    page.wait_for_function(f"document.body.dataset.shownBatches === '{batches}'", timeout=TIMEOUT_S * 1000)


def test_the_live_page_follows_the_count_to_the_end_drills_down_and_survives_a_stream_cut(
    stack: Stack, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    artifacts = _artifacts()
    stack.start()
    service = Service(stack.db_url, tmp_path, stack.keys)
    service.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(locale="en-US", viewport={"width": 390, "height": 1400})  # a phone's width
            page.goto(service.url)
            page.wait_for_function("document.body.dataset.version !== undefined", timeout=TIMEOUT_S * 1000)
            stack.start_fleet()
            assert stack.fleet.wait(timeout=170) == 0, stack.fleet.tail()
            expected = stack.expected()
            wait_until(lambda: _results(stack)["batches"] == expected.batches, TIMEOUT_S, "every batch counted")
            _wait_batches(page, expected.batches)
            final = _results(stack)
            assert final["contests"] == expected.to_mapping()["contests"]  # what the page must end on: the verdict
            assert _shown(page) == _as_page_shows(final)
            audit = json.loads(run_cli("cloud", "audit", "--db", stack.db_url, "--keys", str(stack.keys), "--json", check=False).stdout)
            version = json.loads(urllib.request.urlopen(f"{service.url}api/version", timeout=10).read())["version"]
            audited = f"at version {version:,}"  # the audit of the final state, not an earlier one
            page.wait_for_function(f"document.getElementById('audit').textContent.includes('{audited}')", timeout=TIMEOUT_S * 1000)
            shown_audit = page.inner_text("#audit")
            assert ("fail" in shown_audit) is (not audit["ok"]), shown_audit  # 12 of 91 devices: finals missing
            page.screenshot(path=str(artifacts / "live-page-final.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})
            page.screenshot(path=str(artifacts / "live-page-desktop.png"), full_page=True)

            county = next(c for c in final["children"] if c["batches"])
            page.click(f"tr[data-unit='{county['id']}']")
            page.wait_for_function(f"document.body.dataset.unit === '{county['id']}'", timeout=TIMEOUT_S * 1000)
            county_results = _results(stack, county["id"])
            assert _shown(page) == _as_page_shows(county_results)
            precinct = next(c for c in county_results["children"] if c["batches"])
            page.click(f"tr[data-unit='{precinct['id']}']")
            page.wait_for_function(f"document.body.dataset.unit === '{precinct['id']}'", timeout=TIMEOUT_S * 1000)
            assert _shown(page) == _as_page_shows(_results(stack, precinct["id"]))
            assert page.url.endswith(f"#/unit/{precinct['id']}")  # a URL per unit

            service.stop()
            page.wait_for_selector("#banner", state="visible", timeout=TIMEOUT_S * 1000)
            page.screenshot(path=str(artifacts / "live-page-stream-cut.png"), full_page=True)
            service.start()
            page.wait_for_selector("#banner", state="hidden", timeout=TIMEOUT_S * 1000)
            assert page.inner_text("#live") == "live"
            assert _shown(page) == _as_page_shows(_results(stack, precinct["id"]))
            browser.close()
    finally:
        if service.proc is not None and service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(TIMEOUT_S)


def test_events_follow_the_real_pipeline_with_rising_versions_to_the_expected_totals(stack: Stack, tmp_path: Path) -> None:
    """Subscribed while a fleet sends through the locked stack: every change event's version is
    higher than the last, and the last one's figures are `devices expected`'s."""
    import httpx

    stack.start()
    service = Service(stack.db_url, tmp_path)
    service.start()
    try:
        expected = stack.expected()
        root_id = stack.registry.election.root
        changes: list[dict[str, Any]] = []
        with httpx.stream("GET", f"{service.url}events", timeout=TIMEOUT_S) as stream:
            stack.start_fleet()
            event: dict[str, str] = {}
            for line in stream.iter_lines():  # bounded: the stream's read timeout, and the break below
                if line:
                    name, _, value = line.partition(":")
                    event[name] = value.strip()
                    continue
                if event.get("event") == "change":
                    changes.append(json.loads(event["data"]))
                    root = changes[-1]["units"].get(root_id, {})
                    if root.get("batches") == expected.batches:
                        break
                event = {}
        versions = [c["version"] for c in changes]
        assert versions == sorted(set(versions)) and len(versions) >= 2, versions
        final = changes[-1]["units"][root_id]
        assert final["ballots"] == expected.ballots
        assert final["contests"] == expected.to_mapping()["contests"]
        assert stack.fleet.wait(timeout=170) == 0, stack.fleet.tail()
    finally:
        service.stop()
