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
from protocol.registry import DeviceEntry

if TYPE_CHECKING:
    from cloud.elections import Elections
    from cloud.ledger.ledger import Outcome


def with_sources(conn: Connection, outcomes: Sequence[Outcome], elections: Elections) -> tuple[Outcome, ...]:
    """``outcomes`` with ``source_ballots``/``other_source_ballots`` of their device's precinct.

    One query for the whole group, whatever the number of elections in it; none at all (both
    left null) for elections whose registry has no manual source, the common case: no query on
    the ingest path of a tabulator-only election."""
    entries: dict[tuple[str, str], DeviceEntry] = {}
    for o in outcomes:
        if o.election is None or o.device is None or o.device_ballots is None:
            continue
        registry = elections.get(o.election)
        if registry is None or not registry.has_manual_sources:
            continue
        entry = registry.devices.get(o.device)
        if entry is not None:
            entries[(o.election, o.device)] = entry
    if not entries:
        return tuple(outcomes)
    wanted = {(election, e.precinct) for (election, _), e in entries.items()}
    d = models.devices.c
    rows = conn.execute(
        select(d.election, d.precinct, d.source, func.coalesce(func.sum(d.ballots), 0))
        .where(d.election.in_(sorted({e for e, _ in wanted})), d.precinct.in_(sorted({p for _, p in wanted})), d.max_seq > 0)
        .group_by(d.election, d.precinct, d.source)
    )
    ballots = {(election, precinct, source): int(n) for election, precinct, source, n in rows if (election, precinct) in wanted}
    out: list[Outcome] = []
    for o in outcomes:
        entry = entries.get((o.election, o.device)) if o.election is not None and o.device is not None else None
        if entry is None or o.election is None:
            out.append(o)
            continue
        mine = ballots.get((o.election, entry.precinct, entry.source), 0)
        other = sum(n for (e, p, s), n in ballots.items() if e == o.election and p == entry.precinct and s != entry.source)
        out.append(replace(o, source_ballots=mine, other_source_ballots=other))
    return tuple(out)
