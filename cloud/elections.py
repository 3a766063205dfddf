"""The elections one cloud serves, and how an election joins a running cloud.

A cloud worker serves every election whose registry it holds: the ones it was started with
(``cloud run --keys DIR``, repeatable) and any stored in the database since
(``cloud elections add --db URL --keys DIR``). The database is the announcement: a worker that
meets a batch of an election it does not hold reads the stored elections again (at most once a
second, so a flood of unknown topics costs one query a second) and serves the new one from that
batch on, without a restart. A batch of an election no worker holds is refused
(``unknown_election``) and kept, like every reject; its device sends it again later.

    Served          one election: its registry and the key that signs its receipts
    Elections       the set a worker serves; verify threads read it while it grows
    served_from     a ``--keys`` directory, checked: registry + cloud-signing.key that match
    store           write an election, its registry and its devices (refuses a changed definition)
    stored          list what the database holds

Each election keeps its own cloud signing key (``devices provision`` writes one per keys
directory): a device verifies receipts with the key in its own registry, so a receipt is signed
with the key of the batch's election. Device rows, ledger rows and tallies are keyed by
(election, device): a device id provisioned in two elections is two devices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud._exceptions import ConfigError, ElectionMismatch
from cloud.db import insert_missing, translate_errors
from protocol import GENESIS_HASH, ProtocolError, Registry, SigningKey, canonical

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # at most one read of the stored elections per second, on a miss


@dataclass(frozen=True)
class Served:
    """One election a worker serves. ``signing_key`` None: nothing of it is ever receipted
    (tests and benchmarks that record only); ``keys_dir`` is where that key was found."""

    registry: Registry
    signing_key: SigningKey | None = None
    keys_dir: Path | None = None

    @property
    def id(self) -> str:
        return self.registry.election.id


class Elections:
    """The elections a worker serves, by id. Constructing it does no I/O.

    ``loader`` (the database, :func:`load_served`) is asked for elections not yet held when a
    lookup misses, at most once every ``refresh_s``. The map is replaced whole, never changed
    in place, so verify threads read it without a lock.
    """

    def __init__(
        self,
        served: Iterable[Served] = (),
        *,
        loader: Callable[[frozenset[str]], list[Served]] | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._served: Mapping[str, Served] = {s.id: s for s in served}
        self._loader = loader
        self._refresh_s = refresh_s
        self._refreshed_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def of(cls, registry: Registry | Elections, signing_key: SigningKey | None = None) -> Elections:
        """``registry`` as a set of elections (itself, if it already is one)."""
        if isinstance(registry, Elections):
            return registry
        return cls([Served(registry, signing_key)])

    def __len__(self) -> int:
        return len(self._served)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._served))

    def served(self) -> list[Served]:
        return [self._served[e] for e in sorted(self._served)]

    def get(self, election: str) -> Registry | None:
        """The registry of ``election``; on a miss, the stored elections are read again
        (rate-limited) in case it was added while this worker runs."""
        served = self._served.get(election)
        if served is None and self._loader is not None:
            self.refresh()
            served = self._served.get(election)
        return None if served is None else served.registry

    def signing_key(self, election: str) -> SigningKey | None:
        served = self._served.get(election)
        return None if served is None else served.signing_key

    def describe(self, limit: int = 5) -> str:
        """The ids served, for an error message: ``'e1', 'e2' and 98 more``."""
        ids = self.ids
        if not ids:
            return "no election"
        shown = ", ".join(repr(e) for e in ids[:limit])
        return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"

    def refresh(self, *, force: bool = False) -> list[str]:
        """Ask the loader for elections not held yet; return the ids newly served."""
        if self._loader is None:
            return []
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed_at < self._refresh_s:
                return []
            self._refreshed_at = now
            found = self._loader(frozenset(self._served))
            added = [s for s in found if s.id not in self._served]
            if added:
                grown = dict(self._served)
                grown.update((s.id, s) for s in added)
                self._served = grown  # one assignment: readers see the old map or the new one
        for s in added:
            log.info("now serving election %s (%d devices)", s.id, len(s.registry.devices))
        return [s.id for s in added]


KeyFor = Callable[[str], SigningKey | None]  # election -> the key that signs its receipts


def key_for(keys: SigningKey | Elections) -> KeyFor:
    """One key for every election, or each election's own."""
    if isinstance(keys, Elections):
        return keys.signing_key
    return lambda election: keys


# -- keys directories -----------------------------------------------------------------------
def served_from(keys: Path) -> Served:
    """The election of a ``--keys`` directory: its registry and its cloud signing key, which
    must be the registry's cloud key (the one its devices verify receipts with)."""
    from protocol.registry import load_cloud_key

    if not keys.is_dir():
        raise ConfigError(f"--keys {keys}: no such directory")
    try:
        registry = Registry.load(keys)
        key = load_cloud_key(keys)
    except ProtocolError as err:
        raise ConfigError(f"--keys {keys}: {err}") from err
    check_signing_key(keys, registry, key)
    return Served(registry, key, keys.resolve())


def check_signing_key(keys: Path, registry: Registry, key: SigningKey) -> None:
    if registry.cloud_key is None:
        raise ConfigError(
            f"--keys {keys}: registry.json holds no cloud key, so devices could not verify"
            " receipts (run `edgetally devices provision` again: it keeps the device keys)"
        )
    if registry.cloud_key.kid != key.public.kid:
        raise ConfigError(
            f"--keys {keys}: cloud-signing.key (kid {key.public.kid}) is not the cloud key in"
            f" registry.json (kid {registry.cloud_key.kid}); devices would ignore every receipt"
            " (run `edgetally devices provision` again)"
        )


# -- the database ---------------------------------------------------------------------------
def store(conn: Connection, served: Served) -> None:
    """Store ``served``'s election, registry and a row per device, in ``conn``'s transaction.

    Raises :class:`ElectionMismatch` if the database holds another definition of the election
    (tallies must never mix two definitions) or a registry in which a device has another key
    (every stored batch of it would stop verifying). A registry that only adds devices replaces
    the stored one.
    """
    registry = served.registry
    election = registry.election
    definition = canonical.dumps(election.to_mapping()).decode("utf-8")
    text = canonical.dumps(registry.to_mapping()).decode("utf-8")
    table = models.elections
    # Several workers may start together on an empty database: whoever inserts first wins,
    # the others find its row (ON CONFLICT waits for it to commit), then compare.
    row = {"election": election.id, "name": election.name, "definition": definition, "stored_at": datetime.now(UTC)}
    insert_missing(conn, table, [row], key=("election",))
    held_definition, held_registry, held_dir = conn.execute(
        select(table.c.definition, table.c.registry, table.c.keys_dir).where(table.c.election == election.id)
    ).one()
    if held_definition != definition:
        raise ElectionMismatch(
            f"the database holds another definition of election {election.id!r};"
            " use a fresh database for a changed election"
        )
    if held_registry is not None and held_registry != text:
        _check_keys_kept(election.id, Registry.from_mapping(canonical.loads(held_registry, what="stored registry")), registry)
    keys_dir = None if served.keys_dir is None else str(served.keys_dir)
    if held_registry != text or (keys_dir is not None and held_dir != keys_dir):
        conn.execute(
            update(table)
            .where(table.c.election == election.id)
            .values(registry=text, keys_dir=keys_dir if keys_dir is not None else held_dir)
        )
    insert_missing(conn, models.devices, device_rows(registry, sorted(registry.devices)), key=("election", "device"))


def _check_keys_kept(election: str, held: Registry, new: Registry) -> None:
    for device, entry in held.devices.items():
        now = new.devices.get(device)
        if now is None or now.kid != entry.kid:
            change = "drops" if now is None else f"gives another key (kid {now.kid}) to"
            raise ElectionMismatch(
                f"election {election!r}: the registry {change} device {device!r}, whose stored"
                f" batches were signed with kid {entry.kid}; a registry may only add devices"
            )
    if held.cloud_key is not None and (new.cloud_key is None or new.cloud_key.kid != held.cloud_key.kid):
        raise ElectionMismatch(
            f"election {election!r}: the registry names another cloud key than the stored one;"
            " its devices would ignore every receipt"
        )


def device_rows(registry: Registry, names: Iterable[str]) -> list[dict[str, Any]]:
    """Fresh device rows (nothing received yet) for ``names`` of ``registry``'s election."""
    election = registry.election.id
    return [
        {
            "election": election,
            "device": name,
            "precinct": registry.devices[name].precinct,
            "source": registry.devices[name].source,  # tabulator or manual (edgetally entry)
            "contiguous_seq": 0,
            "contiguous_hash": GENESIS_HASH,
            "final_seq": None,
            "max_seq": 0,
            "batches": 0,
            "duplicates": 0,
            "updated_at": None,
        }
        for name in names
    ]


@dataclass(frozen=True)
class StoredElection:
    election: str
    name: str
    devices: int
    keys_dir: str | None
    stored_at: datetime
    has_registry: bool


def stored(engine: Engine) -> list[StoredElection]:
    """Every election the database holds (``cloud elections list``)."""
    e, d = models.elections, models.devices
    counts = select(d.c.election, func.count().label("n")).group_by(d.c.election).subquery()
    query = (
        select(e.c.election, e.c.name, counts.c.n, e.c.keys_dir, e.c.stored_at, e.c.registry.is_not(None))
        .outerjoin(counts, counts.c.election == e.c.election)
        .order_by(e.c.election)
    )
    with translate_errors("listing elections"), engine.connect() as conn:
        return [StoredElection(r[0], r[1], int(r[2] or 0), r[3], r[4], bool(r[5])) for r in conn.execute(query)]


def load_served(engine: Engine) -> Callable[[frozenset[str]], list[Served]]:
    """A loader for :class:`Elections`: the stored elections not in ``held``, each with its
    signing key read from its ``keys_dir``. One that cannot be served (no registry stored, key
    unreadable or not the registry's) is skipped with an error logged once, and tried again on
    the next refresh."""
    from protocol.registry import load_cloud_key

    reported: set[tuple[str, str]] = set()

    def load(held: frozenset[str]) -> list[Served]:
        table = models.elections
        query = select(table.c.election, table.c.registry, table.c.keys_dir).where(table.c.registry.is_not(None))
        with translate_errors("reading stored elections"), engine.connect() as conn:
            rows = [r for r in conn.execute(query) if r[0] not in held]
        found: list[Served] = []
        for election, text, keys_dir in rows:
            try:
                registry = Registry.from_mapping(canonical.loads(text, what="stored registry"), source=f"stored registry of {election}")
                if keys_dir is None:
                    raise ConfigError("no keys directory stored (add it with `cloud elections add --keys DIR`)")
                directory = Path(keys_dir)
                key = load_cloud_key(directory)
                check_signing_key(directory, registry, key)
            except (ConfigError, ProtocolError) as err:
                if (election, str(err)) not in reported:
                    reported.add((election, str(err)))
                    log.error("cannot serve stored election %s: %s", election, err)
                continue
            found.append(Served(registry, key, directory))
        return found

    return load
