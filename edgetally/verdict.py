"""Comparing what the cloud holds with what the devices sent: the demo's and scenarios' verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from devices.generator import ExpectedTotals
from protocol import Election


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ChoiceRow:
    contest: str
    choice: str
    expected: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(frozen=True)
class Verdict:
    rows: tuple[ChoiceRow, ...]
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and all(c.ok for c in self.checks)

    def to_mapping(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "mismatches": [
                {"contest": r.contest, "choice": r.choice, "expected": r.expected, "actual": r.actual}
                for r in self.rows
                if not r.ok
            ],
        }


def compare(
    election: Election,
    expected: ExpectedTotals,
    results: dict[str, Any],
    fleet: dict[str, Any] | None = None,
    buffer: dict[str, Any] | None = None,
    alerts: list[dict[str, Any]] | None = None,
) -> Verdict:
    rows = tuple(
        ChoiceRow(
            contest.id,
            choice,
            expected.contests[contest.id][choice],
            int(results.get("contests", {}).get(contest.id, {}).get(choice, 0)),
        )
        for contest in election.contests
        for choice in contest.choice_ids
    )
    batches = int(results.get("batches", 0))
    duplicates = int(results.get("duplicates", 0))
    by_precinct = results.get("ballots_by_precinct", {})
    wrong_precincts = sorted(p for p, n in expected.by_precinct.items() if int(by_precinct.get(p, 0)) != n)
    checks = [
        Check("ballots", results.get("ballots") == expected.ballots, f"expected {expected.ballots:,}, cloud {results.get('ballots', 0):,}"),
        Check(
            "every batch in the ledger exactly once",
            batches == expected.batches,
            f"{batches:,} of {expected.batches:,} batches",
        ),
        Check(
            "ballots per precinct",
            not wrong_precincts,
            "all precincts match" if not wrong_precincts else f"differ: {', '.join(wrong_precincts[:5])}",
        ),
        Check(
            "duplicates counted",
            batches <= expected.batches,
            f"{duplicates:,} duplicate deliveries absorbed, 0 counted",
        ),
        Check(
            "rejections",
            int(results.get("rejections", 0)) == 0,
            f"{results.get('rejections', 0)} rejected (an honest fleet expects 0)",
        ),
    ]
    if fleet is not None:
        devices = int(fleet.get("devices", 0))
        confirmed = int(fleet.get("confirmed_devices", 0))
        checks.append(
            Check("devices confirmed by receipt", bool(fleet.get("ok")) and confirmed == devices, f"{confirmed}/{devices}")
        )
    if alerts is not None:
        rules = sorted({str(a.get("rule")) for a in alerts})
        checks.append(
            Check(
                "no anomaly alert",
                not alerts,
                f"{len(alerts)} alerts ({', '.join(rules)})" if alerts else "the rules raised none",
            )
        )
    if buffer is not None:
        states = buffer.get("states", {})
        left = int(states.get("pending", 0)) + int(states.get("inflight", 0))
        checks.append(Check("gateway buffer drained", left == 0, f"{left} pending or in flight"))
        checks.append(
            Check("gateway quarantine empty", int(states.get("quarantined", 0)) == 0, f"{states.get('quarantined', 0)} quarantined")
        )
    return Verdict(rows, tuple(checks))


def render(verdict: Verdict, election: Election, console: Console) -> None:
    names = {c.id: c for c in election.contests}
    for contest in election.contests:
        table = Table(title=names[contest.id].name, title_justify="left")
        table.add_column("choice")
        table.add_column("expected", justify="right")
        table.add_column("cloud", justify="right")
        table.add_column("", justify="center")
        choice_names = {c.id: c.name for c in contest.choices}
        for row in verdict.rows:
            if row.contest == contest.id:
                table.add_row(
                    choice_names[row.choice],
                    f"{row.expected:,}",
                    f"{row.actual:,}",
                    "[green]✓[/]" if row.ok else "[bold red]✗[/]",
                )
        console.print(table)
    checks = Table(title="Checks", title_justify="left")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("", justify="center")
    for check in verdict.checks:
        checks.add_row(check.name, check.detail, "[green]✓[/]" if check.ok else "[bold red]✗[/]")
    console.print(checks)
    if verdict.ok:
        console.print("[bold green]VERDICT: MATCH[/] — every total equals what the devices sent, nothing lost, nothing counted twice")
    else:
        failed = [c.name for c in verdict.checks if not c.ok] + [f"{r.contest}/{r.choice}" for r in verdict.rows if not r.ok]
        console.print(f"[bold red]VERDICT: MISMATCH[/] — {', '.join(failed)}")
