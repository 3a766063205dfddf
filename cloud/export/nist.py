"""An election's results as a NIST SP 1500-100 v2 ``ElectionReport`` (JSON).

The election model maps onto the common data format like this (every ``@id`` derived from
the election's own ids, so two exports of one election name everything alike)::

    reporting unit U        ReportingUnit      @id "gpu:U"; Type its kind if NIST knows it,
                                               else "other" + OtherType; ComposingGpUnitIds
                                               its children; SubUnitsReported/TotalSubUnits
                                               precincts reporting/total (not on precincts);
                                               VotersRegistered; one CountStatus (total)
    contest C, kind candidate   CandidateContest   @id "contest:C", VotesAllowed 1
    contest C, kind measure     BallotMeasureContest  @id "contest:C", Type ballot-measure
    choice H of candidate C   Candidate "candidate:C:H" + CandidateSelection "selection:C:H"
                              (a write-in choice: IsWriteIn true, its Candidate named as the
                              choice is, e.g. "Write-in")
    choice H of measure C     BallotMeasureSelection "selection:C:H", Selection its name
    votes of H in unit U      VoteCounts {GpUnitId "gpu:U", Type total, Count}
    ballots of unit U         Election.BallotCounts {GpUnitId "gpu:U", Type total, BallotsCast}

Every contest is election-wide (ElectionDistrictId: the root unit), as in the model. The model
names no parties, so the report holds no Party and no Candidate has a PartyId.

Status: ``unofficial-complete`` once every device of the election has its final batch in the
ledger, ``unofficial-partial`` while any is missing. (NIST's ResultsStatus has no
"pre-certified": ``unofficial-complete`` is its word for "all counted, not yet certified";
certification is the election office's act, never the pipeline's.) A unit's CountStatus:
``completed`` when every device below it has its final batch, ``in-process`` when some
batch of its devices is counted (or a final is in), ``not-processed`` when nothing is.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud.export.export import ExportData
    from cloud.results.rollups import Rollup
    from protocol import Choice, Contest, Election, Unit

LANGUAGE = "en"
_T = "ElectionResults."

# ElectionResults.ReportingUnitType of the v2 schema; any other unit kind is "other".
REPORTING_UNIT_TYPES = frozenset({
    "ballot-batch", "ballot-style-area", "borough", "city", "city-council", "combined-precinct",
    "congressional", "country", "county", "county-council", "drop-box", "judicial",
    "municipality", "other", "polling-place", "precinct", "school", "special", "split-precinct",
    "state", "state-house", "state-senate", "town", "township", "utility", "village",
    "vote-center", "ward", "water",
})  # fmt: skip

# ElectionResults.ElectionType, recognised in the election's name; "other" when none appears.
_ELECTION_TYPES = ("partisan-primary-closed", "partisan-primary-open", "primary", "runoff", "special", "general")
_WRITE_IN = re.compile(r"write[-_ ]?in", re.IGNORECASE)


def gpunit_id(unit_id: str) -> str:
    return f"gpu:{unit_id}"


def contest_id(contest: str) -> str:
    return f"contest:{contest}"


def selection_id(contest: str, choice: str) -> str:
    return f"selection:{contest}:{choice}"


def candidate_id(contest: str, choice: str) -> str:
    return f"candidate:{contest}:{choice}"


def is_write_in(choice: Choice) -> bool:
    """A choice that stands for the write-ins: id or name "write-in" (any case, "writein",
    "write_in", "write in")."""
    return bool(_WRITE_IN.fullmatch(choice.id) or _WRITE_IN.fullmatch(choice.name.strip()))


def count_status(rollup: Rollup) -> str:
    """A unit's ElectionResults.CountItemStatus (see the module docstring)."""
    if rollup.devices_final >= rollup.devices_total:
        return "completed"
    if rollup.batches > 0 or rollup.devices_final > 0:
        return "in-process"
    return "not-processed"


def results_status(data: ExportData) -> str:
    return "unofficial-complete" if data.complete else "unofficial-partial"


def election_type(name: str) -> str:
    words = name.lower().replace("_", "-")
    for kind in _ELECTION_TYPES:
        if re.search(rf"\b{kind}\b", words):
            return kind
    return "other"


def text(content: str) -> dict[str, Any]:
    """An ElectionResults.InternationalizedText in :data:`LANGUAGE`."""
    return {
        "@type": _T + "InternationalizedText",
        "Text": [{"@type": _T + "LanguageString", "Content": content, "Language": LANGUAGE}],
    }


def nist_report(data: ExportData, generated: datetime) -> dict[str, Any]:
    """The ElectionReport of ``data``, generated at ``generated``."""
    election = data.election
    root = election.units[election.root]
    return {
        "@type": _T + "ElectionReport",
        "Format": "precinct-level",
        "GeneratedDate": generated.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Issuer": root.name,
        "IssuerAbbreviation": root.id,
        "VendorApplicationId": f"EdgeTally {_version()}",
        "SequenceStart": 1,
        "SequenceEnd": 1,
        "Status": results_status(data),
        "Notes": (
            f"devices with their final batch: {data.root.devices_final} of"
            f" {data.root.devices_total}; precincts reporting: {data.root.precincts_reporting}"
            f" of {data.root.precincts_total}"
        ),
        "GpUnit": [_gpunit(unit, data.rollups[unit.id]) for unit in election.walk()],
        "Election": [_election(data)],
    }


def nist_json(data: ExportData, generated: datetime) -> str:
    return json.dumps(nist_report(data, generated), indent=2, ensure_ascii=False) + "\n"


def _version() -> str:
    try:
        return metadata.version("edgetally")
    except metadata.PackageNotFoundError:
        return "unknown"


def _gpunit(unit: Unit, rollup: Rollup) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@id": gpunit_id(unit.id),
        "@type": _T + "ReportingUnit",
        "Name": text(unit.name),
        "Type": unit.kind if unit.kind in REPORTING_UNIT_TYPES else "other",
    }
    if out["Type"] == "other" and unit.kind != "other":
        out["OtherType"] = unit.kind
    if not unit.is_precinct:
        out["ComposingGpUnitIds"] = [gpunit_id(c) for c in unit.children]
        out["SubUnitsReported"] = rollup.precincts_reporting
        out["TotalSubUnits"] = rollup.precincts_total
    out["VotersRegistered"] = rollup.registered
    out["CountStatus"] = [
        {"@type": _T + "CountStatus", "Status": count_status(rollup), "Type": "total"}
    ]
    return out


def _election(data: ExportData) -> dict[str, Any]:
    election = data.election
    day = election.polls_close[:10]  # the model's one date: polls close (UTC)
    kind = election_type(election.name)
    out: dict[str, Any] = {
        "@type": _T + "Election",
        "ElectionScopeId": gpunit_id(election.root),
        "Name": text(election.name),
        "StartDate": day,
        "EndDate": day,
        "Type": kind,
    }
    if kind == "other":
        out["OtherType"] = "not stated in the election model"
    out["Candidate"] = [
        _candidate(contest, choice)
        for contest in election.contests
        if contest.kind == "candidate"
        for choice in contest.choices
    ]
    out["Contest"] = [_contest(data, contest, n) for n, contest in enumerate(election.contests, 1)]
    out["BallotCounts"] = [
        {
            "@type": _T + "BallotCounts",
            "GpUnitId": gpunit_id(unit.id),
            "Type": "total",
            "BallotsCast": data.rollups[unit.id].ballots,
        }
        for unit in election.walk()
    ]
    return out


def _candidate(contest: Contest, choice: Choice) -> dict[str, Any]:
    return {
        "@id": candidate_id(contest.id, choice.id),
        "@type": _T + "Candidate",
        "BallotName": text(choice.name),
    }


def _contest(data: ExportData, contest: Contest, order: int) -> dict[str, Any]:
    election = data.election
    measure = contest.kind == "measure"
    out: dict[str, Any] = {
        "@id": contest_id(contest.id),
        "@type": _T + ("BallotMeasureContest" if measure else "CandidateContest"),
        "Name": contest.name,
        "ElectionDistrictId": gpunit_id(election.root),
        "SequenceOrder": order,
        "SubUnitsReported": data.root.precincts_reporting,
        "TotalSubUnits": data.root.precincts_total,
    }
    if measure:
        out["Type"] = "ballot-measure"
    else:
        out["VotesAllowed"] = 1
    out["ContestSelection"] = [
        _selection(election, data, contest, choice, n)
        for n, choice in enumerate(contest.choices, 1)
    ]
    return out


def _selection(
    election: Election, data: ExportData, contest: Contest, choice: Choice, order: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"@id": selection_id(contest.id, choice.id)}
    if contest.kind == "measure":
        out["@type"] = _T + "BallotMeasureSelection"
        out["Selection"] = text(choice.name)
    else:
        out["@type"] = _T + "CandidateSelection"
        out["CandidateIds"] = [candidate_id(contest.id, choice.id)]
        out["IsWriteIn"] = is_write_in(choice)
    out["SequenceOrder"] = order
    out["VoteCounts"] = [
        {
            "@type": _T + "VoteCounts",
            "GpUnitId": gpunit_id(unit.id),
            "Type": "total",
            "Count": data.rollups[unit.id].contests.get(contest.id, {}).get(choice.id, 0),
        }
        for unit in election.walk()
    ]
    return out
