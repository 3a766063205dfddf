from __future__ import annotations

from pathlib import Path

import pytest

from devices._exceptions import ElectionFileError
from devices.election_file import load_election, read_election_file
from tests.helpers import SAMPLE_ELECTION

# Line numbers below refer to this text (line 1 is "id: small").
SMALL = """\
id: small
name: Small Town
polls_close: '2026-11-03T20:00:00Z'
contests:
- id: mayor
  name: Mayor
  choices: [ann, bob]
- id: measure-1
  name: Measure 1
  kind: measure
  choices: ['yes', 'no']
units:
  id: city
  kind: city
  children:
  - id: p-1
    kind: precinct
    registered: 100
    devices: [p-1-a, p-1-b]
  - id: p-2
    kind: precinct
    registered: 200
    devices: [p-2-a]
"""


def write_small(directory: Path, *replacements: tuple[str, str], name: str = "small.yaml") -> Path:
    text = SMALL
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = directory / name
    path.write_text(text)
    return path


def test_sample_election_has_the_shape_the_issue_asks_for() -> None:
    election = load_election(SAMPLE_ELECTION)
    assert len(election.contests) >= 3
    assert any(c.kind == "measure" and set(c.choice_ids) == {"yes", "no"} for c in election.contests)
    assert len(election.precincts) >= 40
    kinds = {u.kind for u in election.walk()}
    assert {"state", "county", "precinct"} <= kinds
    assert all(1 <= len(p.devices) <= 3 and p.registered > 0 for p in election.precincts)


def test_small_election_loads_and_knows_where_its_ids_are(tmp_path: Path) -> None:
    source = read_election_file(write_small(tmp_path))
    assert source.election.devices == ("p-1-a", "p-1-b", "p-2-a")
    assert source.where("p-2-a") == f"{tmp_path / 'small.yaml'}:23"
    assert source.where("measure-1").endswith(":8")


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


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ElectionFileError, match=r"nope\.yaml: cannot read election file"):
        load_election(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        pytest.param(
            ("- id: measure-1", "- id: mayor"),
            r"small\.yaml:8: contest id 'mayor' is defined twice \(first at line 5\)",
            id="duplicate-contest",
        ),
        pytest.param(
            ("[ann, bob]", "[ann, ann]"),
            r"small\.yaml:7: contest 'mayor' lists choice 'ann' twice \(first at line 7\)",
            id="duplicate-choice",
        ),
        pytest.param(
            ("- id: p-2", "- id: p-1"),
            r"small\.yaml:20: unit id 'p-1' is used twice \(first at line 16\)",
            id="duplicate-unit",
        ),
        pytest.param(
            ("[p-2-a]", "[p-1-b]"),
            r"small\.yaml:23: device 'p-1-b' appears twice \(first at line 19, in precinct 'p-1'\)",
            id="duplicate-device",
        ),
        pytest.param(
            ("[p-2-a]", "[]"),
            r"small\.yaml:23: precinct 'p-2' has no devices",
            id="precinct-with-empty-devices",
        ),
        pytest.param(
            ("    devices: [p-2-a]\n", ""),
            r"small\.yaml:20: precinct 'p-2' has no devices",
            id="precinct-without-devices-key",
        ),
        pytest.param(
            ("    devices: [p-1-a, p-1-b]\n", "    devices: [p-1-a, p-1-b]\n    contests: [mayor, sheriff]\n"),
            r"small\.yaml:20: unit 'p-1' references unknown contest 'sheriff' \(the election defines mayor, measure-1\)",
            id="unknown-contest",
        ),
        pytest.param(
            ("    devices: [p-2-a]", "    device: [p-2-a]"),
            r"small\.yaml:23: unit 'p-2': unknown key 'device' \(expected one of id, name, kind,",
            id="unknown-key",
        ),
        pytest.param(
            ("    registered: 200\n", "    registered: 200\n    kind: ward\n"),
            r"small\.yaml:23: unit 'p-2': key 'kind' written twice \(first at line 21\)",
            id="key-written-twice",
        ),
        pytest.param(
            ("registered: 200", "registered: -5"),
            r"small\.yaml:20: unit 'p-2': registered must be a non-negative integer",
            id="model-error-gets-the-line-of-its-id",
        ),
    ],
)
def test_bad_election_error_names_file_line_and_problem(
    tmp_path: Path, replacement: tuple[str, str], expected: str
) -> None:
    path = write_small(tmp_path, replacement)
    with pytest.raises(ElectionFileError, match=expected) as caught:
        load_election(path)
    assert "\n" not in str(caught.value)


def test_known_contest_listed_on_a_unit_is_refused_as_unsupported(tmp_path: Path) -> None:
    path = write_small(tmp_path, ("    kind: precinct\n", "    kind: precinct\n    contests: [mayor]\n"))
    with pytest.raises(ElectionFileError, match=r"small\.yaml:18: unit 'p-1': per-unit contest lists"):
        load_election(path)


def test_duplicate_device_in_the_sample_names_both_lines(tmp_path: Path) -> None:
    text = SAMPLE_ELECTION.read_text().replace("harbor-p02-a", "harbor-p01-a", 1)
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ElectionFileError, match=r"dup\.yaml:58: device 'harbor-p01-a' appears twice \(first at line 52"):
        load_election(path)
