"""The device registry: which devices exist, their precinct and public key, and the election.

One JSON file, ``registry.json``, written by ``edgetally devices provision`` into the keys
directory next to the private keys (``<device>.pem``). Gateways and the cloud need only
this file; devices need it and their own private key.

The registry also holds the public half of the cloud's Ed25519 signing key (``"cloud":
{"public_key", "kid"}``), whose private half (``cloud-signing.key``, 0600) signs receipts
and repair requests (:mod:`protocol.signed`); a registry written before it existed has none.
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
CLOUD_KEY_FILE = "cloud-signing.key"  # not <device>.pem: no device id can collide with it


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
    cloud_key: PublicKey | None = None  # verifies receipts and repair requests

    def lookup(self, device: str) -> DeviceEntry:
        entry = self.devices.get(device)
        if entry is None:
            raise UnknownDevice(f"device {device!r} is not in the registry")
        return entry

    # -- files ------------------------------------------------------------------------
    def to_mapping(self) -> dict[str, Any]:
        mapping: dict[str, Any] = {
            "format": FORMAT,
            "election": self.election.to_mapping(),
            "devices": {
                d.device: {"precinct": d.precinct, "public_key": d.public_key.hex, "kid": d.kid}
                for d in sorted(self.devices.values(), key=lambda e: e.device)
            },
        }
        if self.cloud_key is not None:
            mapping["cloud"] = {"public_key": self.cloud_key.hex, "kid": self.cloud_key.kid}
        return mapping

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
        return cls(election=election, devices=devices, cloud_key=_cloud_key(data.get("cloud"), source))

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


def _cloud_key(entry: object, source: str) -> PublicKey | None:
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("public_key"), str):
        raise KeyFileError(f"{source}: cloud must be an object with a public_key string")
    try:
        public = PublicKey.from_hex(entry["public_key"])
    except KeyFileError as exc:
        raise KeyFileError(f"{source}: cloud: {exc}") from exc
    if "kid" in entry and entry["kid"] != public.kid:
        raise KeyFileError(f"{source}: the cloud kid does not match its public key")
    return public


def private_key_path(directory: Path, device: str) -> Path:
    return directory / f"{device}.pem"


def provision(election: Election, directory: Path, *, overwrite: bool = False) -> Registry:
    """Create a key for every device of ``election`` and the cloud's signing key in
    ``directory``, and write the registry.

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
    cloud_path = directory / CLOUD_KEY_FILE
    if cloud_path.exists() and not overwrite:
        cloud = SigningKey.load(cloud_path)
    else:
        cloud = SigningKey.generate()
        cloud.save(cloud_path)
    registry = Registry(election=election, devices=devices, cloud_key=cloud.public)
    registry.save(directory)
    return registry


def load_cloud_key(directory: Path) -> SigningKey:
    """The cloud's signing key in a keys directory (written by :func:`provision`)."""
    path = directory / CLOUD_KEY_FILE
    if not path.exists():
        raise KeyFileError(
            f"no cloud signing key: {path} does not exist (run `edgetally devices provision` again:"
            " it keeps the device keys and adds it)"
        )
    return SigningKey.load(path)


def load_signing_key(directory: Path, device: str) -> SigningKey:
    path = private_key_path(directory, device)
    if not path.exists():
        raise KeyFileError(f"no private key for device {device!r}: {path} does not exist")
    return SigningKey.load(path)
