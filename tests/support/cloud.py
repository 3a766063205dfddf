"""`edgetally cloud run` as a real subprocess on a SQLite file, and what its database holds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cloud import models
from cloud.db import make_engine
from tests.helpers import run_cli, start_cli, wait_until
from tests.support.wire import pki_args


class CloudProcess:
    """One cloud worker on ``broker_url`` writing to ``tmp_path/cloud.db``."""

    def __init__(
        self,
        tmp_path: Path,
        broker_url: str,
        keys_dir: Path,
        processes: list[subprocess.Popen[bytes]],
    ) -> None:
        self.db_path = tmp_path / "cloud.db"
        self.db_url = f"sqlite:///{self.db_path}"
        self.log = tmp_path / "cloud.log"
        self.ready = tmp_path / "cloud.ready"
        self._broker_url = broker_url
        self._keys = keys_dir
        self._processes = processes
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, debug: bool = False) -> CloudProcess:
        self.ready.unlink(missing_ok=True)
        level = ["--log-level", "DEBUG"] if debug else []
        self.proc = start_cli(
            *level, "cloud", "run", "--broker", self._broker_url, "--db", self.db_url,
            "--keys", str(self._keys), "--ready-file", str(self.ready), *pki_args(self._broker_url), log=self.log,
        )  # fmt: skip
        self._processes.append(self.proc)
        proc = self.proc
        wait_until(
            lambda: self.ready.exists() or proc.poll() is not None, 30, "the cloud ready file"
        )
        assert proc.poll() is None, f"cloud exited {proc.returncode}:\n{self.text()}"
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _query(self, statement: Any) -> list[Any]:
        engine = make_engine(self.db_url, create=False, writer=False)
        try:
            with engine.connect() as conn:
                return list(conn.execute(statement).all())
        finally:
            engine.dispose()

    def ledger_keys(self) -> list[tuple[str, int]]:
        """(device, seq) of every ledger row (one row per key by the ledger's unique key)."""
        c = models.ledger.c
        return [(r.device, r.seq) for r in self._query(select(c.device, c.seq))]

    def ledger_count(self) -> int:
        return int(self._query(select(func.count()).select_from(models.ledger))[0][0])

    def rejections(self) -> list[Any]:
        c = models.rejections.c
        return self._query(select(c.topic, c.reason, c.detail, c.payload, c.device, c.seq))

    def gateways(self) -> list[dict[str, Any]]:
        out = run_cli("--log-level", "WARNING", "cloud", "gateways", "--db", self.db_url, "--json")
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result
