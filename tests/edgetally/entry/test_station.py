"""The entry station without a broker: keying, the votes-per-ballot refusal, conflicts,
resolutions and corrections, each checked by protocol.verify as the gateway and cloud will."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from devices.election_file import load_election
from edgetally.entry.cli import app
from edgetally.entry.errors import EntryError, SheetRefused
from edgetally.entry.sheet import Figures, figures_from_mapping
from edgetally.entry.state import StationState
from edgetally.entry.station import Station, correction_reason
from protocol import Registry, provision, verify
from tests.helpers import SAMPLE_ELECTION

SHEET: dict[str, Any] = {"ballots": 100, "counts": {"governor": {"alvarez": 50, "becker": 40},
                                                   "senate": {"okafor": 60, "novak": 30}, "measure-7": {"yes": 55, "no": 41}}}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("entry-keys")
    provision(load_election(SAMPLE_ELECTION), directory, operators=3, supervisors=1)
    return directory


@pytest.fixture
def station(keys: Path, tmp_path: Path) -> Iterator[Station]:
    state = StationState(tmp_path / "station").open()
    yield Station(Registry.load(keys), keys, state)
    state.close()


def figures(station: Station, sheet: dict[str, Any] = SHEET, **changes: int) -> Figures:
    data = json.loads(json.dumps(sheet))
    for name, n in changes.items():
        contest, choice = name.split("__")
        if contest == "ballots":
            data["ballots"] = n
        else:
            data["counts"][contest.replace("_", "-")][choice] = n
    return figures_from_mapping(station.election, data)


def test_provisioning_writes_operator_keys_0600_and_a_manual_source_per_precinct(keys: Path) -> None:
    registry = Registry.load(keys)
    assert sorted(registry.operators) == ["operator-1", "operator-2", "operator-3", "supervisor-1"]
    for name in registry.operators:
        assert stat.S_IMODE((keys / "operators" / f"{name}.pem").stat().st_mode) == 0o600
    manual = {d.precinct: d.device for d in registry.devices.values() if d.source == "manual"}
    assert set(manual) == {p.id for p in registry.election.precincts}
    assert manual["harbor-p01"] == "manual-harbor-p01"
    assert stat.S_IMODE((keys / "manual-harbor-p01.pem").stat().st_mode) == 0o600


def test_a_contest_above_its_ballots_is_refused_at_the_station_naming_it(station: Station) -> None:
    with pytest.raises(SheetRefused, match=r"contest 'senate' \(State Senate\) has 101 votes for 100 ballots"):
        station.key("S1", "harbor-p01", "operator-1", figures(station, senate__novak=41))
    assert station.state.rounds() == []  # nothing recorded, nothing signed
    assert station.state.unsent() == []


def test_agreeing_keyings_give_one_batch_that_verifies_with_both_signatures(station: Station) -> None:
    first = station.key("S1", "harbor-p01", "operator-1", figures(station))
    assert first.waiting and first.batch is None
    second = station.key("S1", "harbor-p01", "operator-3", figures(station))
    assert second.batch is not None and second.round.status == "signed"
    verified = verify(second.batch.payload, station.registry, topic_device="manual-harbor-p01")
    assert verified.body.seq == 1 and verified.body.ballots == 100 and not verified.body.final
    assert verified.body.entry is not None
    assert [s.signer for s in verified.body.entry.operators] == ["operator-1", "operator-3"]
    assert stat.S_IMODE(station.state.path.stat().st_mode) == 0o600
    with pytest.raises(EntryError, match="submitted already"):
        station.key("S1", "harbor-p01", "operator-2", figures(station))


def test_one_operator_cannot_key_a_sheet_twice_nor_a_supervisor_key_it(station: Station) -> None:
    station.key("S1", "harbor-p01", "operator-1", figures(station))
    with pytest.raises(EntryError, match="operator-1 has keyed sheet 'S1' already"):
        station.key("S1", "harbor-p01", "operator-1", figures(station))
    with pytest.raises(EntryError, match="'supervisor-1' is not a registered operator"):
        station.key("S1", "harbor-p01", "supervisor-1", figures(station))


def test_disagreeing_keyings_send_nothing_until_a_supervisor_resolves(station: Station) -> None:
    station.key("S2", "harbor-p02", "operator-1", figures(station))
    clash = station.key("S2", "harbor-p02", "operator-2", figures(station, governor__becker=44))
    assert clash.batch is None and clash.round.status == "conflict"
    assert clash.conflict == [("governor", "becker", 40, 44)]
    assert station.state.unsent() == []
    assert [r.sheet for r, _ in station.conflicts()] == ["S2"]
    resolved = station.resolve("S2", "supervisor-1", figures(station))
    assert resolved.batch is not None
    body = verify(resolved.batch.payload, station.registry).body
    assert body.entry is not None and body.entry.resolved_by is not None
    assert body.entry.resolved_by.signer == "supervisor-1"
    assert [s.signer for s in body.entry.operators] == ["operator-1"]  # the keying that matched
    assert station.conflicts() == []


def test_a_correction_is_a_new_double_keyed_batch_of_deltas_with_its_reason(station: Station) -> None:
    with pytest.raises(EntryError, match="never submitted"):
        station.key("S3", "harbor-p03", "operator-1", figures(station), reason=correction_reason("x"))
    for operator in ("operator-1", "operator-2"):
        station.key("S3", "harbor-p03", operator, figures(station))
    fixed = figures(station, ballots__x=98, governor__alvarez=48)
    reason = correction_reason("alvarez misread")
    station.key("S3", "harbor-p03", "operator-1", fixed, reason=reason)
    done = station.key("S3", "harbor-p03", "operator-2", fixed, reason=reason)
    assert done.batch is not None and done.batch.seq == 2
    body = verify(done.batch.payload, station.registry).body
    assert body.ballots == -2 and body.counts["governor"]["alvarez"] == -2 and body.counts["senate"]["okafor"] == 0
    assert body.entry is not None and body.entry.reason == "correction: alvarez misread"
    first = station.state.unsent()[0]
    assert body.prev == verify(first.payload, station.registry).body_hash  # the source's own chain


def test_entry_key_prompts_every_contest_and_choice_by_name(keys: Path, tmp_path: Path) -> None:
    election = Registry.load(keys).election
    answers = ["100"] + ["10"] * sum(len(c.choices) for c in election.contests)
    result = CliRunner().invoke(
        app,
        ["key", "--sheet", "P1", "--precinct", "harbor-p01", "--operator", "operator-1",
         "--keys", str(keys), "--station", str(tmp_path / "st")],
        input="\n".join(answers) + "\n",
    )
    assert result.exit_code == 0, result.output
    for contest in election.contests:
        for choice in contest.choices:
            assert f"{contest.name} — {choice.name}" in result.output
    assert "waiting for a second operator" in result.output
