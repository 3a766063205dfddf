"""Synthetic elections of any size, for the fleet benchmark and scale tests.

``synth_election(devices, precincts, seed)`` builds a valid :class:`protocol.Election`:
a state, counties of at most ``COUNTY_SIZE`` precincts, precincts holding the devices as
evenly as possible (ids ``p00001`` / ``p00001-d01``), three contests like the shipped sample.
Deterministic: the same arguments give the same mapping, byte for byte.
"""

from __future__ import annotations

import random
from typing import Any

from protocol import Election

COUNTY_SIZE = 100
VOTERS_PER_DEVICE = (400, 900)

_CONTESTS: list[dict[str, Any]] = [
    {
        "id": "governor",
        "name": "Governor",
        "kind": "candidate",
        "choices": [
            {"id": "alvarez", "name": "Maria Alvarez"},
            {"id": "becker", "name": "Tom Becker"},
            {"id": "chen", "name": "Lin Chen"},
            {"id": "write-in", "name": "Write-in"},
        ],
    },
    {
        "id": "senate",
        "name": "State Senate",
        "kind": "candidate",
        "choices": [{"id": "okafor", "name": "Ada Okafor"}, {"id": "novak", "name": "Petr Novak"}],
    },
    {
        "id": "measure-7",
        "name": "Measure 7: Library Bond",
        "kind": "measure",
        "choices": [{"id": "yes", "name": "Yes"}, {"id": "no", "name": "No"}],
    },
]


def synth_mapping(devices: int, precincts: int, seed: int) -> dict[str, Any]:
    """The election as a plain mapping (what ``Election.from_mapping`` and YAML files hold)."""
    if devices < 1 or precincts < 1:
        raise ValueError("an election needs at least one device and one precinct")
    if precincts > devices:
        raise ValueError(f"{precincts} precincts cannot each hold a device with only {devices} devices")
    rng = random.Random(f"synth/{seed}/{devices}/{precincts}")
    base, extra = divmod(devices, precincts)
    counties: list[dict[str, Any]] = []
    for p in range(precincts):
        if p % COUNTY_SIZE == 0:
            number = p // COUNTY_SIZE + 1
            counties.append({"id": f"c{number:03d}", "name": f"County {number}", "kind": "county", "children": []})
        held = base + (1 if p < extra else 0)
        pid = f"p{p + 1:05d}"
        counties[-1]["children"].append(
            {
                "id": pid,
                "name": f"Precinct {p + 1}",
                "kind": "precinct",
                "registered": sum(rng.randint(*VOTERS_PER_DEVICE) for _ in range(held)),
                "devices": [f"{pid}-d{d + 1:02d}" for d in range(held)],
            }
        )
    return {
        "id": f"synth-{devices}-{seed}",
        "name": f"Synthetic election: {devices} devices in {precincts} precincts (seed {seed})",
        "polls_close": "2026-11-03T20:00:00Z",
        "contests": _CONTESTS,
        "units": {"id": "state", "name": "Synthetic State", "kind": "state", "children": counties},
    }


def synth_election(devices: int, precincts: int, seed: int) -> Election:
    return Election.from_mapping(synth_mapping(devices, precincts, seed))
