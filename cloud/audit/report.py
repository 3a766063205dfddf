"""What the audit found (cloud/audit/audit.py): the checks, their discrepancies, and a report for
people (rich tables) or for programs (``to_mapping``, as ``cloud audit --json`` prints it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

CHECKS: dict[str, str] = {
    "signatures": "every ledger row's envelope (body, sig, kid) verifies against the registry",
    "columns": "every ledger row's columns are the fields of its signed body",
    "hash chain": "body_hash is SHA-256 of the body; prev of seq n is the hash of seq n-1",
    "seq gaps": "no seq missing below a device's highest seq",
    "final batches": "every device sent one final batch and nothing after it",
    "final totals": "each device's deltas add up to its final cumulative totals",
    "tallies": "stored votes per precinct, contest, choice = the ledger's sum",
    "precinct ballots": "stored ballots and batches per precinct = the ledger's sum",
    "windows": "stored windows = the ledger's batches by issued_at",
    "device state": "devices table (contiguous seq/hash, final, max seq, batches, dups) = ledger",
    "sources": "no precinct is reported both by its tabulators and by manual entry (cloud/audit/sources.py)",
}
DEFAULT_LIMIT = 1000  # discrepancies listed per check


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One thing that does not hold, with what it concerns."""

    check: str
    detail: str
    device: str | None = None
    seq: int | None = None
    precinct: str | None = None
    contest: str | None = None
    choice: str | None = None
    window: str | None = None

    @property
    def where(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("window", self.window),
                ("device", self.device),
                ("seq", self.seq),
                ("precinct", self.precinct),
                ("contest", self.contest),
                ("choice", self.choice),
            )
            if value is not None
        ]
        return " ".join(parts)

    def to_mapping(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "device": self.device,
            "seq": self.seq,
            "precinct": self.precinct,
            "contest": self.contest,
            "choice": self.choice,
            "window": self.window,
            "detail": self.detail,
        }


@dataclass
class CheckResult:
    name: str
    checked: int = 0
    failures: int = 0
    listed: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0

    def to_mapping(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "checked": self.checked,
            "discrepancies": self.failures,
            "listed": len(self.listed),
            "description": CHECKS[self.name],
        }


@dataclass(frozen=True)
class AuditReport:
    election: str
    ledger_rows: int
    window_seconds: int
    checks: tuple[CheckResult, ...]
    missing_seqs: dict[str, list[str]]  # device -> ["11-12", "15"]
    devices_without_final: list[str]
    # Seq gaps the cloud saw and asked devices to repair (the repairs table): informational,
    # an open one also shows under "seq gaps". Each: device, seqs, state (repaired/open),
    # detected_at, requested_at, requests, repaired_at.
    repairs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def discrepancies(self) -> list[Discrepancy]:
        return [d for c in self.checks for d in c.listed]

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_mapping(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "election": self.election,
            "ledger_rows": self.ledger_rows,
            "window_seconds": self.window_seconds,
            "checks": [c.to_mapping() for c in self.checks],
            "discrepancies": [d.to_mapping() for d in self.discrepancies],
            "missing_seqs": self.missing_seqs,
            "devices_without_final": self.devices_without_final,
            "repairs": self.repairs,
        }


def render_audit(report: AuditReport, console: Console) -> None:
    """A table of checks (pass/fail), then every listed discrepancy, then the verdict."""
    checks = Table(
        title=Text(f"Audit of election {report.election}: {report.ledger_rows:,} ledger rows")
    )
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("checked", justify="right")
    checks.add_column("discrepancies", justify="right")
    checks.add_column("what holds")
    for c in report.checks:
        checks.add_row(
            c.name,
            "[green]PASS[/green]" if c.ok else "[bold red]FAIL[/bold red]",
            f"{c.checked:,}",
            f"{c.failures:,}",
            CHECKS[c.name],
        )
    console.print(checks)
    if report.missing_seqs:
        console.print("missing seqs:")
        for device, spans in report.missing_seqs.items():
            console.print(f"  {device}: {', '.join(spans)}", markup=False, highlight=False)
    if report.repairs:
        repaired = sum(1 for r in report.repairs if r["state"] == "repaired")
        console.print(
            f"gap repairs: {repaired} repaired, {len(report.repairs) - repaired} open",
            markup=False,
            highlight=False,
        )
        for r in report.repairs:
            console.print(
                f"  {r['device']}: {r['seqs']} {r['state']} (detected {r['detected_at']},"
                f" {r['requests']} requests, repaired {r['repaired_at'] or '-'})",
                markup=False,
                highlight=False,
            )
    if report.devices_without_final:
        console.print(
            f"devices without a final batch ({len(report.devices_without_final)}): "
            + ", ".join(report.devices_without_final),
            markup=False,
            highlight=False,
        )
    if not report.ok:
        table = Table(title="Discrepancies")
        table.add_column("check")
        table.add_column("concerns")
        table.add_column("detail")
        for d in report.discrepancies:
            table.add_row(d.check, Text(d.where), Text(d.detail))
        console.print(table)
        for c in report.checks:
            if c.failures > len(c.listed):
                console.print(
                    f"{c.name}: {c.failures - len(c.listed):,} more not listed (--limit 0 lists all)"
                )
        failed = [c for c in report.checks if not c.ok]
        total = sum(c.failures for c in failed)
        console.print(
            f"[bold red]AUDIT FAILED[/bold red]: {total:,} discrepancies in {len(failed)} of"
            f" {len(report.checks)} checks"
        )
    else:
        console.print(
            f"[bold green]AUDIT PASSED[/bold green]: all {len(report.checks)} checks hold"
        )
