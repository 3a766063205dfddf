"""A scenario's verdict (:func:`edgetally.scenarios.checks.judge` reaches it): the checks and
their outcome, the accepted batches lost, the time to drain and the peak buffer depth, as a
mapping (``scenario run --json``) and as a table; and how the checks word their details
(:func:`_listed`: the first ``SHOWN`` items, then how many more).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgetally.scenarios.observe import Key
from edgetally.verdict import Check

SHOWN = 5  # items named in a detail before "+N more"


@dataclass(frozen=True)
class ScenarioVerdict:
    checks: tuple[Check, ...]
    # Accepted batches the ledger does not hold, (device, seq), sorted; () also when the ledger
    # could not be read (then its check fails saying so).
    lost: tuple[Key, ...]
    time_to_drain_s: float | None = None
    peak_buffer_depth: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def to_mapping(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "lost": [{"device": d, "seq": s} for d, s in self.lost],
            "lost_count": len(self.lost),
            "time_to_drain_s": None
            if self.time_to_drain_s is None
            else round(self.time_to_drain_s, 3),
            "peak_buffer_depth": self.peak_buffer_depth,
        }

    def render(self, console: Console) -> None:
        table = Table(title="Scenario verdict", title_justify="left")
        table.add_column("check")
        table.add_column("", justify="center")
        table.add_column("detail")
        for check in self.checks:
            table.add_row(
                Text(check.name),
                "[green]✓[/]" if check.ok else "[bold red]✗[/]",
                Text(check.detail),
            )
        console.print(table)
        if self.lost:
            console.print(
                Text(
                    f"LOST {len(self.lost)} accepted batches: {_listed(f'{d}:{s}' for d, s in self.lost)}",
                    "bold red",
                )
            )
        if self.ok:
            console.print(
                "[bold green]VERDICT: PASS[/] — every batch counted once, every total exact, every refusal where it"
                " belongs, the audit holds, the buffers drained"
            )
        else:
            console.print("[bold red]VERDICT: FAIL[/] — ", Text(", ".join(self.failed)), sep="")


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _listed(items: Iterable[str], shown: int = SHOWN) -> str:
    """The first ``shown`` items, then how many more."""
    listed = list(items)
    text = ", ".join(listed[:shown])
    if len(listed) > shown:
        text += f" (+{len(listed) - shown:,} more)"
    return text
