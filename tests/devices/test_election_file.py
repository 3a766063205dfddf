from __future__ import annotations

from pathlib import Path

import pytest

from devices._exceptions import ElectionFileError
from devices.election_file import load_election
from tests.helpers import SAMPLE_ELECTION


def test_sample_election_has_the_shape_the_issue_asks_for() -> None:
    election = load_election(SAMPLE_ELECTION)
    assert len(election.contests) >= 3
    assert any(c.kind == "measure" and set(c.choice_ids) == {"yes", "no"} for c in election.contests)
    assert len(election.precincts) >= 40
    kinds = {u.kind for u in election.walk()}
    assert {"state", "county", "precinct"} <= kinds
    assert all(1 <= len(p.devices) <= 3 and p.registered > 0 for p in election.precincts)


def test_yes_and_no_stay_choice_ids_not_booleans(tmp_path: Path) -> None:
    text = SAMPLE_ELECTION.read_text().replace("'yes'", "yes").replace("'no'", "no")
    path = tmp_path / "e.yaml"
    path.write_text(text)
    assert load_election(path).contest("measure-7").choice_ids == ("yes", "no")  # type: ignore[union-attr]


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: x\ncontests: [\n  - id: a\n")
    with pytest.raises(ElectionFileError, match=r"broken\.yaml:\d+: not valid YAML"):
        load_election(path)


def test_model_error_names_file_and_the_offending_id(tmp_path: Path) -> None:
    text = SAMPLE_ELECTION.read_text().replace("harbor-p02-a", "harbor-p01-a", 1)
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ElectionFileError, match=r"dup\.yaml: .*device 'harbor-p01-a' already belongs"):
        load_election(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ElectionFileError, match="cannot read election file"):
        load_election(tmp_path / "nope.yaml")
