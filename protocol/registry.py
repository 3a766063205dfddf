"""The device registry: which devices exist, their precinct and public key, and the election.

One JSON file, ``registry.json``, written by ``edgetally devices provision`` into the keys
directory next to the private keys (``<device>.pem``). Gateways and the cloud need only
this file; devices need it and their own private key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol._errors import ElectionModelError, KeyFileError, UnknownDevice
from protocol.election import Election
from protocol.keys import PublicKey, SigningKey

FORMAT = "edgetally-registry/1"
REGISTRY_FILE = "registry.json"


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    device: str
    precinct: str
    public_key: PublicKey

    @property
    def kid(self) -> str:
        return self.public_key.kid


@dataclass(frozen=True)
class Registry:
    election: Election
    devices: Mapping[str, DeviceEntry]

    def lookup(self, device: str) -> DeviceEntry:
        entry = self.devices.get(device)
        if entry is None:
            raise UnknownDevice(f"device {device!r} is not in the registry")
        return entry

    # -- files ------------------------------------------------------------------------
    def to_mapping(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "election": self.election.to_mapping(),
            "devices": {
                d.device: {"precinct": d.precinct, "public_key": d.public_key.hex, "kid": d.kid}
                for d in sorted(self.devices.values(), key=lambda e: e.device)
            },
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "registry") -> Registry:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise KeyFileError(f"{source} is not an EdgeTally registry (format {FORMAT!r})")
        try:
            election = Election.from_mapping(data["election"])
        except (ElectionModelError, KeyError) as exc:
            raise KeyFileError(f"{source}: bad election: {exc}") from exc
        raw_devices = data.get("devices")
        if not isinstance(raw_devices, Mapping):
            raise KeyFileError(f"{source}: devices must be an object")
        devices: dict[str, DeviceEntry] = {}
        for device, entry in raw_devices.items():
            if not isinstance(entry, Mapping):
                raise KeyFileError(f"{source}: device {device!r} must be an object")
            precinct = election.precinct_of(device)
            if precinct is None:
                raise KeyFileError(f"{source}: device {device!r} is not in election {election.id!r}")
            if entry.get("precinct") != precinct:
                raise KeyFileError(
                    f"{source}: device {device!r} is registered to precinct"
                    f" {entry.get('precinct')!r}, the election says {precinct!r}"
                )
            public_hex = entry.get("public_key")
            if not isinstance(public_hex, str):
                raise KeyFileError(f"{source}: device {device!r} has no public_key string")
            try:
                public = PublicKey.from_hex(public_hex)
            except KeyFileError as exc:
                raise KeyFileError(f"{source}: device {device!r}: {exc}") from exc
            if "kid" in entry and entry["kid"] != public.kid:
                raise KeyFileError(f"{source}: device {device!r} kid does not match its public key")
            devices[device] = DeviceEntry(device, precinct, public)
        return cls(election=election, devices=devices)

    @classmethod
    def load(cls, path: Path) -> Registry:
        """Load ``path`` (a registry file, or a keys directory holding ``registry.json``)."""
        file = path / REGISTRY_FILE if path.is_dir() else path
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyFileError(f"cannot read registry {file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise KeyFileError(f"registry {file} is not UTF-8 text: {exc.reason}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"registry {file} is not JSON: {exc}") from exc
        return cls.from_mapping(data, source=str(file))

    def save(self, directory: Path) -> Path:
        """Write ``registry.json`` into ``directory`` atomically (temporary file, then rename)."""
        file = directory / REGISTRY_FILE
        tmp = file.with_suffix(".tmp")
        text = json.dumps(self.to_mapping(), indent=2, sort_keys=True) + "\n"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, file)
        except OSError as exc:
            raise KeyFileError(f"cannot write registry {file}: {exc.strerror}") from exc
        return file


def private_key_path(directory: Path, device: str) -> Path:
    return directory / f"{device}.pem"


def provision(election: Election, directory: Path, *, overwrite: bool = False) -> Registry:
    """Create a key for every device of ``election`` in ``directory`` and write the registry.

    Existing private keys are kept (re-provisioning must not orphan signed batches) unless
    ``overwrite`` is set.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create keys directory {directory}: {exc.strerror}") from exc
    devices: dict[str, DeviceEntry] = {}
    for precinct in election.precincts:
        for device in precinct.devices:
            path = private_key_path(directory, device)
            if path.exists() and not overwrite:
                key = SigningKey.load(path)
            else:
                key = SigningKey.generate()
                key.save(path)
            devices[device] = DeviceEntry(device, precinct.id, key.public)
    registry = Registry(election=election, devices=devices)
    registry.save(directory)
    return registry


def load_signing_key(directory: Path, device: str) -> SigningKey:
    path = private_key_path(directory, device)
    if not path.exists():
        raise KeyFileError(f"no private key for device {device!r}: {path} does not exist")
    return SigningKey.load(path)
