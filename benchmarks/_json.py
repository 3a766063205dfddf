"""``--json FILE`` of the benchmarks: one object, ``{"ratios": {...}, "figures": {...}}``, the
ratios each against a baseline of the same run and named for what they compare
(``scripts/bench all`` collects them); a ratio that could not be measured is null."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or zero."""
    return a / b if a and b else None


def write_json(path: Path | None, ratios: dict[str, float | None], figures: dict[str, Any] | None = None) -> None:
    if path is None:
        return
    path.write_text(json.dumps({"ratios": ratios, "figures": figures or {}}, indent=2, default=str) + "\n")
