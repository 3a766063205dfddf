"""The scenario verdict (edgetally/scenarios/checks.py) judging a real run, then copies of its
stores with what a broken system would leave: a lost batch, an altered tally, a batch still
pending in the gateway, a wrong refusal, an open gap.

One real pipeline per module (edgetally.stack: Mosquitto, gateway, cloud, a fleet with
misbehaving devices and its truth file); every altered store is a copy made with SQLite's
backup API, so each test starts from the same real files.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cloud.audit.report import CHECKS
from devices.truth import load_truth
from edgetally.scenarios.checks import (
    AUDIT,
    CONFIRMED,
    DRAIN_TIME,
    DRAINED,
    DUPLICATES,
    LEDGER,
    PEAK,
    REFUSALS,
    REPAIRS,
    TOTALS,
    judge,
)
from edgetally.scenarios.observe import (
    Observations,
    cloud_engine,
    expected_accepts,
    expected_refusals,
    read_ledger,
    read_refusals,
    undelivered,
)
from edgetally.scenarios.verdict import ScenarioVerdict
from edgetally.stack import Stack, StackConfig
from tests.helpers import SAMPLE_ELECTION, wait_until

DEVICES = 14
BATCHES = 4
BEHAVIOURS = ("tampered", "wrong_key", "after_final", "silent", "duplicate", "lossy")
NAMES = (LEDGER, CONFIRMED, TOTALS, DUPLICATES, REFUSALS, AUDIT, REPAIRS, DRAINED, DRAIN_TIME, PEAK)


@dataclass(frozen=True)
class Run:
    """What one real run left behind (the stack is stopped: its files are quiet)."""

    db: Path
    buffer: Path
    keys: Path
    truth: dict[str, Any]
    summary: dict[str, Any]
    drained_s: float
    peak: int
    live: ScenarioVerdict  # judged while the stack still ran, as the scenario runner does

    def observations(self, **changes: Any) -> Observations:
        obs = Observations(
            db_url=f"sqlite:///{self.db}",
            keys_dir=self.keys,
            buffers=(self.buffer,),
            fleet_summaries=(self.summary,),
            truth=self.truth,
            last_fault_s=None,
            drained_s=self.drained_s,
            peak_buffer_depth=self.peak,
        )
        return replace(obs, **changes)

    def device(self, behaviour: str | None) -> str:
        return str(next(d for d, e in self.truth["devices"].items() if e["behaviour"] == behaviour))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("scenario")
    truth_path = work / "truth.json"
    specs = [a for b in BEHAVIOURS for a in ("--behaviour", f"{b}=1")]
    stack = Stack(
        StackConfig(
            workdir=work / "stack",
            election_file=SAMPLE_ELECTION,
            seed=21,
            batches_per_device=BATCHES,
            devices=DEVICES,
            resend_after=1.0,
            fleet_timeout=120.0,
            embedded_brokers=False,
            fleet_args=(*specs, "--state-dir", str(work / "state"), "--truth", str(truth_path)),
        )
    )
    try:
        start = time.monotonic()
        stack.start()
        stack.start_fleet()
        peak = 0

        def fleet_done() -> bool:
            nonlocal peak
            peak = max([peak, *(sum(n) for n in undelivered([stack.buffer_path]).values())])
            return not stack.fleet.running

        wait_until(fleet_done, 150, "the fleet to finish", interval=0.2)
        code = stack.fleet.wait(timeout=10)
        assert code == 0, f"fleet exited {code}:\n{stack.fleet.tail()}"
        truth = load_truth(truth_path)
        summary = stack.fleet_summary()
        assert summary is not None
        engine = cloud_engine(stack.db_url)
        try:
            accepts, refusals = expected_accepts(truth), expected_refusals(truth)
            wait_until(lambda: len(read_ledger(engine, truth["election"])) >= len(accepts), 60, "every batch in the ledger")
            wait_until(
                lambda: refusals.keys() <= read_refusals(engine, [stack.buffer_path]).keys(), 60, "every refusal recorded"
            )
        finally:
            engine.dispose()
        wait_until(lambda: sum(undelivered([stack.buffer_path])[stack.buffer_path]) == 0, 60, "the buffer drained")
        drained_s = time.monotonic() - start
        made = Run(
            db=stack.config.workdir / "cloud.db",
            buffer=stack.buffer_path,
            keys=stack.keys,
            truth=truth,
            summary=summary,
            drained_s=drained_s,
            peak=peak,
            live=ScenarioVerdict((), ()),
        )
        live = judge(made.observations())
        stack.stop()
        yield replace(made, live=live)
    finally:
        stack.stop()
        for broker in (stack.edge, stack.cloud_broker):
            broker.kill()


def _copy(src: Path, dst: Path) -> Path:
    """A consistent copy of a SQLite file (its write-ahead log included), by SQLite's backup."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return dst


def _edit(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            for sql, params in statements:
                assert conn.execute(sql, params).rowcount >= 1, sql
    finally:
        conn.close()


def _text(verdict: ScenarioVerdict) -> str:
    console = Console(record=True, width=400, force_terminal=False)
    verdict.render(console)
    return console.export_text()


def _only_failing(verdict: ScenarioVerdict, *names: str) -> None:
    assert sorted(verdict.failed) == sorted(names), verdict.to_mapping()


# -- a real run, judged -------------------------------------------------------------------------
@pytest.mark.integration
def test_a_real_run_with_misbehaving_devices_passes_every_check(run: Run) -> None:
    for verdict in (run.live, judge(run.observations())):  # live, and on the stopped stack's files
        assert verdict.ok, verdict.to_mapping()
        assert [c.name for c in verdict.checks] == list(NAMES)
        assert verdict.lost == ()
    verdict = run.live
    accepted = len(expected_accepts(run.truth))
    assert verdict.check(LEDGER).detail == f"{accepted} of {accepted} batches, each once, with its hash"
    refusals = verdict.check(REFUSALS).detail
    assert "tampered 1/1 quarantined (bad_signature)" in refusals
    assert f"wrong_key {BATCHES}/{BATCHES} quarantined (wrong_key)" in refusals
    assert "after_final 1/1 rejected by the cloud (after_final)" in refusals
    # The audit's "final batches" fails, but only where the truth says it must.
    audit = verdict.check(AUDIT).detail
    checks = len(CHECKS)  # cloud/audit/report.py: every check the audit runs
    assert f"{checks - 1} of {checks} audit checks hold" in audit
    assert f"silent {run.device('silent')}" in audit and f"wrong_key {run.device('wrong_key')}" in audit
    assert "devices of the election not in this fleet" in audit
    gaps = sum(len(e["repairs"]) for e in run.truth["devices"].values())
    assert gaps >= 1 and verdict.check(REPAIRS).detail.startswith(f"{gaps}/{gaps} gaps the truth names repaired")
    confirmed = sum(1 for e in run.truth["devices"].values() if e["confirmed"])
    assert verdict.check(CONFIRMED).detail.startswith(f"{confirmed}/{confirmed} devices")
    assert verdict.check(DRAINED).detail == "1 buffer: 0 pending, 0 in flight"
    assert verdict.check(DRAIN_TIME).detail.startswith("no fault; drained")
    mapping = json.loads(json.dumps(verdict.to_mapping()))
    assert mapping["ok"] is True and mapping["lost"] == [] and mapping["lost_count"] == 0
    assert mapping["peak_buffer_depth"] == run.peak
    text = _text(verdict)
    assert "VERDICT: PASS" in text and all(name in text for name in NAMES)


@pytest.mark.integration
def test_a_lost_batch_fails_the_verdict_and_is_named(run: Run, tmp_path: Path) -> None:
    honest = run.device(None)
    db = _copy(run.db, tmp_path / "cloud.db")
    _edit(db, ("DELETE FROM ledger WHERE device = ? AND seq = 2", (honest,)))  # as a broken gateway loses it
    verdict = judge(run.observations(db_url=f"sqlite:///{db}"))
    assert not verdict.ok
    assert verdict.lost == ((honest, 2),)
    accepted = len(expected_accepts(run.truth))
    assert verdict.check(LEDGER).detail == f"{accepted - 1} of {accepted} held; missing 1: {honest}:2"
    # The tallies still count it (only the ledger row went): that is counting without a row.
    assert "the tallies count" in verdict.check(DUPLICATES).detail
    assert "seq gaps" in verdict.check(AUDIT).detail
    assert verdict.to_mapping()["lost"] == [{"device": honest, "seq": 2}]
    text = _text(verdict)
    assert f"LOST 1 accepted batches: {honest}:2" in text and "VERDICT: FAIL" in text


@pytest.mark.integration
def test_many_lost_batches_are_named_first_few_and_counted(run: Run, tmp_path: Path) -> None:
    db = _copy(run.db, tmp_path / "cloud.db")
    _edit(db, ("DELETE FROM ledger WHERE seq = ?", (BATCHES,)))  # every final
    verdict = judge(run.observations(db_url=f"sqlite:///{db}"))
    finals = sorted((d, BATCHES) for d, e in run.truth["devices"].items() if e["final_seq"] == BATCHES and BATCHES in {a["seq"] for a in e["accept"]})
    assert len(finals) > 5
    assert list(verdict.lost) == finals
    detail = verdict.check(LEDGER).detail
    assert f"missing {len(finals)}: " in detail and f"(+{len(finals) - 5} more)" in detail
    assert ", ".join(f"{d}:{s}" for d, s in finals[:5]) in detail
    assert verdict.to_mapping()["lost_count"] == len(finals)


@pytest.mark.integration
def test_an_altered_tally_fails_the_totals_naming_the_contest_and_the_audit(run: Run, tmp_path: Path) -> None:
    db = _copy(run.db, tmp_path / "cloud.db")
    conn = sqlite3.connect(db)
    contest, choice, precinct = conn.execute(
        "SELECT contest, choice, precinct FROM tallies ORDER BY contest, choice, precinct LIMIT 1"
    ).fetchone()
    conn.close()
    _edit(db, ("UPDATE tallies SET votes = votes + 5 WHERE contest = ? AND choice = ? AND precinct = ?", (contest, choice, precinct)))
    verdict = judge(run.observations(db_url=f"sqlite:///{db}"))
    _only_failing(verdict, TOTALS, AUDIT)
    total = run.truth["expected"]["contests"][contest][choice]
    assert verdict.check(TOTALS).detail == f"1 differ: {contest}/{choice} expected {total:,}, cloud {total + 5:,}"
    assert "failing: tallies (1; first: " in verdict.check(AUDIT).detail
    assert verdict.lost == ()


@pytest.mark.integration
def test_a_batch_left_pending_in_a_gateway_buffer_fails_drained(run: Run, tmp_path: Path) -> None:
    buffer = _copy(run.buffer, tmp_path / "gateway-buffer.db")
    second = _copy(run.buffer, tmp_path / "gateway2-buffer.db")
    now = time.time()
    _edit(
        buffer,
        (
            "INSERT INTO messages (topic, payload, size, state, received_at, updated_at)"
            " VALUES ('edgetally/v1/x/y/batch', x'7b7d', 2, 'pending', ?, ?)",
            (now, now),
        ),
    )
    verdict = judge(run.observations(buffers=(second, buffer)))
    _only_failing(verdict, DRAINED)
    assert verdict.check(DRAINED).detail == f"{buffer}: 1 pending, 0 in flight"


@pytest.mark.integration
def test_refusals_must_be_where_the_truth_says_with_its_reason_and_nothing_else(run: Run) -> None:
    truth = copy.deepcopy(run.truth)
    tampered = run.device("tampered")
    truth["devices"][tampered]["reject"][0]["reason"] = "wrong_key"
    seq = truth["devices"][tampered]["reject"][0]["seq"]
    verdict = judge(run.observations(truth=truth))
    _only_failing(verdict, REFUSALS)
    detail = verdict.check(REFUSALS).detail
    assert "tampered 0/1 quarantined (wrong_key)" in detail
    assert f"wrong: {tampered}:{seq} gateway:bad_signature" in detail
    truth["devices"][tampered]["reject"] = []  # the truth expects none: its quarantine is unexpected
    detail = judge(run.observations(truth=truth)).check(REFUSALS).detail
    assert "unexpected: 1 (gateway:bad_signature 1)" in detail


@pytest.mark.integration
def test_a_device_without_final_fails_the_audit_unless_the_truth_says_so(run: Run) -> None:
    truth = copy.deepcopy(run.truth)
    silent = run.device("silent")
    entry = truth["devices"][silent]
    entry["accept"].append({"seq": entry["final_seq"], "body_hash": "0" * 64})  # as if it had sent it
    verdict = judge(run.observations(truth=truth))
    assert verdict.lost == ((silent, entry["final_seq"]),)
    assert not verdict.check(AUDIT).ok
    assert "failing: final batches (" in verdict.check(AUDIT).detail
    assert silent in verdict.check(AUDIT).detail


@pytest.mark.integration
def test_gaps_the_truth_names_must_end_repaired_or_filled_and_none_open(run: Run, tmp_path: Path) -> None:
    truth = copy.deepcopy(run.truth)
    honest = run.device(None)
    # Held in the ledger but never listed: resent before the seq above it was committed, so
    # the cloud never saw a jump. That is a gap filled, not a gap left.
    truth["devices"][honest]["repairs"] = [{"seqs": "2-3", "state": "repaired"}]
    verdict = judge(run.observations(truth=truth))
    assert verdict.check(REPAIRS).ok, verdict.check(REPAIRS)
    assert "1 filled before the cloud saw a jump" in verdict.check(REPAIRS).detail
    truth["devices"][honest]["repairs"] = [{"seqs": "90-91", "state": "repaired"}]  # never held
    verdict = judge(run.observations(truth=truth))
    _only_failing(verdict, REPAIRS)
    assert f"not repaired: {honest}:90-91" in verdict.check(REPAIRS).detail
    db = _copy(run.db, tmp_path / "cloud.db")
    _edit(
        db,
        (
            "INSERT INTO repairs (election, device, first_seq, last_seq, detected_at, requests)"
            " VALUES (?, ?, 7, 8, '2026-11-30 00:00:00', 0)",
            (run.truth["election"], honest),
        ),
    )
    verdict = judge(run.observations(db_url=f"sqlite:///{db}"))
    _only_failing(verdict, REPAIRS)
    assert verdict.check(REPAIRS).detail.endswith(f"1 open; open: {honest}:7-8")


@pytest.mark.integration
def test_devices_unconfirmed_or_a_summary_not_ok_fail_the_confirmation(run: Run) -> None:
    short = {**run.summary, "ok": False, "confirmed_devices": run.summary["confirmed_devices"] - 1}
    honest = run.device(None)
    short["unconfirmed_devices"] = [honest]
    verdict = judge(run.observations(fleet_summaries=(short,)))
    _only_failing(verdict, CONFIRMED)
    detail = verdict.check(CONFIRMED).detail
    assert f"unconfirmed: {honest}" in detail and "fleet summary 1 not ok" in detail
    assert "never can be: " in detail and run.device("silent") in detail
    assert not judge(run.observations(fleet_summaries=())).check(CONFIRMED).ok
    # Two shards' summaries add up.
    halves = (
        {**run.summary, "confirmed_devices": 3, "devices": 5},
        {**run.summary, "confirmed_devices": run.summary["confirmed_devices"] - 3, "devices": DEVICES - 5},
    )
    assert judge(run.observations(fleet_summaries=halves)).check(CONFIRMED).ok


@pytest.mark.integration
def test_duplicates_delivered_are_shown_and_drain_time_is_from_the_last_fault(run: Run) -> None:
    verdict = judge(run.observations(duplicates_delivered=9, last_fault_s=1.5, drained_s=4.0, peak_buffer_depth=42))
    assert verdict.ok, verdict.to_mapping()
    assert verdict.check(DUPLICATES).detail.startswith("9 duplicates delivered, ")
    assert verdict.check(DUPLICATES).detail.endswith("; 0 counted")
    assert verdict.check(DRAIN_TIME).detail == "2.5 s (last fault at 1.5 s, drained at 4.0 s)"
    assert verdict.check(PEAK).detail == "42 batches pending or in flight"
    assert verdict.to_mapping()["time_to_drain_s"] == 2.5
    never = judge(run.observations(drained_s=None, last_fault_s=3.0))
    _only_failing(never, DRAIN_TIME)
    assert never.check(DRAIN_TIME).detail == "never drained"


# -- stores that cannot be read --------------------------------------------------------------
@pytest.mark.integration
def test_stores_that_cannot_be_read_fail_their_checks_without_raising(run: Run, tmp_path: Path) -> None:
    verdict = judge(run.observations(db_url=f"sqlite:///{tmp_path / 'none.db'}", buffers=(tmp_path / "none-buffer.db",)))
    assert not verdict.ok
    for name in (LEDGER, TOTALS, DUPLICATES, REFUSALS, AUDIT, REPAIRS):
        assert verdict.check(name).detail.startswith("cannot read the cloud database: no database file"), name
    assert verdict.check(DRAINED).detail.startswith("cannot read the gateway buffers: ")
    assert verdict.check(CONFIRMED).ok and verdict.check(PEAK).ok
    assert not judge(run.observations(buffers=())).check(DRAINED).ok
    no_keys = judge(run.observations(keys_dir=tmp_path / "no-keys"))
    _only_failing(no_keys, AUDIT, REPAIRS)
    assert no_keys.check(AUDIT).detail.startswith("cannot read the audit: cannot read registry")
