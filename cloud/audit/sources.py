"""The audit's ``sources`` check: no precinct reported both by its tabulators and by hand.

A precinct whose figures come from its tabulators and from a manual-entry source (`edgetally
entry`) counts its ballots twice; the audit lists each such precinct with the difference between
the two sources' figures (ballots, then every contest and choice that differs), taken from the
signed bodies of the ledger. Operator signatures are checked with every ledger row's envelope
(protocol.verify checks a manual body's ``entry``), in the ``signatures`` check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import BatchBody
from protocol.entry import SOURCE_MANUAL, SOURCE_TABULATOR


@dataclass
class SourceSums:
    """One precinct's accepted figures from one kind of source."""

    ballots: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)


class PrecinctSources:
    """Per (precinct, source) sums over the ledger's bodies, as the audit streams them."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], SourceSums] = {}

    def add(self, source: str, body: BatchBody) -> None:
        sums = self.sums.setdefault((body.precinct, source), SourceSums())
        sums.ballots += body.ballots
        for contest, choices in body.counts.items():
            for choice, n in choices.items():
                sums.counts[(contest, choice)] = sums.counts.get((contest, choice), 0) + n

    def both(self) -> list[tuple[str, str]]:
        """(precinct, the difference in words) for every precinct reported by both sources."""
        out: list[tuple[str, str]] = []
        for (precinct, source), manual in sorted(self.sums.items()):
            if source != SOURCE_MANUAL:
                continue
            tabulated = self.sums.get((precinct, SOURCE_TABULATOR))
            if tabulated is None:
                continue
            parts = [f"ballots tabulator {tabulated.ballots} vs manual {manual.ballots}"]
            for key in sorted({*tabulated.counts, *manual.counts}):
                t, m = tabulated.counts.get(key, 0), manual.counts.get(key, 0)
                if t != m:
                    parts.append(f"{key[0]}.{key[1]} {t} vs {m}")
            out.append((precinct, "reported by tabulators and by manual entry: " + "; ".join(parts)))
        return out
