"""The supervisor that keeps the writer and the uplink running."""

from __future__ import annotations

import threading

from gateway.links import Backoff
from gateway.service import MAX_FAILURES, Supervisor
from tests.helpers import wait_until


def quick() -> Backoff:
    return Backoff(0.001, 0.002)


def test_supervisor_restarts_a_failed_task_after_running_its_recovery() -> None:
    runs: list[int] = []
    recoveries: list[int] = []
    given_up: list[str] = []

    def task(stop: threading.Event) -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise OSError("disk hiccup")
        stop.wait(10)

    supervisor = Supervisor(
        "task",
        task,
        on_failure=lambda: recoveries.append(len(runs)),
        on_give_up=given_up.append,
        backoff=quick(),
    )
    supervisor.start()
    wait_until(lambda: len(runs) == 3, 10, "the third run")
    supervisor.stop.set()
    supervisor.join(10)
    assert recoveries == [1, 2]
    assert given_up == []


def test_supervisor_gives_up_after_repeated_failures_naming_the_last_one() -> None:
    runs: list[int] = []
    given_up: list[str] = []

    def task(_stop: threading.Event) -> None:
        runs.append(1)
        raise ValueError(f"broken #{len(runs)}")

    supervisor = Supervisor("writer", task, on_give_up=given_up.append, backoff=quick())
    supervisor.start()
    supervisor.join(10)
    assert len(runs) == MAX_FAILURES
    assert given_up == [
        f"writer failed {MAX_FAILURES} times in a row; last: ValueError: broken #{MAX_FAILURES}"
    ]


def test_supervisor_treats_a_task_that_returns_early_as_a_failure() -> None:
    runs: list[int] = []
    given_up: list[str] = []
    supervisor = Supervisor(
        "uplink", lambda _stop: runs.append(1), on_give_up=given_up.append, backoff=quick()
    )
    supervisor.start()
    supervisor.join(10)
    assert len(runs) == MAX_FAILURES
    assert "returned before it was asked to stop" in given_up[0]
