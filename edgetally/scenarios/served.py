"""A scenario's results service (``topology.serve: true``): ``edgetally cloud serve`` runs over
the scenario's cloud database for the whole run, and the verdict's ``SERVED`` check says whether,
once the system drained, it serves exactly the totals the database holds (its ``/api/results``
against ``cloud results`` read in-process)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

from edgetally.verdict import Check

SERVED = "the results service shows the counted totals"
_COMPARED = ("ballots", "batches", "contests", "precincts_reporting", "precincts_total", "devices_final", "turnout")


def fetch_served(port: int, batches: int, timeout: float) -> dict[str, Any] | None:
    """The service's ``/api/results`` once it shows ``batches`` batches (it polls the database),
    or what it last showed after ``timeout``; None if it never answered."""
    deadline = time.monotonic() + timeout
    shown: dict[str, Any] | None = None
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/results", timeout=2) as reply:
                shown = json.loads(reply.read())
        except (OSError, ValueError):
            pass
        if (shown is not None and shown.get("batches") == batches) or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)  # the service's own poll interval is 0.25 s


def check_served(shown: Mapping[str, Any] | None, counted: Mapping[str, Any]) -> Check:
    if shown is None:
        return Check(SERVED, False, "the results service never answered")
    differ = [key for key in _COMPARED if shown.get(key) != counted.get(key)]
    if differ:
        detail = "; ".join(f"{k}: shows {shown.get(k)!r}, counted {counted.get(k)!r}" for k in differ)
        return Check(SERVED, False, f"differs from the database: {detail}")
    return Check(SERVED, True, f"/api/results shows {counted['ballots']:,} ballots, {counted['batches']:,} batches, every contest: equal")
