"""A precinct's two kinds of source, tabulators and manual entry (docs/protocol.md section 16).

After a group is written, each accepted or duplicate outcome learns the accepted ballots of its
precinct by the device's own kind of source and by the other kind (``devices.ballots`` summed by
``devices.source``, in the group's transaction): what the rules' ``source_ballots()`` and
``other_source_ballots()`` read, so a rule can flag a precinct reported both by its tabulators
and by hand (the default rule ``precinct-two-sources``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, select

from cloud import models
from protocol import Registry

if TYPE_CHECKING:
    from cloud.ledger.ledger import Outcome


def with_sources(conn: Connection, outcomes: Sequence[Outcome], registry: Registry) -> tuple[Outcome, ...]:
    """``outcomes`` with ``source_ballots``/``other_source_ballots`` of their device's precinct."""
    entries = {o.device: registry.devices[o.device] for o in outcomes if o.device is not None and o.device in registry.devices}
    precincts = sorted({e.precinct for e in entries.values()})
    if not precincts:
        return tuple(outcomes)
    d = models.devices.c
    rows = conn.execute(
        select(d.precinct, d.source, func.coalesce(func.sum(d.ballots), 0))
        .where(d.election == registry.election.id, d.precinct.in_(precincts), d.max_seq > 0)
        .group_by(d.precinct, d.source)
    )
    ballots = {(precinct, source): int(n) for precinct, source, n in rows}
    out: list[Outcome] = []
    for o in outcomes:
        entry = entries.get(o.device) if o.device is not None else None
        if entry is None or o.device_ballots is None:
            out.append(o)
            continue
        mine = ballots.get((entry.precinct, entry.source), 0)
        other = sum(n for (p, s), n in ballots.items() if p == entry.precinct and s != entry.source)
        out.append(replace(o, source_ballots=mine, other_source_ballots=other))
    return tuple(out)
