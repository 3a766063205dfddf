"""`devices run --processes N`: the fleet split across N child processes, each its own loop.

Device ``i`` of the chosen list goes to shard ``i % N`` (``--shard K/N``); each child gets
``1/N`` of the fleet-wide publish and connect rates, writes its JSON summary to its own file,
and the parent adds the summaries up. ``--hold`` holds within each shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from devices._exceptions import FleetError
from devices.fleet.stats import FleetSummary

POLL_S = 0.25


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), 0 <= K < N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError as exc:
        raise FleetError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from exc
    if not 0 <= k < n:
        raise FleetError(f"--shard {text}: need 0 <= K < N")
    return k, n


def pick(devices: Sequence[str], shard: tuple[int, int]) -> tuple[str, ...]:
    k, n = shard
    return tuple(devices[k::n])


def read_summary(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def aggregate(parts: Sequence[dict[str, Any]], confirm: bool) -> FleetSummary:
    def total(key: str) -> int:
        return sum(int(p.get(key) or 0) for p in parts)

    def longest(key: str) -> float | None:
        values = [float(p[key]) for p in parts if p.get(key) is not None]
        return max(values) if values else None

    def counted(key: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for part in parts:
            for name, count in (part.get(key) or {}).items():
                found[name] = found.get(name, 0) + int(count)
        return found

    steady = [float(p["steady_acked_per_s"]) for p in parts if p.get("steady_acked_per_s")]
    ignored: dict[str, dict[str, int]] = {}
    for part in parts:
        for word, reasons in (part.get("ignored") or {}).items():
            mine = ignored.setdefault(word, {})
            for reason, count in reasons.items():
                mine[reason] = mine.get(reason, 0) + int(count)
    return FleetSummary(
        devices=total("devices"),
        batches=total("batches"),
        acked=total("acked"),
        receipted=total("receipted"),
        confirmed_devices=total("confirmed_devices"),
        unconfirmed_devices=tuple(d for p in parts for d in p.get("unconfirmed_devices", [])),
        publishes=total("publishes"),
        resends=total("resends"),
        reconnects=total("reconnects"),
        elapsed_s=longest("elapsed_s") or 0.0,
        confirm=confirm,
        connected=total("connected"),
        max_connected=total("max_connected"),
        connect_failures=total("connect_failures"),
        connect_failure_causes=counted("connect_failure_causes"),
        connections_lost=total("connections_lost"),
        all_connected_s=longest("all_connected_s"),
        full_reconnect_s=longest("full_reconnect_s"),
        rss_prepared_kib=total("rss_prepared_kib"),
        rss_connected_kib=total("rss_connected_kib"),
        steady_acked_per_s=sum(steady) if steady else None,
        sent=total("sent"),
        pending=total("pending"),
        behaviours=counted("behaviours"),
        ignored=ignored,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def sigterm_as_ctrl_c() -> Any:
    """From now on SIGTERM (what a supervisor, ``docker stop`` or a sharded parent sends) raises
    ``KeyboardInterrupt("SIGTERM")`` as Ctrl-C does, so the same cleanup runs: by default it
    ends the process at once, leaving a parent's shards running and losing the state store's
    deferred acks and receipts. Returns the handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def run_shards(
    child_args: Callable[[int, Path], list[str]],
    processes: int,
    workdir: Path,
    timeout: float,
    confirm: bool,
    on_tick: Callable[[FleetSummary], None] | None = None,
) -> FleetSummary:
    """Start ``processes`` children (``edgetally`` + ``child_args(k, summary_file)``), wait, add up."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = [workdir / f"shard-{k}.json" for k in range(processes)]
    children: list[subprocess.Popen[bytes]] = []
    previous = sigterm_as_ctrl_c()  # the shards are stopped with the parent (the finally below)
    try:
        for k, file in enumerate(files):
            with open(workdir / f"shard-{k}.log", "ab") as log:
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "edgetally", *child_args(k, file)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "NO_COLOR": "1"},
                    )
                )
        deadline = time.monotonic() + timeout + 60
        while any(c.poll() is None for c in children):
            if time.monotonic() > deadline:
                raise FleetError(f"shards still running {timeout + 60:.0f}s after start; killed")
            if on_tick is not None:
                on_tick(aggregate([read_summary(f) for f in files], confirm))
            time.sleep(POLL_S)  # progress refresh while the children run
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for child in children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)
    parts = [read_summary(f) for f in files]
    failed = [k for k, (c, p) in enumerate(zip(children, parts, strict=True)) if c.returncode not in (0, 1) or not p]
    if failed:
        tails = "; ".join(f"shard {k}: {(workdir / f'shard-{k}.log').read_text()[-300:]!r}" for k in failed)
        raise FleetError(f"shard(s) {failed} failed: {tails}")
    summary = aggregate(parts, confirm)
    if on_tick is not None:
        on_tick(summary)
    return summary
