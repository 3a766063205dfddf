"""TEST-ONLY fault points of the cloud worker: where a crash test freezes the commit thread and
SIGKILLs the process. Nothing here is for production.

Off unless ``edgetally cloud run`` was started with ``EDGETALLY_CLOUD_FAULT`` in its environment
(read once by :func:`arm_from_environment`); while off, :func:`checkpoint` is one global lookup.

``EDGETALLY_CLOUD_FAULT=POINT:N``: the N-th time (from 1) the commit thread reaches
``checkpoint(POINT)``, it writes ``$EDGETALLY_FAULT_DIR/cloud-POINT.hit`` (atomically) and blocks
for ever; the test waits for the file and SIGKILLs the worker there.

    committed   a group's transaction committed (ledger, alerts, stored rows), nothing of it
                published or acknowledged yet: the broker will deliver the group again
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

from cloud._exceptions import ConfigError

FAULT_ENV = "EDGETALLY_CLOUD_FAULT"
FAULT_DIR_ENV = "EDGETALLY_FAULT_DIR"
POINTS = ("committed",)

_armed: dict[str, int] = {}  # point -> the hit that trips it; empty: off
_hits: dict[str, int] = {}
_directory = Path(".")
_lock = threading.Lock()


def checkpoint(point: str) -> None:
    """Reaching ``point``: nothing at all unless a test armed it."""
    if not _armed:
        return
    trip = _armed.get(point)
    if trip is None:
        return
    with _lock:
        _hits[point] = count = _hits.get(point, 0) + 1
    if count != trip:
        return
    marker = marker_path(_directory, point)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, marker)
    never = threading.Event()
    while True:  # deliberately endless: the test SIGKILLs the process here
        never.wait(3600)


def arm_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """Arm the fault point named in the environment; a description when armed."""
    global _directory
    env = os.environ if environ is None else environ
    spec = env.get(FAULT_ENV, "").strip()
    _armed.clear()
    _hits.clear()
    if not spec:
        return None
    point, _, count = spec.partition(":")
    if point not in POINTS or not (count or "1").isdigit() or int(count or "1") < 1:
        raise ConfigError(
            f"{FAULT_ENV}={spec!r}: expected POINT:N with POINT in {', '.join(POINTS)}"
        )
    _armed[point] = int(count or "1")
    _directory = Path(env.get(FAULT_DIR_ENV) or ".")
    return f"{FAULT_ENV}={spec} (marker in {_directory})"


def marker_path(directory: Path, point: str) -> Path:
    return directory / f"cloud-{point}.hit"
