"""What the results service serves: every unit's figures, read once per change, as bytes.

One :class:`Poller` per server reads the database; every HTTP request and every SSE subscriber
is answered from the :class:`Snapshot` it holds, so a thousand pollers cost one query.

The **results version** is the number of ledger rows of the election, plus its duplicates and
every rejection: each grows by one with each message the cloud accepts, absorbs or refuses,
and none ever shrinks (the ledger is append-only), so the version only rises, is the same for
the same database whichever server computes it, and a change of it is a change of some figure.
The poll reads that count alone (one statement); only when it moved are the figures read
again (every unit from one read, cloud/results/results.py ``read_every_unit``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from cloud.results.results import read_every_unit, read_snapshot, sa_query, stored_election

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from cloud.results.rollups import Rollup
    from protocol import Election

log = logging.getLogger(__name__)

_VERSION = (
    "SELECT (SELECT count(*) FROM ledger WHERE election = :eid)"
    " + (SELECT coalesce(sum(duplicates), 0) FROM devices WHERE election = :eid)"
    " + (SELECT count(*) FROM rejections)"
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The figures of every unit at one results version."""

    election: str
    root: str
    version: int
    at: datetime  # when this server read them
    units: dict[str, bytes]  # unit id -> its JSON (``cloud results --json`` for that unit)
    etags: dict[str, str] = field(default_factory=dict)  # unit id -> strong ETag of its bytes
    definition: bytes = b"{}"  # the election (contests, choices and units with their names)
    model: Election | None = None  # the same, as the model (for the exports)
    rollups: Mapping[str, Rollup] = field(default_factory=dict)  # unit id -> its figures

    def etag(self, unit: str) -> str:
        return self.etags[unit]


@dataclass(frozen=True, slots=True)
class Change:
    """What one poll found: the new snapshot and the units whose figures changed."""

    snapshot: Snapshot
    changed: tuple[str, ...]

    def event(self) -> bytes:
        """The SSE data: version, time, and the changed units' new figures (compact)."""
        units = {unit: _summary(orjson.loads(self.snapshot.units[unit])) for unit in self.changed}
        return orjson.dumps({"version": self.snapshot.version, "at": _iso(self.snapshot.at), "units": units})


def etag_of(body: bytes) -> str:
    """A strong ETag: a digest of the exact bytes served."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    keys = ("ballots", "batches", "contests", "turnout", "precincts_reporting", "precincts_total", "devices_final", "devices_total",
            "devices_reporting", "devices_confirmed", "devices_silent", "rejections")
    return {k: figures[k] for k in keys}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


class Poller:
    """Reads the results of one election when they changed. Constructing it does no I/O; call
    :meth:`poll` from one thread at a time (the server's poll task)."""

    def __init__(self, engine: Engine, election_id: str | None = None) -> None:
        self._engine = engine
        self._election_id = election_id
        self.current: Snapshot | None = None
        self.polls = 0
        self.reads = 0

    def poll(self) -> Change | None:
        """The change since the last poll, or None. :class:`cloud.CloudError` subclasses when
        the database cannot be read (the caller keeps serving what it has)."""
        self.polls += 1
        with read_snapshot(self._engine, "reading results for the results service") as conn:
            query = sa_query(conn)
            old = self.current
            # The stored election is parsed once, not at every poll: a poll is one count.
            election = old.model if old is not None and old.model is not None else stored_election(query, self._election_id)
            version = int(next(iter(query(_VERSION, {"eid": election.id})))[0])
            if old is not None and old.version == version:
                return None
            self.reads += 1
            every = read_every_unit(query, election)
        units = {unit: orjson.dumps(results.to_mapping(), option=orjson.OPT_SORT_KEYS) for unit, results in every.items()}
        etags = {unit: etag_of(body) for unit, body in units.items()}
        definition = old.definition if old is not None else orjson.dumps(election.to_mapping())
        rollups = {unit: results.rollup for unit, results in every.items()}
        snapshot = Snapshot(election.id, election.root, version, datetime.now(UTC), units, etags, definition, election, rollups)
        changed = tuple(u for u in units if old is None or old.units.get(u) != units[u])
        self.current = snapshot
        log.info("results of %s at version %d (%d units changed)", election.id, version, len(changed))
        return Change(snapshot, changed)
