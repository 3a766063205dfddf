"""Test helpers shared by every test package: bounded waiting, CLI subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ELECTION = REPO / "elections" / "sample.yaml"


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = condition()
    return last


def edgetally_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgetally", *args]


def run_cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``edgetally ARGS`` to completion in a child process."""
    proc = subprocess.run(
        edgetally_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"edgetally {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def start_cli(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``edgetally ARGS`` in the background, output to ``log``; caller stops it."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            edgetally_cmd(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
            start_new_session=True,
        )
    finally:
        out.close()


def _stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (state, ppid, ...), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, dead but not yet reaped, is not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def children_of(pid: int) -> set[int]:
    """Live child processes of ``pid``, from /proc (zombies not counted)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat.parent.name)
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def descendants_of(pid: int) -> set[int]:
    """Every live process below ``pid``: its children, theirs, and so on."""
    found: set[int] = set()
    frontier = {pid}
    for _depth in range(32):  # a process tree deeper than this is not ours
        frontier = {child for parent in frontier for child in children_of(parent)} - found
        if not frontier:
            break
        found |= frontier
    return found
