"""The device registry: which devices exist, their precinct and public key, and the election.

One JSON file, ``registry.json``, written by ``edgetally devices provision`` into the keys
directory next to the private keys (``<device>.pem``). Gateways and the cloud need only
this file; devices need it and their own private key.

The registry also holds the public half of the cloud's Ed25519 signing key (``"cloud":
{"public_key", "kid"}``), whose private half (``cloud-signing.key``, 0600) signs receipts
and repair requests (:mod:`protocol.signed`); a registry written before it existed has none.

Manual entry (docs/protocol.md section 16): a device may be a manual-entry source (``"source":
"manual"``; absent means ``"tabulator"``, so older registries load unchanged), which is not in
the election's device lists and may belong to any precinct of the election; and an optional
``"operators"`` section holds the data-entry operators' and supervisors' public keys
(``{id: {"public_key", "kid", "role"}}``), whose private keys are ``operators/<id>.pem``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from protocol._errors import ElectionModelError, KeyFileError, UnknownDevice
from protocol.election import ID_PATTERN, Election
from protocol.entry import ROLE_OPERATOR, ROLE_SUPERVISOR, SOURCE_MANUAL, SOURCE_TABULATOR, SOURCES
from protocol.keys import PublicKey, SigningKey

FORMAT = "edgetally-registry/1"
REGISTRY_FILE = "registry.json"
CLOUD_KEY_FILE = "cloud-signing.key"  # not <device>.pem: no device id can collide with it
OPERATORS_DIR = "operators"  # operators/<operator>.pem
MANUAL_PREFIX = "manual-"  # the manual source of precinct P is device manual-P


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    device: str
    precinct: str
    public_key: PublicKey
    source: str = SOURCE_TABULATOR  # or SOURCE_MANUAL: a data-entry station

    @property
    def kid(self) -> str:
        return self.public_key.kid


@dataclass(frozen=True, slots=True)
class OperatorEntry:
    """A data-entry operator or a supervisor: the key that signs the sheets they key or resolve."""

    operator: str
    role: str  # ROLE_OPERATOR or ROLE_SUPERVISOR
    public_key: PublicKey

    @property
    def kid(self) -> str:
        return self.public_key.kid


@dataclass(frozen=True)
class Registry:
    election: Election
    devices: Mapping[str, DeviceEntry]
    cloud_key: PublicKey | None = None  # verifies receipts and repair requests
    operators: Mapping[str, OperatorEntry] = field(default_factory=dict)

    @cached_property
    def has_manual_sources(self) -> bool:
        return any(e.source == SOURCE_MANUAL for e in self.devices.values())

    def manual_source(self, precinct: str) -> DeviceEntry | None:
        """The manual-entry source of ``precinct``, if one is registered."""
        for entry in self.devices.values():
            if entry.source == SOURCE_MANUAL and entry.precinct == precinct:
                return entry
        return None

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
            "devices": {d.device: _device_mapping(d) for d in sorted(self.devices.values(), key=lambda e: e.device)},
        }
        if self.cloud_key is not None:
            mapping["cloud"] = {"public_key": self.cloud_key.hex, "kid": self.cloud_key.kid}
        if self.operators:
            mapping["operators"] = {
                o.operator: {"public_key": o.public_key.hex, "kid": o.kid, "role": o.role}
                for o in sorted(self.operators.values(), key=lambda e: e.operator)
            }
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
            kind = entry.get("source", SOURCE_TABULATOR)
            if kind not in SOURCES:
                raise KeyFileError(f"{source}: device {device!r} source must be one of {SOURCES}, got {kind!r}")
            precinct = _manual_precinct(election, device, entry, source) if kind == SOURCE_MANUAL else election.precinct_of(device)
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
            devices[device] = DeviceEntry(device, precinct, public, kind)
        return cls(
            election=election,
            devices=devices,
            cloud_key=_cloud_key(data.get("cloud"), source),
            operators=_operators(data.get("operators"), source),
        )

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


def _device_mapping(d: DeviceEntry) -> dict[str, str]:
    out = {"precinct": d.precinct, "public_key": d.public_key.hex, "kid": d.kid}
    if d.source != SOURCE_TABULATOR:  # absent means tabulator: older registries stay byte-identical
        out["source"] = d.source
    return out


def _manual_precinct(election: Election, device: str, entry: Mapping[str, Any], source: str) -> str:
    """A manual source is in no device list: its precinct must be a precinct of the election."""
    if election.precinct_of(device) is not None:
        raise KeyFileError(f"{source}: device {device!r} is a tabulator of the election, not a manual source")
    precinct = entry.get("precinct")
    unit = election.units.get(precinct) if isinstance(precinct, str) else None
    if unit is None or not unit.is_precinct:
        raise KeyFileError(f"{source}: manual source {device!r} names {precinct!r}, not a precinct of the election")
    return unit.id


def _operators(raw: object, source: str) -> dict[str, OperatorEntry]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise KeyFileError(f"{source}: operators must be an object")
    out: dict[str, OperatorEntry] = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not ID_PATTERN.match(name):
            raise KeyFileError(f"{source}: operator id {name!r} is not a valid id")
        if not isinstance(entry, Mapping) or not isinstance(entry.get("public_key"), str):
            raise KeyFileError(f"{source}: operator {name!r} must be an object with a public_key string")
        role = entry.get("role")
        if role not in (ROLE_OPERATOR, ROLE_SUPERVISOR):
            raise KeyFileError(f"{source}: operator {name!r} role must be operator or supervisor, got {role!r}")
        try:
            public = PublicKey.from_hex(entry["public_key"])
        except KeyFileError as exc:
            raise KeyFileError(f"{source}: operator {name!r}: {exc}") from exc
        if "kid" in entry and entry["kid"] != public.kid:
            raise KeyFileError(f"{source}: operator {name!r} kid does not match its public key")
        out[name] = OperatorEntry(name, role, public)
    return out


def operator_key_path(directory: Path, operator: str) -> Path:
    return directory / OPERATORS_DIR / f"{operator}.pem"


def load_operator_key(directory: Path, operator: str) -> SigningKey:
    path = operator_key_path(directory, operator)
    if not path.exists():
        raise KeyFileError(f"no private key for operator {operator!r}: {path} does not exist")
    return SigningKey.load(path)


def private_key_path(directory: Path, device: str) -> Path:
    return directory / f"{device}.pem"


def _kept_or_new(path: Path, overwrite: bool) -> SigningKey:
    if path.exists() and not overwrite:
        return SigningKey.load(path)
    key = SigningKey.generate()
    key.save(path)
    return key


def provision(
    election: Election, directory: Path, *, overwrite: bool = False, operators: int = 0, supervisors: int = 1
) -> Registry:
    """Create a key for every device of ``election`` and the cloud's signing key in
    ``directory``, and write the registry.

    With ``operators`` > 0, also ``operators`` operator keys (``operator-1`` ...) and
    ``supervisors`` supervisor keys (``supervisor-1`` ...) in ``directory/operators/``, and a
    manual-entry source ``manual-<precinct>`` (its own device key) for every precinct.
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
    people: dict[str, OperatorEntry] = {}
    if operators > 0:
        for precinct in election.precincts:
            device = f"{MANUAL_PREFIX}{precinct.id}"
            if not ID_PATTERN.match(device) or election.precinct_of(device) is not None:
                raise KeyFileError(f"cannot name the manual source of precinct {precinct.id!r}: {device!r} is taken or too long")
            key = _kept_or_new(private_key_path(directory, device), overwrite)
            devices[device] = DeviceEntry(device, precinct.id, key.public, SOURCE_MANUAL)
        try:
            (directory / OPERATORS_DIR).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise KeyFileError(f"cannot create {directory / OPERATORS_DIR}: {exc.strerror}") from exc
        for role, n in ((ROLE_OPERATOR, operators), (ROLE_SUPERVISOR, supervisors)):
            for i in range(1, n + 1):
                name = f"{role}-{i}"
                key = _kept_or_new(operator_key_path(directory, name), overwrite)
                people[name] = OperatorEntry(name, role, key.public)
    registry = Registry(election=election, devices=devices, cloud_key=cloud.public, operators=people)
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
