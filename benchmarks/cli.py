"""CLI latency: the wall time of three commands an operator runs in a loop, against
``python -c pass`` (the interpreter's own start) measured in the same run.

    scripts/bench cli [--runs 10]

The commands: ``edgetally --help``, ``edgetally gateway buffer stats --buffer F --json`` on a
fresh buffer file, and ``edgetally cloud results --db URL --json`` on a fresh, migrated SQLite
cloud database. Each is run ``--runs`` times as a child process (the same interpreter as this
script); the median is printed with the ratio to the baseline. The target is 0.3 s each.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks._json import write_json

TARGET_S = 0.3
TIMEOUT_S = 60.0
ELECTION = Path(__file__).resolve().parents[1] / "elections" / "sample.yaml"


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT_S)
    return time.perf_counter() - started


def _setup(tmp: Path, buffer: Path, db: str) -> None:
    """A fresh buffer file, and a migrated cloud database holding the sample election."""
    from cloud.db import make_engine
    from cloud.ledger.ledger import Ledger
    from devices.election_file import load_election
    from gateway.buffer.store import Buffer
    from protocol import Registry, provision

    with Buffer(buffer):
        pass
    subprocess.run([sys.executable, "-m", "edgetally", "cloud", "migrate", "--db", db], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=TIMEOUT_S)
    keys = tmp / "keys"
    provision(load_election(ELECTION), keys)
    engine = make_engine(db)
    Ledger(engine, Registry.load(keys), max_payload_bytes=64 * 1024).prepare()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        buffer = Path(tmp) / "buffer.db"
        db = f"sqlite:///{Path(tmp) / 'cloud.db'}"
        _setup(Path(tmp), buffer, db)
        commands = {
            "python -c pass (baseline)": [py, "-c", "pass"],
            "edgetally --help": [py, "-m", "edgetally", "--help"],
            "edgetally gateway buffer stats --buffer F --json": [py, "-m", "edgetally", "gateway", "buffer", "stats", "--buffer", str(buffer), "--json"],
            "edgetally cloud results --db URL --json": [py, "-m", "edgetally", "cloud", "results", "--db", db, "--json"],
        }
        medians: dict[str, float] = {}
        with Progress(transient=True) as progress:
            task = progress.add_task("timing commands", total=len(commands) * args.runs)
            for name, argv in commands.items():
                times = []
                for _ in range(args.runs):
                    times.append(_time(argv))
                    progress.advance(task)
                medians[name] = statistics.median(times)
    base = medians["python -c pass (baseline)"]
    table = Table(title=f"CLI wall time, median of {args.runs} runs ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})")
    table.add_column("command")
    table.add_column("median s", justify="right")
    table.add_column("x baseline", justify="right")
    table.add_column(f"<= {TARGET_S} s", justify="center")
    for name, median in medians.items():
        ok = "" if name.startswith("python") else ("yes" if median <= TARGET_S else "no")
        table.add_row(name, f"{median:.3f}", f"{median / base:.1f}", ok)
    Console().print(table)
    write_json(args.json, {f"cli.{_key(name)}_python_ratio": m / base for name, m in medians.items() if not name.startswith("python")}, medians)


def _key(command: str) -> str:
    """``edgetally gateway buffer stats --buffer F --json`` -> ``gateway_buffer_stats``."""
    return "_".join(w for w in command.split()[1:] if w.isalpha() and w.islower()) or "help"


if __name__ == "__main__":
    main()
