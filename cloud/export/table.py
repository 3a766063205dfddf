"""An election's results as one CSV table a newsroom tool loads: a row per reporting unit x
contest x choice, units in tree order (each parent before its children), contests and choices
in the election's order, zeros included. Written with the ``csv`` module (RFC 4180: quoted
where needed, CRLF line ends), UTF-8, one header row::

    unit_id, unit_name, unit_type, parent_id, contest_id, contest_name, contest_kind,
    choice_id, choice_name, votes, ballots, precincts_reporting, precincts_total, status

``unit_type`` is the unit's kind in the election model (state, county, precinct, ...);
``parent_id`` is empty at the root. ``ballots`` are the ballots cast in the unit (the same on
each of its rows). ``precincts_reporting`` / ``precincts_total`` count the precincts at or
below the unit whose devices all have their final batch (a precinct: 1 or 0 of 1).
``status`` is the unit's NIST CountItemStatus: completed, in-process or not-processed
(cloud/export/nist.py). Every figure is the one ``cloud results --json`` shows for the unit.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from cloud.export.nist import count_status

if TYPE_CHECKING:
    from cloud.export.export import ExportData

HEADER = (
    "unit_id",
    "unit_name",
    "unit_type",
    "parent_id",
    "contest_id",
    "contest_name",
    "contest_kind",
    "choice_id",
    "choice_name",
    "votes",
    "ballots",
    "precincts_reporting",
    "precincts_total",
    "status",
)


def csv_rows(data: ExportData) -> list[tuple[str | int, ...]]:
    """The table's rows, header first."""
    rows: list[tuple[str | int, ...]] = [HEADER]
    election = data.election
    for unit in election.walk():
        rollup = data.rollups[unit.id]
        status = count_status(rollup)
        for contest in election.contests:
            votes = rollup.contests.get(contest.id, {})
            for choice in contest.choices:
                rows.append((
                    unit.id, unit.name, unit.kind, unit.parent or "",
                    contest.id, contest.name, contest.kind, choice.id, choice.name,
                    votes.get(choice.id, 0), rollup.ballots,
                    rollup.precincts_reporting, rollup.precincts_total, status,
                ))  # fmt: skip
    return rows


def csv_text(data: ExportData) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(csv_rows(data))
    return buffer.getvalue()
