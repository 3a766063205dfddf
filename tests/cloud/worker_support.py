"""`edgetally cloud run` as a real process for the worker tests, on SQLite or PostgreSQL, and a
way to hold the database's writers back (the worker can receive, never commit)."""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cloud.db import make_engine
from cloud.results.results import load_results
from edgetally.brokers import BrokerProcess
from tests.cloud.support import ledger_rows
from tests.helpers import start_cli, wait_until
from tests.support.wire import pki_args


class Cloud:
    """One `edgetally cloud run` that can be started, SIGKILLed and started again."""

    def __init__(
        self,
        workdir: Path,
        broker: BrokerProcess,
        keys_dir: Path,
        processes: list[subprocess.Popen[bytes]],
        *,
        db_url: str | None = None,
        name: str = "cloud",
        args: Sequence[str] = (),
        debug: bool = False,
    ) -> None:
        self.db_url = db_url or f"sqlite:///{workdir / 'cloud.db'}"
        self.log = workdir / f"{name}.log"
        self.ready = workdir / f"{name}.ready"
        self._broker = broker
        self._keys = keys_dir
        self._processes = processes
        self._args = list(args)
        self._debug = debug
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> None:
        self.ready.unlink(missing_ok=True)
        level = ["--log-level", "DEBUG"] if self._debug else []
        self.proc = start_cli(
            *level, "cloud", "run", "--broker", self._broker.url, "--db", self.db_url,
            "--keys", str(self._keys), "--ready-file", str(self.ready), *pki_args(self._broker.url), *self._args, log=self.log,
        )  # fmt: skip
        self._processes.append(self.proc)
        if wait:
            wait_until(self._ready_or_dead, 30, "the cloud's ready file")
            assert self.ready.exists(), f"cloud exited {self.proc.poll()}:\n{self.text()}"

    def _ready_or_dead(self) -> bool:
        return self.ready.exists() or (self.proc is not None and self.proc.poll() is not None)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text()))

    def stopped_totals(self) -> tuple[int, int, int]:
        """(accepted, duplicates, rejected) from the worker's last stop line."""
        found = re.findall(
            r"cloud worker stopped: (\d+) accepted, (\d+) duplicates, (\d+) rejected", self.text()
        )
        assert found, f"no stop line in the log:\n{self.text()}"
        accepted, duplicates, rejected = found[-1]
        return int(accepted), int(duplicates), int(rejected)

    def ledger(self) -> int:
        engine = make_engine(self.db_url, create=False, writer=False)
        try:
            return ledger_rows(engine)
        finally:
            engine.dispose()

    def results(self) -> dict[str, object]:
        engine = make_engine(self.db_url, create=False, writer=False)
        try:
            return load_results(engine).to_mapping()
        finally:
            engine.dispose()


@contextlib.contextmanager
def writes_held(db_url: str) -> Iterator[None]:
    """While inside, no cloud worker can commit a ledger row (it can read and wait).

    SQLite: a transaction holding the write lock (BEGIN IMMEDIATE). PostgreSQL: the ledger
    table locked in EXCLUSIVE mode (reads go on, inserts wait).
    """
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        lock = sqlite3.connect(url.database or "", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.execute(text("LOCK TABLE ledger IN EXCLUSIVE MODE"))
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        engine.dispose()
