"""Scenarios with several elections at once (``topology.elections: N``).

Each election is synthetic (devices/synth.py) with ``topology.devices`` devices (default 4), its own
keys directory (``keys/e01``, ...), its own fleet at every site and its own truth. Their device ids
are prefixed with the election's number (``e01-p00001-d01``): on the locked-down wire a device's TLS
identity is its id, so ids must be unique across the elections on one broker (docs/elections.md).
Every gateway carries every election and the cloud workers serve all of them.

The verdict holds one check of each kind, passed only when it passes for every election; its
detail names the elections where it failed, with each one's detail (or says it held for all N,
with the first election's detail as an example).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devices.synth import synth_mapping
from edgetally.scenarios.model import Topology
from edgetally.scenarios.verdict import ScenarioVerdict
from edgetally.verdict import Check
from protocol import Election, Registry, provision

DEFAULT_DEVICES = 4  # per election, when topology.devices is 0


def keys_dirs(workdir: Path, topology: Topology) -> list[Path]:
    if topology.elections <= 1:
        return [workdir / "keys"]
    return [workdir / "keys" / f"e{k:02d}" for k in range(1, topology.elections + 1)]


def devices_per_election(topology: Topology) -> int:
    return topology.devices or DEFAULT_DEVICES


def synthetic(number: int, devices: int) -> Election:
    """Election ``number`` of a many-elections scenario: its own id and device ids."""
    mapping: dict[str, Any] = synth_mapping(devices, max(1, devices // 2), 100 + number)
    prefix = f"e{number:02d}-"
    mapping["id"] = f"scenario-e{number:02d}"
    mapping["name"] = f"Scenario election {number}"
    for county in mapping["units"]["children"]:
        for precinct in county["children"]:
            precinct["devices"] = [prefix + d for d in precinct["devices"]]
    return Election.from_mapping(mapping)


def provision_all(topology: Topology, dirs: Sequence[Path]) -> list[Registry]:
    count = devices_per_election(topology)
    return [provision(synthetic(k, count), d) for k, d in enumerate(dirs, start=1)]


def combine(verdicts: Mapping[str, ScenarioVerdict]) -> ScenarioVerdict:
    """One verdict out of each election's: a check passes when it passes for every election."""
    ordered = list(verdicts.items())
    names = [c.name for c in ordered[0][1].checks]
    checks = []
    for name in names:
        each = [(election, v.check(name)) for election, v in ordered]
        failed = [f"{election}: {c.detail}" for election, c in each if not c.ok]
        detail = "; ".join(failed) if failed else f"all {len(each)} elections (the first: {each[0][1].detail})"
        checks.append(Check(name, not failed, detail))
    lost = tuple(sorted(key for _, v in ordered for key in v.lost))
    drains = [v.time_to_drain_s for _, v in ordered if v.time_to_drain_s is not None]
    return ScenarioVerdict(
        tuple(checks), lost, max(drains) if drains else None, max(v.peak_buffer_depth for _, v in ordered)
    )
