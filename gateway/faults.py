"""TEST-ONLY fault points: named checkpoints where a crash test can freeze a thread and SIGKILL.

Nothing here is for production. Fault injection is off unless the gateway process was started
with ``EDGETALLY_FAULT`` in its environment; :func:`arm_from_environment` (called once by
``GatewayService.run``) reads it. While it is off, :func:`checkpoint` costs one global lookup
and a comparison (~40 ns): the hot path does not notice it.

``EDGETALLY_FAULT=POINT:N[,POINT:N...]``: the N-th time (counted from 1, per point, in this
process) a thread reaches ``checkpoint(POINT)``, it writes the marker file
``$EDGETALLY_FAULT_DIR/POINT.hit`` (JSON: point, count, pid, thread; written atomically) and
then blocks forever. The other threads go on; the test waits for the marker and SIGKILLs the
process, which therefore dies with that thread exactly at that point. ``EDGETALLY_FAULT_DIR``
defaults to the current directory.

The points, in the order a batch meets them:

    received   ingress: a message is on the writer's queue; nothing of it committed or acked
               (the thread that blocks is paho's edge network thread: no ack leaves either)
    committed  ingress: a group is committed to the buffer, none of it acknowledged yet
    acked      ingress: the group's acknowledgements are handed to paho
    published  uplink: a publish was handed to paho, its PUBACK not yet seen
    puback     uplink: PUBACKs were seen, the buffer not yet updated (rows still in flight)

A second, hidden switch makes the gateway deliberately unsafe so that the crash tests can
show they catch the bug they exist for: ``EDGETALLY_UNSAFE_ACK_BEFORE_COMMIT=1`` makes the
ingress acknowledge each group BEFORE committing it (the checkpoints then fire in the order
``acked`` then ``committed``). Never set it outside those tests.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway._exceptions import ConfigError

FAULT_ENV = "EDGETALLY_FAULT"
FAULT_DIR_ENV = "EDGETALLY_FAULT_DIR"
UNSAFE_ACK_ENV = "EDGETALLY_UNSAFE_ACK_BEFORE_COMMIT"

POINTS = ("received", "committed", "acked", "published", "puback")


@dataclass
class _Plan:
    """Which points trip, on which hit; counts hits per point (under ``lock``)."""

    trips: dict[str, int]
    directory: Path
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, point: str) -> None:
        trip = self.trips.get(point)
        if trip is None:
            return
        with self.lock:
            count = self.counts.get(point, 0) + 1
            self.counts[point] = count
        if count == trip:
            _write_marker(self.directory, point, count)
            _block_forever()


_plan: _Plan | None = None  # None: fault injection off (the only state in production)
ack_before_commit = False  # the deliberately broken gateway (see the module docstring)


def checkpoint(point: str) -> None:
    """Reaching ``point``: nothing at all unless a test armed fault injection."""
    if _plan is None:
        return
    _plan.hit(point)


def parse(spec: str) -> dict[str, int]:
    """``"committed:3,puback:1"`` -> ``{"committed": 3, "puback": 1}``; ConfigError if malformed."""
    trips: dict[str, int] = {}
    for part in spec.split(","):
        point, sep, count = part.strip().partition(":")
        if point not in POINTS:
            raise ConfigError(
                f"{FAULT_ENV}: unknown fault point {point!r} (known: {', '.join(POINTS)})"
            )
        try:
            n = int(count) if sep else 1
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{FAULT_ENV}: {part.strip()!r} needs a positive count, as in {point}:3")
        trips[point] = n
    return trips


def arm_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """Arm (or disarm) fault injection from the environment; return a description if armed."""
    global _plan, ack_before_commit
    env = os.environ if environ is None else environ
    spec = env.get(FAULT_ENV, "").strip()
    ack_before_commit = env.get(UNSAFE_ACK_ENV, "") == "1"
    _plan = None
    if spec:
        _plan = _Plan(parse(spec), Path(env.get(FAULT_DIR_ENV) or "."))
    armed = []
    if _plan is not None:
        armed.append(f"{FAULT_ENV}={spec} (markers in {_plan.directory})")
    if ack_before_commit:
        armed.append(f"{UNSAFE_ACK_ENV}=1 (acknowledges BEFORE commit: loses batches on a crash)")
    return "; ".join(armed) or None


def marker_path(directory: Path, point: str) -> Path:
    return directory / f"{point}.hit"


def _write_marker(directory: Path, point: str, count: int) -> None:
    path = marker_path(directory, point)
    data = {
        "point": point,
        "count": count,
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def _block_forever() -> None:
    never = threading.Event()
    while True:  # deliberately endless: the test SIGKILLs the process here
        never.wait(3600)
