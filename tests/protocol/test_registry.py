"""The device registry file: round trip, provisioning, and refusals with the file named."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    KeyFileError,
    Registry,
    RejectReason,
    SigningKey,
    UnknownDevice,
    load_signing_key,
    provision,
)
from protocol.registry import CLOUD_KEY_FILE, FORMAT, REGISTRY_FILE, load_cloud_key
from tests.protocol.builders import ELECTION, KEYS, REGISTRY


def test_save_then_load_gives_the_same_registry(tmp_path: Path) -> None:
    file = REGISTRY.save(tmp_path / "keys")
    assert file == tmp_path / "keys" / REGISTRY_FILE
    loaded = Registry.load(tmp_path / "keys")
    assert loaded.election == ELECTION
    assert dict(loaded.devices) == dict(REGISTRY.devices)
    assert Registry.load(file).to_mapping() == REGISTRY.to_mapping()  # the file itself works too


def test_registry_file_is_sorted_indented_json_with_format_and_kids(tmp_path: Path) -> None:
    file = REGISTRY.save(tmp_path)
    text = file.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["format"] == FORMAT
    entry = data["devices"]["north-p1-a"]
    assert entry == {
        "precinct": "north-p1",
        "public_key": KEYS["north-p1-a"].public.hex,
        "kid": KEYS["north-p1-a"].kid,
    }
    assert not (tmp_path / "registry.tmp").exists()


def test_lookup_finds_registered_devices_and_refuses_others() -> None:
    entry = REGISTRY.lookup("north-p2-a")
    assert (entry.device, entry.precinct, entry.kid) == ("north-p2-a", "north-p2", KEYS["north-p2-a"].kid)
    with pytest.raises(UnknownDevice, match="device 'ghost-1' is not in the registry") as caught:
        REGISTRY.lookup("ghost-1")
    assert caught.value.reason is RejectReason.UNKNOWN_DEVICE


def _write(tmp_path: Path, data: Any) -> Path:
    file = tmp_path / REGISTRY_FILE
    file.write_text(json.dumps(data))
    return file


def _mapping() -> dict[str, Any]:
    return copy.deepcopy(REGISTRY.to_mapping())


def test_device_not_in_the_election_is_refused(tmp_path: Path) -> None:
    data = _mapping()
    data["devices"]["ghost-1"] = dict(data["devices"]["north-p1-a"])
    file = _write(tmp_path, data)
    with pytest.raises(KeyFileError, match=f"{file}: device 'ghost-1' is not in election 'tiny-2026'"):
        Registry.load(tmp_path)


def test_device_registered_to_another_precinct_is_refused(tmp_path: Path) -> None:
    data = _mapping()
    data["devices"]["north-p1-a"]["precinct"] = "south-p1"
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match="'north-p1-a' is registered to precinct 'south-p1', the election says 'north-p1'"):
        Registry.load(tmp_path)


def test_kid_that_does_not_match_the_public_key_is_refused(tmp_path: Path) -> None:
    data = _mapping()
    data["devices"]["north-p1-a"]["kid"] = "0" * 16
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match="device 'north-p1-a' kid does not match its public key"):
        Registry.load(tmp_path)


def test_kid_may_be_left_out(tmp_path: Path) -> None:
    data = _mapping()
    del data["devices"]["north-p1-a"]["kid"]
    _write(tmp_path, data)
    assert Registry.load(tmp_path).lookup("north-p1-a").kid == KEYS["north-p1-a"].kid


@pytest.mark.parametrize(
    ("public_key", "problem"),
    [
        (None, "device 'north-p1-a' has no public_key string"),
        ("xyz", "device 'north-p1-a': public key 'xyz' is not hex"),
        ("00" * 16, "device 'north-p1-a': public key must be 32 bytes, got 16"),
    ],
)
def test_bad_public_key_is_refused_naming_the_device(tmp_path: Path, public_key: Any, problem: str) -> None:
    data = _mapping()
    data["devices"]["north-p1-a"].pop("kid")
    if public_key is None:
        data["devices"]["north-p1-a"].pop("public_key")
    else:
        data["devices"]["north-p1-a"]["public_key"] = public_key
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match=problem):
        Registry.load(tmp_path)


def test_bad_embedded_election_is_refused(tmp_path: Path) -> None:
    data = _mapping()
    data["election"]["contests"] = []
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match="bad election: contests: expected a non-empty list"):
        Registry.load(tmp_path)


def test_missing_registry_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=f"cannot read registry {tmp_path / REGISTRY_FILE}") as caught:
        Registry.load(tmp_path)
    assert caught.value.reason is RejectReason.KEY_FILE


def test_unreadable_registry_is_refused(tmp_path: Path) -> None:
    (tmp_path / REGISTRY_FILE).mkdir()  # a directory where the file should be: unreadable even as root
    with pytest.raises(KeyFileError, match="cannot read registry"):
        Registry.load(tmp_path)


def test_registry_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / REGISTRY_FILE).write_text("devices: [oops\n")
    with pytest.raises(KeyFileError, match="is not JSON"):
        Registry.load(tmp_path)


def test_binary_registry_is_refused(tmp_path: Path) -> None:
    (tmp_path / REGISTRY_FILE).write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(KeyFileError, match="is not UTF-8 text"):
        Registry.load(tmp_path)


@pytest.mark.parametrize(
    "data",
    [
        {"devices": {}},
        {"format": "something-else/1", "election": {}, "devices": {}},
        ["edgetally-registry/1"],
        "edgetally-registry/1",
    ],
)
def test_foreign_json_file_is_refused(tmp_path: Path, data: Any) -> None:
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match=f"is not an EdgeTally registry \\(format '{FORMAT}'\\)"):
        Registry.load(tmp_path)


def test_devices_must_be_an_object_of_objects(tmp_path: Path) -> None:
    data = _mapping()
    data["devices"] = ["north-p1-a"]
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match="devices must be an object"):
        Registry.load(tmp_path)
    data["devices"] = {"north-p1-a": "key"}
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match="device 'north-p1-a' must be an object"):
        Registry.load(tmp_path)


def test_provision_writes_a_key_per_device_and_the_registry(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    registry = provision(ELECTION, keys)
    assert sorted(p.name for p in keys.iterdir()) == sorted(
        [REGISTRY_FILE, CLOUD_KEY_FILE] + [f"{d}.pem" for d in ELECTION.devices]
    )
    for device in ELECTION.devices:
        pem = keys / f"{device}.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert load_signing_key(keys, device).kid == registry.lookup(device).kid
    assert stat.S_IMODE((keys / CLOUD_KEY_FILE).stat().st_mode) == 0o600
    assert registry.cloud_key is not None and load_cloud_key(keys).kid == registry.cloud_key.kid
    assert Registry.load(keys).to_mapping() == registry.to_mapping()


def test_provision_keeps_the_cloud_key_unless_told_to_overwrite(tmp_path: Path) -> None:
    first = provision(ELECTION, tmp_path)
    assert provision(ELECTION, tmp_path).cloud_key == first.cloud_key
    assert provision(ELECTION, tmp_path, overwrite=True).cloud_key != first.cloud_key


def test_a_registry_without_a_cloud_key_still_loads_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    data = _mapping()
    data.pop("cloud", None)
    _write(tmp_path, data)
    assert Registry.load(tmp_path).cloud_key is None
    with pytest.raises(KeyFileError, match="no cloud signing key"):
        load_cloud_key(tmp_path)
    data["cloud"] = {"public_key": "00" * 31}
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match="cloud: public key must be 32 bytes"):
        Registry.load(tmp_path)
    data["cloud"] = {"public_key": "11" * 32, "kid": "0" * 16}
    _write(tmp_path, data)
    with pytest.raises(KeyFileError, match="the cloud kid does not match"):
        Registry.load(tmp_path)


def test_provision_keeps_existing_keys_unless_told_to_overwrite(tmp_path: Path) -> None:
    first = provision(ELECTION, tmp_path)
    again = provision(ELECTION, tmp_path)
    assert again.lookup("north-p1-a").kid == first.lookup("north-p1-a").kid
    fresh = provision(ELECTION, tmp_path, overwrite=True)
    assert fresh.lookup("north-p1-a").kid != first.lookup("north-p1-a").kid
    assert Registry.load(tmp_path).lookup("north-p1-a").kid == fresh.lookup("north-p1-a").kid


def test_provision_into_a_file_path_is_a_key_file_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(KeyFileError, match="cannot create keys directory"):
        provision(ELECTION, target)


def test_load_signing_key_of_an_unprovisioned_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no private key for device 'ghost-1'"):
        load_signing_key(tmp_path, "ghost-1")


def test_load_signing_key_reads_the_devices_pem(tmp_path: Path) -> None:
    KEYS["south-p1-a"].save(tmp_path / "south-p1-a.pem")
    assert load_signing_key(tmp_path, "south-p1-a").public == KEYS["south-p1-a"].public
    assert isinstance(load_signing_key(tmp_path, "south-p1-a"), SigningKey)
