"""One stream of batches while the gateway is SIGKILLed at random moments and restarted on the
same buffer, N times; at the end every batch is in the cloud ledger exactly once, with exact
totals.

N: ``--kill-cycles N`` or ``EDGETALLY_KILL_CYCLES=N`` (default :data:`DEFAULT_CYCLES`, under a
minute here). ``scripts/crash-test`` runs 50. The schedule comes from a seed printed at the
start (``EDGETALLY_KILL_SEED`` replays it) together with every kill's time and what the buffer
held right after it; run with ``-s`` to see them as they happen.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgetally.brokers import BrokerProcess
from protocol import Election
from tests.gateway.crash_support import Publisher, Rig, Workload

pytestmark = pytest.mark.integration

DEFAULT_CYCLES = 12
DEVICES = 25
BATCHES_PER_CYCLE = 12  # per device: each cycle adds 300 batches to the stream
MEAN_CYCLE_S = 1.2  # start + time to the kill, roughly: paces the stream over all cycles
MAX_DELAY_S = 1.5  # a kill comes up to this long after the gateway started or became ready,
# early moments more often (delay = MAX_DELAY_S * u**2): the backlog queued while the gateway
# was down arrives in a burst right after it connects
DURING_START = 0.25  # share of kills timed from the process start (may hit start-up itself)


def kill_cycles(config: pytest.Config) -> int:
    option = config.getoption("--kill-cycles")
    cycles = int(option if option is not None else os.environ.get("EDGETALLY_KILL_CYCLES") or DEFAULT_CYCLES)
    if cycles < 1:
        raise pytest.UsageError("--kill-cycles must be at least 1")
    return cycles


def test_random_sigkills_of_the_gateway_lose_nothing_and_count_nothing_twice(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    cycles = kill_cycles(request.config)
    seed = int(os.environ.get("EDGETALLY_KILL_SEED") or random.SystemRandom().randrange(1, 2**31))
    rng = random.Random(seed)
    schedule = [(rng.random() < DURING_START, MAX_DELAY_S * rng.random() ** 2) for _ in range(cycles)]
    work = Workload.make(
        sample_election, keys_dir, sample_election.devices[:DEVICES], BATCHES_PER_CYCLE * cycles
    )
    print(
        f"\nrandom SIGKILL test: seed={seed} cycles={cycles} batches={len(work.sent)}"
        f" (replay: EDGETALLY_KILL_SEED={seed} EDGETALLY_KILL_CYCLES={cycles})"
    )
    rig = Rig(tmp_path, edge, cloud, keys_dir, processes)
    rig.start_cloud()
    began = time.monotonic()
    rig.start_gateway()  # its first subscription creates the session the stream is queued in
    rate = len(work.body) / (cycles * MEAN_CYCLE_S)
    publisher = Publisher(edge.url, [(s.topic, s.payload) for s in work.body], rate=rate).start()
    pause = threading.Event()  # never set: waiting on it is the kill schedule, not a sync
    for index, (from_start, delay) in enumerate(schedule):
        if index > 0:
            rig.start_gateway(wait_ready=not from_start)
        gateway = rig.gateway
        assert gateway is not None
        at = (gateway.started if from_start else time.monotonic()) + delay
        pause.wait(max(0.0, at - time.monotonic()))
        phase = "ready" if gateway.ready.exists() else "starting"
        when = time.monotonic() - began
        anchor = "start" if from_start else "ready"
        rig.kill_gateway(f"#{index + 1} t={when:.2f}s {delay:.2f}s after {anchor}")
        print(
            f"kill {index + 1}/{cycles} at t={when:6.2f}s, {delay:.2f}s after {anchor}"
            f" (gateway {phase}); buffer then: {rig.buffer_states()}"
        )
    rig.start_gateway()
    publisher.join(timeout=len(work.body) / rate + 60)
    results = rig.finish(work, timeout=60 + len(work.sent) / 100)
    print(
        f"after {cycles} SIGKILLs: {results['batches']} batches in the ledger exactly once,"
        f" {results['duplicates']} duplicate deliveries absorbed, totals exact;"
        f" {time.monotonic() - began:.1f}s"
    )
