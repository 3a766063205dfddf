"""check_fleet_inputs: every bad input is one clear line naming the file, the line or id, and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices._exceptions import ElectionFileError, FleetError, ProvisionError
from devices.election_file import load_election
from devices.preflight import check_fleet_inputs
from protocol import SigningKey, provision
from tests.devices.test_election_file import write_small


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    """(election file, keys dir provisioned for it)."""
    path = write_small(tmp_path)
    keys = tmp_path / "keys"
    provision(load_election(path), keys)
    return path, keys


def _one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_good_inputs_return_the_election(small: tuple[Path, Path]) -> None:
    path, keys = small
    assert check_fleet_inputs(path, keys, None).devices == ("p-1-a", "p-1-b", "p-2-a")
    assert check_fleet_inputs(None, keys, ["p-2-a"]).id == "small"


def test_only_the_chosen_devices_need_keys(small: tuple[Path, Path]) -> None:
    path, keys = small
    (keys / "p-2-a.pem").unlink()
    assert check_fleet_inputs(path, keys, ["p-1-a", "p-1-b"]).id == "small"


def test_missing_private_key_names_the_file_and_device(small: tuple[Path, Path]) -> None:
    path, keys = small
    (keys / "p-1-b.pem").unlink()
    with pytest.raises(ProvisionError) as caught:
        check_fleet_inputs(path, keys, None)
    assert _one_line(caught).startswith(f"{keys / 'p-1-b.pem'}: missing private key of device 'p-1-b'")
    assert "precinct 'p-1'" in str(caught.value)


def test_private_key_other_than_the_registered_one_is_refused(small: tuple[Path, Path]) -> None:
    path, keys = small
    SigningKey.generate().save(keys / "p-2-a.pem")
    with pytest.raises(ProvisionError, match=r"p-2-a\.pem: private key of device 'p-2-a' \(kid [0-9a-f]{16}\) is not the key .*registry\.json registers"):
        check_fleet_inputs(path, keys, None)


def test_unreadable_private_key_is_a_clear_error(small: tuple[Path, Path]) -> None:
    path, keys = small
    (keys / "p-1-a.pem").write_text("not a key")
    with pytest.raises(ProvisionError, match=r"p-1-a\.pem: unusable private key of device 'p-1-a'"):
        check_fleet_inputs(path, keys, None)


def test_missing_keys_dir_or_registry_is_a_clear_error(small: tuple[Path, Path], tmp_path: Path) -> None:
    path, keys = small
    with pytest.raises(ProvisionError, match=r"nowhere: keys directory does not exist \(run `edgetally devices provision"):
        check_fleet_inputs(path, tmp_path / "nowhere", None)
    (keys / "registry.json").unlink()
    with pytest.raises(ProvisionError, match=r"registry\.json: no registry in the keys directory"):
        check_fleet_inputs(path, keys, None)


def test_corrupt_registry_names_the_file(small: tuple[Path, Path]) -> None:
    path, keys = small
    (keys / "registry.json").write_text("{")
    with pytest.raises(ProvisionError, match=r"registry .*registry\.json is not JSON"):
        check_fleet_inputs(path, keys, None)


def test_device_added_to_the_file_after_provisioning_names_its_line(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    _, keys = small
    grown = write_small(tmp_path, ("[p-2-a]", "[p-2-a, p-2-b]"), name="grown.yaml")
    with pytest.raises(ProvisionError) as caught:
        check_fleet_inputs(grown, keys, None)
    assert _one_line(caught).startswith(f"{grown}:23: device 'p-2-b' is not in {keys / 'registry.json'}")


def test_device_moved_to_another_precinct_is_named_with_its_line(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    _, keys = small
    moved = write_small(
        tmp_path, ("[p-1-a, p-1-b]", "[p-1-a]"), ("[p-2-a]", "[p-2-a, p-1-b]"), name="moved.yaml"
    )
    with pytest.raises(ProvisionError, match=r"moved\.yaml:23: device 'p-1-b' is in precinct 'p-2' here, 'p-1' in .*registry\.json"):
        check_fleet_inputs(moved, keys, None)


def test_election_file_for_another_election_is_refused(small: tuple[Path, Path], tmp_path: Path) -> None:
    _, keys = small
    other = write_small(tmp_path, ("id: small", "id: elsewhere"), name="other.yaml")
    with pytest.raises(ProvisionError, match=r"other\.yaml disagrees with .*registry\.json: election 'elsewhere' here, the keys were provisioned for 'small'"):
        check_fleet_inputs(other, keys, None)


def test_changed_registered_voters_name_the_unit_and_line(small: tuple[Path, Path], tmp_path: Path) -> None:
    _, keys = small
    changed = write_small(tmp_path, ("registered: 200", "registered: 250"), name="changed.yaml")
    with pytest.raises(ProvisionError, match=r"changed\.yaml:20: unit 'p-2' differs from .*registry\.json"):
        check_fleet_inputs(changed, keys, None)


def test_changed_contest_names_the_contest_and_line(small: tuple[Path, Path], tmp_path: Path) -> None:
    _, keys = small
    changed = write_small(tmp_path, ("[ann, bob]", "[ann, bob, cy]"), name="changed.yaml")
    with pytest.raises(ProvisionError, match=r"changed\.yaml:5: contest 'mayor' differs from .*registry\.json"):
        check_fleet_inputs(changed, keys, None)


def test_bad_election_file_fails_before_the_keys_are_looked_at(tmp_path: Path) -> None:
    bad = write_small(tmp_path, ("[p-2-a]", "[p-1-a]"), name="bad.yaml")
    with pytest.raises(ElectionFileError, match=r"bad\.yaml:23: device 'p-1-a' appears twice"):
        check_fleet_inputs(bad, tmp_path / "no-keys-here", None)


def test_unknown_or_repeated_device_in_the_selection_is_refused(small: tuple[Path, Path]) -> None:
    path, keys = small
    with pytest.raises(FleetError, match=r"small\.yaml: device 'p-9-z' is not in election 'small'"):
        check_fleet_inputs(path, keys, ["p-1-a", "p-9-z"])
    with pytest.raises(FleetError, match=r"device 'p-1-a' is requested twice"):
        check_fleet_inputs(None, keys, ["p-1-a", "p-1-a"])


def test_registry_without_an_entry_for_a_device_names_it(small: tuple[Path, Path]) -> None:
    """A registry whose device table lacks a device of its own election (hand-edited or truncated)."""
    path, keys = small
    data = json.loads((keys / "registry.json").read_text())
    del data["devices"]["p-2-a"]
    (keys / "registry.json").write_text(json.dumps(data))
    with pytest.raises(ProvisionError, match=r"registry\.json: no entry for device 'p-2-a' \(.*small\.yaml:23\); re-run"):
        check_fleet_inputs(path, keys, None)
