"""A scenario's verdict: what the cloud and the gateways hold, judged against the fleet's truth.

The scenario runner calls :func:`judge` once the timeline has ended and the system drained (or
the bounded wait for it ran out). Every check reads the real stores, read-only: the cloud
database (any SQLAlchemy URL ``cloud`` accepts, SQLite or PostgreSQL), every gateway buffer file,
the fleet summaries (``devices run --summary FILE``) and the truth (``devices run --truth FILE``,
one per fleet shard, merged with ``devices.truth.merge_truths``; devices/truth.py says what it holds).

The checks (names are the module constants below; each a :class:`edgetally.verdict.Check`):

    LEDGER      the ledger's (device, seq, body_hash) rows of the truth's election are exactly
                the truth's ``accept`` entries; names missing (the :attr:`ScenarioVerdict.lost`
                batches), unexpected and wrong-hash rows
    CONFIRMED   the fleet summaries' confirmed devices = the truth's devices whose ``confirmed``
                is true, and every summary ok
    TOTALS      ``cloud results`` (ballots, batches, every contest and choice, ballots per
                precinct) = the truth's ``expected``
    DUPLICATES  duplicates delivered to the cloud (its devices table, or what the runner
                counted) against duplicates counted, which must be 0: no (device, seq) with two
                ledger rows, and the tallies' batch and ballot counters no higher than the
                ledger's (a lost batch is LEDGER's finding, not a duplicate)
    REFUSALS    every truth ``reject`` refused where the truth says, with its reason: the
                gateway's quarantine (over every buffer) or the cloud's rejections table, keyed
                by the payload's SHA-256; nothing else refused
    AUDIT       ``cloud audit`` run in-process (cloud.audit.audit.run_audit). Its ``final batches``
                check cannot pass when some devices of the election never send a final batch,
                and the truth says which: devices outside this run's fleet, silent devices (no
                final), wrong_key devices (nothing of theirs accepted). Failures of that check
                that are all "no final batch" of such devices are expected and reported as
                such (the audit runs with no listing limit, so every one is seen); any other failing
                audit check, or a ``final batches`` discrepancy about another device, fails this
                check
    REPAIRS     no gap the audit lists is ``open``, and every gap the truth's ``repairs`` names
                is covered by a ``repaired`` row of its device or was filled before the cloud
                saw a jump (the withheld seq resent and committed before the seq above it, so
                no gap ever existed in the ledger: all of its seqs held, nothing listed)
    DRAINED     no gateway buffer holds a pending or in-flight batch
    DRAIN_TIME  informational: seconds from the last timeline action to drain; fails only when
                drain was never reached
    PEAK        informational: the deepest the buffers got (what the runner sampled); never fails
    CONTAINED   only when the scenario ran a rogue client: edgetally/scenarios/contained.py
    SERVED      only when it ran the results service: edgetally/scenarios/served.py
    CLUSTER     only on a NATS cloud cluster: edgetally/scenarios/cluster.py

A store that cannot be read fails the checks that need it, with the error as the detail.

What a check observes (the truth's expectations, the stores, each read once) is in
:mod:`edgetally.scenarios.observe`; the verdict and its rendering in
:mod:`edgetally.scenarios.verdict`. What is left here, the judge and its ten checks, is one
concept that reads best whole, though a little over 400 lines: each check is a method of the
one judge and shares its read-once stores, the table above specifies them in order, and their
details are worded alike; split into groups, each group would need the same judge and the table
would describe checks that live elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from edgetally.scenarios.cluster import CLUSTER, check_cluster
from edgetally.scenarios.contained import CONTAINED, check_contained, dropped_rejects, flood_hashes
from edgetally.scenarios.observe import (
    Key,
    Observations,
    StoreReader,
    _ledger_ballots,
    _Unreadable,
    expected_accepts,
    expected_refusals,
    read_refusals,
    seq_span,
    undelivered,
)
from edgetally.scenarios.served import SERVED, check_served
from edgetally.scenarios.verdict import ScenarioVerdict, _count, _listed
from edgetally.verdict import Check

LEDGER = "every accepted batch in the ledger exactly once"
CONFIRMED = "every device confirmed by receipt"
TOTALS = "totals equal the expected totals"
DUPLICATES = "duplicates counted: 0"
REFUSALS = "every refused batch refused with its reason, where the truth says"
AUDIT = "audit passes"
REPAIRS = "gaps repaired"
DRAINED = "gateway buffers drained"
DRAIN_TIME = "time to drain after the last fault"
PEAK = "peak buffer depth"


def judge(obs: Observations) -> ScenarioVerdict:
    """Run every check against the stores ``obs`` names. Never raises for a store it cannot
    read: the checks that need it fail, naming the error."""
    return _Judge(obs).run()


class _Judge(StoreReader):
    def __init__(self, obs: Observations) -> None:
        super().__init__(obs)
        self.truth = obs.truth
        self.accepts = expected_accepts(obs.truth)
        self.lost: tuple[Key, ...] = ()

    def run(self) -> ScenarioVerdict:
        steps: list[tuple[str, Callable[[], Check]]] = [
            (LEDGER, self.check_ledger),
            (CONFIRMED, self.check_confirmed),
            (TOTALS, self.check_totals),
            (DUPLICATES, self.check_duplicates),
            (REFUSALS, self.check_refusals),
            (AUDIT, self.check_audit),
            (REPAIRS, self.check_repairs),
            (DRAINED, self.check_drained),
            (DRAIN_TIME, self.check_drain_time),
            (PEAK, self.check_peak),
        ]
        if self.obs.rogue is not None:
            steps.append((CONTAINED, self.check_contained))
        if self.obs.resend_after is not None:
            after = self.obs.resend_after
            steps.append((CLUSTER, lambda: check_cluster(self.obs.fleet_summaries, after)))
        if self.obs.served:
            steps.append((SERVED, lambda: check_served(self.obs.served_results, self.results().to_mapping())))
        checks: list[Check] = []
        try:
            for name, step in steps:
                try:
                    checks.append(step())
                except _Unreadable as err:
                    checks.append(Check(name, False, str(err)))
        finally:
            if self._engine is not None:
                self._engine.dispose()
        obs = self.obs
        drain = None
        if obs.drained_s is not None:
            drain = max(0.0, obs.drained_s - (obs.last_fault_s or 0.0))
        return ScenarioVerdict(tuple(checks), self.lost, drain, obs.peak_buffer_depth)

    # -- 1 ----------------------------------------------------------------------------------
    def check_ledger(self) -> Check:
        ledger = self.ledger()
        missing = sorted(self.accepts.keys() - ledger.keys())
        unexpected = sorted(ledger.keys() - self.accepts.keys())
        wrong = sorted(
            k for k in self.accepts.keys() & ledger.keys() if set(ledger[k]) != {self.accepts[k]}
        )
        doubled = sorted(k for k, hashes in ledger.items() if len(hashes) > 1)
        self.lost = tuple(missing)
        total = len(self.accepts)
        if not (missing or unexpected or wrong or doubled):
            return Check(LEDGER, True, f"{total:,} of {total:,} batches, each once, with its hash")
        parts = [f"{len(self.accepts.keys() & ledger.keys()):,} of {total:,} held"]
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong hash", wrong),
            ("more than one row", doubled),
        ):
            if keys:
                parts.append(f"{what} {len(keys):,}: {_listed(f'{d}:{s}' for d, s in keys)}")
        return Check(LEDGER, False, "; ".join(parts))

    # -- 2 ----------------------------------------------------------------------------------
    def check_confirmed(self) -> Check:
        summaries = self.obs.fleet_summaries
        devices = self.truth["devices"]
        must = {d for d, e in devices.items() if e.get("confirmed")}
        never = sorted(
            (d for d in devices if d not in must),
            key=lambda d: (str(devices[d].get("behaviour")), d),
        )
        if not summaries:
            return Check(
                CONFIRMED,
                False,
                f"no fleet summary to read ({len(must):,} devices must be confirmed)",
            )
        confirmed = sum(int(s.get("confirmed_devices") or 0) for s in summaries)
        run = sum(int(s.get("devices") or 0) for s in summaries)
        not_ok = [i for i, s in enumerate(summaries, start=1) if not s.get("ok")]
        unconfirmed = sorted(
            {str(d) for s in summaries for d in s.get("unconfirmed_devices") or ()} & must
        )
        detail = f"{confirmed:,}/{len(must):,} devices the truth expects confirmed ({run:,} run"
        if never:
            detail += f"; {len(never)} never can be: " + _listed(
                f"{d} ({devices[d].get('behaviour') or 'honest'})" for d in never
            )
        detail += ")"
        if unconfirmed:
            detail += f"; unconfirmed: {_listed(unconfirmed)}"
        if not_ok:
            detail += f"; fleet summary {', '.join(map(str, not_ok))} not ok"
        return Check(CONFIRMED, confirmed == len(must) and not not_ok, detail)

    # -- 3 ----------------------------------------------------------------------------------
    def check_totals(self) -> Check:
        results = self.results()
        expected = self.truth["expected"]
        diffs: list[str] = []

        def compare(what: str, want: int, got: int) -> None:
            if want != got:
                diffs.append(f"{what} expected {want:,}, cloud {got:,}")

        compare("ballots", int(expected["ballots"]), results.ballots)
        compare("batches", int(expected["batches"]), results.batches)
        want_contests: Mapping[str, Mapping[str, int]] = expected["contests"]
        got_contests = results.contests
        choices = 0
        for contest in sorted({*want_contests, *got_contests}):
            want, got = want_contests.get(contest, {}), got_contests.get(contest, {})
            for choice in sorted({*want, *got}):
                choices += 1
                compare(f"{contest}/{choice}", int(want.get(choice, 0)), int(got.get(choice, 0)))
        want_precincts: Mapping[str, int] = expected["ballots_by_precinct"]
        got_precincts = results.ballots_by_precinct
        precincts = sorted({*want_precincts, *got_precincts})
        for precinct in precincts:
            compare(
                f"precinct {precinct} ballots",
                int(want_precincts.get(precinct, 0)),
                int(got_precincts.get(precinct, 0)),
            )
        if diffs:
            return Check(TOTALS, False, f"{len(diffs)} differ: {_listed(diffs)}")
        return Check(
            TOTALS,
            True,
            f"{results.ballots:,} ballots, {results.batches:,} batches, {choices} choices in"
            f" {len(want_contests)} contests, {len(precincts)} precincts: all equal",
        )

    # -- 4 ----------------------------------------------------------------------------------
    def check_duplicates(self) -> Check:
        ledger = self.ledger()
        results = self.results()
        rows = sum(len(v) for v in ledger.values())
        extra_rows = rows - len(ledger)  # rows beyond one per (device, seq)
        extra_batches = max(0, results.batches - rows)  # tallied batches the ledger does not hold
        extra_ballots = max(0, results.ballots - _ledger_ballots(self.engine, self.election))
        counted = extra_rows + extra_batches
        recorded = results.duplicates
        delivered = self.obs.duplicates_delivered
        if delivered is None:
            head = f"{recorded:,} duplicate deliveries reached the cloud, absorbed"
        else:
            head = f"{delivered:,} duplicates delivered, {recorded:,} recorded by the cloud"
        if counted == 0 and extra_ballots == 0:
            return Check(DUPLICATES, True, f"{head}; 0 counted")
        parts = [f"{head}; counted more than once: {counted:,} batches"]
        if extra_rows:
            doubled = sorted(k for k, v in ledger.items() if len(v) > 1)
            parts.append(
                f"seqs with several ledger rows: {_listed(f'{d}:{s}' for d, s in doubled)}"
            )
        if extra_batches:
            parts.append(
                f"the tallies count {results.batches:,} batches, the ledger holds {rows:,}"
            )
        if extra_ballots:
            parts.append(f"the tallies count {extra_ballots:,} ballots more than the ledger holds")
        return Check(DUPLICATES, False, "; ".join(parts))

    # -- 5 ----------------------------------------------------------------------------------
    def check_refusals(self) -> Check:
        must = expected_refusals(self.truth)
        refused = self._once("the refusals", lambda: read_refusals(self.engine, self.obs.buffers))
        groups: dict[
            tuple[str, str, str], list[int]
        ] = {}  # (behaviour, where, reason) -> [want, right]
        wrongly: list[str] = []
        for device, entry in self.truth["devices"].items():
            behaviour = entry.get("behaviour") or "honest"
            for r in entry["reject"]:
                where, reason = str(r["where"]), str(r["reason"])
                tally = groups.setdefault((behaviour, where, reason), [0, 0])
                tally[0] += 1
                got = refused.get(str(r["payload_hash"]))
                if got == {(where, reason)}:
                    tally[1] += 1
                else:
                    shown = ", ".join(f"{w}:{x}" for w, x in sorted(got)) if got else "not refused"
                    wrongly.append(f"{device}:{r['seq']} {shown}")
        unexpected: dict[str, int] = {}
        flood = flood_hashes(self.obs.rogue)  # the rogue's: CONTAINED accounts for them
        for digest, places in refused.items():
            if digest not in must and digest not in flood:
                for w, x in places:
                    unexpected[f"{w}:{x}"] = unexpected.get(f"{w}:{x}", 0) + 1
        parts = [
            f"{behaviour} {right}/{want} {'quarantined' if where == 'gateway' else 'rejected by the cloud'} ({reason})"
            for (behaviour, where, reason), (want, right) in sorted(groups.items())
        ] or ["the truth expects no refusal"]
        if wrongly:
            parts.append(f"wrong: {_listed(wrongly)}")
        if unexpected:
            count = sum(unexpected.values())
            parts.append(
                f"unexpected: {count:,} ({', '.join(f'{k} {n}' for k, n in sorted(unexpected.items()))})"
            )
        return Check(REFUSALS, not wrongly and not unexpected, "; ".join(parts))

    def check_contained(self) -> Check:
        report = self.obs.rogue
        assert report is not None  # only a step when a rogue ran
        refused = self._once("the refusals", lambda: read_refusals(self.engine, self.obs.buffers))
        dropped = self._once("the quarantine counters", lambda: dropped_rejects(self.obs.buffers, str(report["device"])))
        return check_contained(report, refused, dropped, self.obs.fleet_summaries)

    # -- 6 ----------------------------------------------------------------------------------
    def _explained_without_final(self) -> dict[str, str]:
        """Devices the truth says end without a final batch in the ledger, and why."""
        devices = self.truth["devices"]
        why: dict[str, str] = {}
        for device, entry in devices.items():
            seqs = {int(a["seq"]) for a in entry["accept"]}
            if int(entry["final_seq"]) not in seqs:
                why[device] = str(entry.get("behaviour") or "no final accepted")
        return why

    def check_audit(self) -> Check:
        report = self.audit()
        in_fleet = self.truth["devices"]
        explained = self._explained_without_final()
        failing = [c for c in report.checks if not c.ok]
        if not failing:
            return Check(
                AUDIT,
                True,
                f"all {len(report.checks)} audit checks hold ({report.ledger_rows:,} ledger rows)",
            )
        unexplained: list[str] = []
        notes: list[str] = []
        for check in failing:
            if check.name == "final batches" and check.failures == len(check.listed):
                concerned = [d.device for d in check.listed]
                if all(
                    d.detail.startswith("no final batch")
                    and d.device is not None
                    and (d.device in explained or d.device not in in_fleet)
                    for d in check.listed
                ):
                    by_reason: dict[str, list[str]] = {}
                    outside = 0
                    for d in concerned:
                        assert d is not None
                        if d in explained:
                            by_reason.setdefault(explained[d], []).append(d)
                        else:
                            outside += 1
                    said = [
                        f"{reason} {_listed(sorted(ds))}"
                        for reason, ds in sorted(by_reason.items())
                    ]
                    if outside:
                        said.append(f"{outside:,} devices of the election not in this fleet")
                    notes.append(
                        f"'final batches' fails only where the truth says it must: {'; '.join(said)}"
                    )
                    continue
            first = (
                f"{check.listed[0].where} {check.listed[0].detail}".strip() if check.listed else ""
            )
            unexplained.append(f"{check.name} ({check.failures:,}; first: {first})")
        holds = len(report.checks) - len(failing)
        detail = f"{holds} of {len(report.checks)} audit checks hold"
        if unexplained:
            detail += f"; failing: {'; '.join(unexplained)}"
        if notes:
            detail += f"; {'; '.join(notes)}"
        return Check(AUDIT, not unexplained, detail)

    # -- 7 ----------------------------------------------------------------------------------
    def check_repairs(self) -> Check:
        repairs = self.audit().repairs
        open_rows = [r for r in repairs if r["state"] != "repaired"]
        covered: dict[str, set[int]] = {}
        for r in repairs:
            if r["state"] == "repaired":
                covered.setdefault(str(r["device"]), set()).update(seq_span(str(r["seqs"])))
        held = self.ledger()
        gaps = 0
        unrepaired: list[str] = []  # a gap the truth names, neither listed repaired nor held
        filled_unseen = 0  # resent before the seq above it was committed: no jump to see
        for device, entry in self.truth["devices"].items():
            for gap in entry.get("repairs", ()):
                gaps += 1
                seqs = seq_span(str(gap["seqs"]))
                if seqs <= covered.get(device, set()):
                    continue
                if all((device, seq) in held for seq in seqs):
                    filled_unseen += 1
                else:
                    unrepaired.append(f"{device}:{gap['seqs']}")
        detail = (
            f"{gaps - len(unrepaired) - filled_unseen}/{gaps} gaps the truth names repaired"
            + (f", {filled_unseen} filled before the cloud saw a jump" if filled_unseen else "")
            + f"; the audit lists {len(repairs) - len(open_rows)} repaired, {len(open_rows)} open"
        )
        if unrepaired:
            detail += f"; not repaired: {_listed(unrepaired)}"
        if open_rows:
            detail += "; open: " + _listed(f"{r['device']}:{r['seqs']}" for r in open_rows)
        return Check(REPAIRS, not unrepaired and not open_rows, detail)

    # -- 8 ----------------------------------------------------------------------------------
    def check_drained(self) -> Check:
        if not self.obs.buffers:
            return Check(DRAINED, False, "no gateway buffer given")
        left = self._once("the gateway buffers", lambda: undelivered(self.obs.buffers))
        busy = {path: n for path, n in left.items() if sum(n) > 0}
        if not busy:
            return Check(DRAINED, True, f"{_count(len(left), 'buffer')}: 0 pending, 0 in flight")
        return Check(
            DRAINED,
            False,
            "; ".join(
                f"{path}: {pending} pending, {inflight} in flight"
                for path, (pending, inflight) in busy.items()
            ),
        )

    # -- 9 ----------------------------------------------------------------------------------
    def check_drain_time(self) -> Check:
        obs = self.obs
        if obs.drained_s is None:
            return Check(DRAIN_TIME, False, "never drained")
        if obs.last_fault_s is None:
            return Check(
                DRAIN_TIME, True, f"no fault; drained {obs.drained_s:.1f} s after the start"
            )
        took = max(0.0, obs.drained_s - obs.last_fault_s)
        return Check(
            DRAIN_TIME,
            True,
            f"{took:.1f} s (last fault at {obs.last_fault_s:.1f} s, drained at {obs.drained_s:.1f} s)",
        )

    def check_peak(self) -> Check:
        return Check(PEAK, True, f"{self.obs.peak_buffer_depth:,} batches pending or in flight")
