"""What a scenario's checks observe (:mod:`edgetally.scenarios.checks`): the truth, read for
what it expects, and the stores, read-only: the cloud database, every gateway buffer file.

:class:`Observations` says where to look and what the runner measured; :class:`StoreReader`
reads each store it names once, and a store that cannot be read (``_READ_ERRORS``) raises
:class:`_Unreadable` at every use, so every check that needs it fails naming the error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud import models
from cloud._exceptions import CloudError
from cloud.audit.audit import AuditReport, run_audit
from cloud.db import make_engine
from cloud.results.results import Results, load_results, read_snapshot
from gateway._exceptions import GatewayError
from gateway.buffer.schema import State
from gateway.inspect.snapshot import buffer_stats, snapshot
from protocol import ProtocolError, Registry, sha256_hex

# What a store raises when it cannot be read (missing, locked, not ours, damaged; for the
# audit also a keys directory that is missing or not the cloud's).
_READ_ERRORS = (CloudError, GatewayError, ProtocolError, SQLAlchemyError, OSError)

T = TypeVar("T")
Key = tuple[str, int]  # (device, seq)


# -- merging the truth files of a sharded fleet ------------------------------------------
# -- what the truth says --------------------------------------------------------------------
def expected_accepts(truth: Mapping[str, Any]) -> dict[Key, str]:
    """(device, seq) -> body hash: every batch that must be in the ledger exactly once."""
    return {
        (d, int(a["seq"])): str(a["body_hash"])
        for d, e in truth["devices"].items()
        for a in e["accept"]
    }


def expected_refusals(truth: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Payload SHA-256 -> (where, reason): every message that must be refused, and by whom."""
    return {
        str(r["payload_hash"]): (str(r["where"]), str(r["reason"]))
        for e in truth["devices"].values()
        for r in e["reject"]
    }


def seq_span(text: str) -> set[int]:
    """An audit ``repairs`` row's ``seqs``, ``"3"`` or ``"3-4"``, as a set."""
    first, _, last = text.partition("-")
    return set(range(int(first), int(last or first) + 1))


# -- reading the stores (read-only) ----------------------------------------------------------
def cloud_engine(db_url: str) -> Engine:
    """A reading engine on the cloud database; a missing SQLite file is an error, not created."""
    return make_engine(db_url, create=False, writer=False)


def read_ledger(engine: Engine, election: str) -> dict[Key, list[str]]:
    """(device, seq) -> the body hashes of its ledger rows in ``election`` (one, if all is well)."""
    lc = models.ledger.c
    held: dict[Key, list[str]] = {}
    with read_snapshot(engine, "reading the ledger") as conn:
        query = select(lc.device, lc.seq, lc.body_hash).where(lc.election == election)
        for device, seq, digest in conn.execute(query):
            held.setdefault((device, int(seq)), []).append(digest)
    return held


def _ledger_ballots(engine: Engine, election: str) -> int:
    lc = models.ledger.c
    with read_snapshot(engine, "reading the ledger") as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(lc.ballots), 0)).where(lc.election == election)
        ).scalar()
    return int(total or 0)


def read_refusals(engine: Engine, buffers: Iterable[Path]) -> dict[str, set[tuple[str, str]]]:
    """Payload SHA-256 -> {(where, reason)} over the cloud's rejections table (``cloud``) and
    the quarantine of every gateway buffer (``gateway``)."""
    found: dict[str, set[tuple[str, str]]] = {}
    rc = models.rejections.c
    with read_snapshot(engine, "reading the rejections") as conn:
        for digest, reason in conn.execute(select(rc.payload_hash, rc.reason)):
            found.setdefault(digest, set()).add(("cloud", reason))
    for path in buffers:
        with snapshot(path) as snap:
            rows = snap.conn.execute(
                "SELECT payload, reason FROM messages WHERE state = ?", (State.QUARANTINED.value,)
            )
            for payload, reason in rows:
                found.setdefault(sha256_hex(bytes(payload)), set()).add(("gateway", reason))
    return found


def undelivered(buffers: Iterable[Path]) -> dict[Path, tuple[int, int]]:
    """Buffer -> (pending, in flight): what each gateway still has to forward."""
    left: dict[Path, tuple[int, int]] = {}
    for path in buffers:
        states = buffer_stats(path).states
        left[path] = (states[State.PENDING], states[State.INFLIGHT])
    return left


# -- the observations ----------------------------------------------------------------------
@dataclass(frozen=True)
class Observations:
    """Where to look and what the runner measured; :func:`judge` reads the rest itself."""

    db_url: str  # the cloud database
    keys_dir: Path  # the registry the cloud ran with (for the audit)
    buffers: tuple[Path, ...]  # every gateway's buffer file
    fleet_summaries: tuple[Mapping[str, Any], ...]  # each `devices run --summary FILE`
    truth: Mapping[str, Any]  # the fleet's truth (merge_truths of the shards')
    last_fault_s: float | None  # seconds from start to the last timeline action; None: none
    drained_s: float | None  # seconds from start to drain; None: never drained
    peak_buffer_depth: int  # the most batches pending + in flight the runner saw in a buffer
    duplicates_delivered: int | None = None  # what the runner counted; None: the cloud's count
    rogue: Mapping[str, Any] | None = None  # the rogue client's report (edgetally/rogue.py), if one ran
    served: bool = False  # the scenario ran `cloud serve` (topology.serve)
    served_results: Mapping[str, Any] | None = None  # what its /api/results showed at the end
    resend_after: float | None = None  # the devices' resend delay on a NATS cloud cluster; None: no cluster


class _Unreadable(Exception):
    """A store could not be read; the message says which and why."""


class StoreReader:
    """The stores ``obs`` names, each read once; :class:`edgetally.scenarios.checks._Judge` is one."""

    def __init__(self, obs: Observations) -> None:
        self.obs = obs
        self.election = str(obs.truth["election"])
        self._engine: Engine | None = None
        self._cache: dict[str, Any] = {}

    # reading, once each; a failure is remembered and fails every check that needs it
    def _once(self, name: str, read: Callable[[], T]) -> T:
        if name not in self._cache:
            try:
                self._cache[name] = read()
            except _READ_ERRORS as err:
                self._cache[name] = _Unreadable(f"cannot read {name}: {err}")
        value = self._cache[name]
        if isinstance(value, _Unreadable):
            raise value
        return value  # type: ignore[no-any-return]

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._once("the cloud database", lambda: cloud_engine(self.obs.db_url))
        return self._engine

    def ledger(self) -> dict[Key, list[str]]:
        return self._once("the ledger", lambda: read_ledger(self.engine, self.election))

    def results(self) -> Results:
        return self._once("the cloud results", lambda: load_results(self.engine, self.election))

    def audit(self) -> AuditReport:
        def read() -> AuditReport:
            registry = Registry.load(self.obs.keys_dir)
            return run_audit(self.engine, registry, self.election, limit=0)

        return self._once("the audit", read)
