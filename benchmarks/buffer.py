"""Micro-benchmark of the gateway buffer's hot path: put_many, fetch_pack, confirm.

    .venv/bin/python -m benchmarks.buffer [--rows 50000] [--repeat 5] [--baseline REV] [--sync full]

Each measurement runs in a fresh process on a fresh file in a temporary directory:

* ``ingest``  put_many in groups of 500 (the writer's group commit), the uplink idle;
* ``drain``   fetch_pack(256) then confirm in chunks of 64 (PUBACKs arriving), until empty;
* ``steady``  both interleaved, one group in and one group out, as with the cloud link up;
  ``steady+usage`` also reads ``usage()`` after every commit (what backpressure does), and
  ``steady+purge`` runs with retention 0 and ``purge_expired()`` after every drained group.

``--baseline REV`` also runs the same workload against the buffer of git revision REV
(extracted to a temporary directory, nothing in the work tree changes), alternating runs
of both so that the machine's drift hits both alike, and prints the ratio of medians.
Rows are envelope-sized (600 bytes), 91 devices, unique (device, seq).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from benchmarks._json import write_json

ROOT = Path(__file__).resolve().parents[1]
GROUP = 500
WINDOW = 256
PUBACK_CHUNK = 64
PAYLOAD = 600
DEVICES = 91


def _messages(new_message: Any, pending: Any, start: int, count: int) -> list[Any]:
    now = time.time()
    return [
        new_message(
            topic=f"edgetally/v1/el/dev-{i % DEVICES}/batch",
            payload=(b"%08d" % i) * (PAYLOAD // 8),
            state=pending,
            received_at=now,
            election="el",
            device=f"dev-{i % DEVICES}",
            seq=i,
            body_hash=f"{i:064x}",
        )
        for i in range(start, start + count)
    ]


def _drain_some(buffer: Any, limit: int) -> int:
    done = 0
    while done < limit:
        rows = buffer.fetch_pack(min(WINDOW, limit - done))
        if not rows:
            break
        ids = [row.id for row in rows]
        for at in range(0, len(ids), PUBACK_CHUNK):
            buffer.confirm(ids[at : at + PUBACK_CHUNK])
        done += len(rows)
    return done


def measure(workload: str, rows: int, sync: str) -> tuple[float, float]:
    """Rows per second of wall-clock and of CPU time for ``workload``, with whichever
    ``gateway`` package is importable."""
    from gateway.buffer.rows import NewMessage
    from gateway.buffer.schema import State
    from gateway.buffer.store import Buffer
    from gateway.config import SyncMode

    groups = [_messages(NewMessage, State.PENDING, s, GROUP) for s in range(0, rows, GROUP)]
    options: dict[str, Any] = {"sync": SyncMode(sync)}
    if workload == "steady+purge":
        options["delivered_retention_s"] = 0.0
    with tempfile.TemporaryDirectory() as work, Buffer(Path(work) / "b.db", **options) as buffer:
        started, cpu = time.perf_counter(), time.process_time()
        if workload == "ingest":
            for group in groups:
                buffer.put_many(group)
        elif workload == "drain":
            for group in groups:
                buffer.put_many(group)
            started, cpu = time.perf_counter(), time.process_time()
            if _drain_some(buffer, rows) != rows:
                raise RuntimeError("drain did not hand out every row")
        else:
            for group in groups:
                buffer.put_many(group)
                if workload == "steady+usage":
                    buffer.usage()
                _drain_some(buffer, len(group))
                if workload == "steady+purge":
                    buffer.purge_expired()
        return rows / (time.perf_counter() - started), rows / (time.process_time() - cpu)


def _child(args: argparse.Namespace) -> None:
    if args.impl_root:
        sys.path.insert(0, args.impl_root)
    wall, cpu = measure(args.workload, args.rows, args.sync)
    print(json.dumps({"rate": wall, "cpu_rate": cpu}))


def _extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "gateway"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _run(workload: str, rows: int, sync: str, impl_root: Path | None) -> tuple[float, float]:
    command = [sys.executable, "-m", "benchmarks.buffer", "--child", "--workload", workload]
    command += ["--rows", str(rows), "--sync", sync]
    if impl_root is not None:
        command += ["--impl-root", str(impl_root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["rate"]), float(result["cpu_rate"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--baseline", metavar="REV", help="git revision to compare against")
    parser.add_argument(
        "--workloads", default="ingest,drain,steady,steady+usage,steady+purge"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--impl-root", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    workloads = args.workloads.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        baseline = _extract(args.baseline, Path(scratch)) if args.baseline else None
        current: dict[str, list[tuple[float, float]]] = {w: [] for w in workloads}
        previous: dict[str, list[tuple[float, float]]] = {w: [] for w in workloads}
        for _ in range(args.repeat):
            for workload in workloads:
                base_ok = baseline is not None and not workload.startswith("steady+")
                if base_ok:
                    previous[workload].append(_run(workload, args.rows, args.sync, baseline))
                current[workload].append(_run(workload, args.rows, args.sync, None))
    print(
        f"buffer hot path, {args.rows:,} rows of {PAYLOAD} B, synchronous={args.sync},"
        f" {args.repeat} runs each; rows/s: median (min-max) of wall-clock, then of CPU time"
    )
    header = f"{'workload':<14}{'this tree':>24}{'cpu':>9}"
    if args.baseline:
        header += f"{'baseline ' + args.baseline[:12]:>26}{'cpu':>9}{'ratio':>7}{'cpu':>6}"
    print(header)
    for workload in workloads:
        now = current[workload]
        line = f"{workload:<14}{_fmt([w for w, _ in now]):>24}{_median([c for _, c in now]):>9,.0f}"
        # steady+usage and steady+purge compare with the baseline's plain steady run.
        against = previous[workload] or previous.get(workload.split("+")[0], [])
        if against:
            ratio = _median([w for w, _ in now]) / _median([w for w, _ in against])
            cpu_ratio = _median([c for _, c in now]) / _median([c for _, c in against])
            label = _fmt([w for w, _ in against]) + ("" if previous[workload] else "*")
            line += f"{label:>26}{_median([c for _, c in against]):>9,.0f}{ratio:>7.2f}{cpu_ratio:>6.2f}"
        print(line)
    if args.baseline and any(w.startswith("steady+") for w in workloads):
        print("* steady+usage and steady+purge are compared with the baseline's plain steady run")
    rates = {w: _median([r for r, _ in current[w]]) for w in workloads}
    ratios = {f"buffer.{w.replace('+', '_')}_ingest_ratio": rates[w] / rates["ingest"] for w in workloads if w != "ingest" and "ingest" in rates}
    ratios |= {f"buffer.{w}_baseline_ratio": rates[w] / _median([r for r, _ in previous[w]]) for w in workloads if previous[w]}
    write_json(args.json, ratios, rates)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


if __name__ == "__main__":
    main()
