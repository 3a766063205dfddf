"""Checks of a fleet's inputs before any connection: election file, registry, private keys.

:func:`check_fleet_inputs` is what ``edgetally devices run`` calls first. It reads the
election file (when one is given; errors name ``FILE:LINE``, see devices/election_file.py),
the keys directory's ``registry.json``, and the private key of every device that will run,
and raises a :mod:`devices._exceptions` error with a one-line message naming the file, the
line or id, and the problem:

    ElectionFileError  the election file is unreadable or does not hold together
    ProvisionError     no keys directory or registry; a registry without the cloud key (devices
                       would have nothing to verify receipts with); the registry was provisioned for another
                       election than the file; a device has no registry entry, no private key,
                       or a private key that is not the one registered
    FleetError         a requested device is not in the election, or is requested twice

Cost: one PEM parse per device (about 0.1 ms each: ~1 s for 10,000 devices).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from devices._exceptions import FleetError, ProvisionError
from devices.election_file import ElectionSource, read_election_file
from protocol import Election, KeyFileError, Registry
from protocol.keys import SigningKey
from protocol.registry import REGISTRY_FILE, private_key_path


def check_fleet_inputs(
    election_path: Path | None, keys_dir: Path, devices: Sequence[str] | None
) -> Election:
    """Validate everything a fleet needs; return the election the devices will run.

    ``devices`` is the subset to run (None: every device of the election).
    """
    source = read_election_file(election_path) if election_path is not None else None
    registry = load_registry(keys_dir, devices)
    registry_file = keys_dir / REGISTRY_FILE
    if source is not None:
        _check_same_election(source, registry.election, registry_file)
    election = source.election if source is not None else registry.election
    chosen = list(devices) if devices is not None else list(election.devices)
    _check_chosen(chosen, election, source, registry_file)
    for device in chosen:
        _check_key(device, election, registry, keys_dir, registry_file, source)
    return election


def check_tls_files(keys_dir: Path, devices: Sequence[str]) -> None:
    """Every device's TLS certificate and key, and the CA they trust, are in ``keys_dir``
    (for an mqtts:// broker), before any connection."""
    from protocol.tls import Role, client_tls

    hint = f"run `edgetally devices provision --out {keys_dir} --pki PKI_DIR`"
    for device in devices:
        files = client_tls(keys_dir, Role.DEVICE, device)
        for path in (files.cert, files.key, files.ca):
            if not path.is_file():
                raise ProvisionError(f"{path}: device {device!r} has no TLS certificate for mqtts:// ({hint})")


def load_registry(keys_dir: Path, devices: Collection[str] | None = None) -> Registry:
    """The registry of ``keys_dir`` with only ``devices``' entries (None: every device's).

    A fleet needs the election and the cloud key, and of the device entries only those of the
    devices it runs: measured here, every entry's public key costs ~2.9 KiB (OpenSSL's key
    object) and 100,000 of them 285 MiB in each fleet process, a shard of 16,667 devices
    included; so the others are dropped before they are parsed."""
    hint = f"run `edgetally devices provision --out {keys_dir}`"
    if not keys_dir.is_dir():
        raise ProvisionError(f"{keys_dir}: keys directory does not exist ({hint})")
    file = keys_dir / REGISTRY_FILE
    if not file.is_file():
        raise ProvisionError(f"{file}: no registry in the keys directory ({hint})")
    try:
        if devices is None:
            registry = Registry.load(keys_dir)
        else:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise KeyFileError(f"cannot read registry {file}: {exc}") from exc
            wanted = set(devices)
            if isinstance(data, dict) and isinstance(data.get("devices"), dict):
                data["devices"] = {d: e for d, e in data["devices"].items() if d in wanted}
            registry = Registry.from_mapping(data, source=str(file))
    except KeyFileError as exc:
        raise ProvisionError(str(exc)) from exc
    if registry.cloud_key is None:
        raise ProvisionError(
            f"{keys_dir / REGISTRY_FILE}: no cloud key, so the devices could not verify receipts"
            f" and repair requests ({hint} again: it keeps the device keys and adds the cloud key)"
        )
    return registry


def _check_chosen(
    chosen: list[str], election: Election, source: ElectionSource | None, registry_file: Path
) -> None:
    origin = source.path if source is not None else registry_file
    seen: set[str] = set()
    for device in chosen:
        if election.precinct_of(device) is None:
            raise FleetError(f"{origin}: device {device!r} is not in election {election.id!r}")
        if device in seen:
            raise FleetError(f"device {device!r} is requested twice")
        seen.add(device)


def _check_key(
    device: str,
    election: Election,
    registry: Registry,
    keys_dir: Path,
    registry_file: Path,
    source: ElectionSource | None,
) -> None:
    where = source.where(device) if source is not None else f"device {device!r}"
    entry = registry.devices.get(device)
    if entry is None:
        raise ProvisionError(
            f"{registry_file}: no entry for device {device!r} ({where}); re-run"
            f" `edgetally devices provision --out {keys_dir}`"
        )
    pem = private_key_path(keys_dir, device)
    if not pem.is_file():
        raise ProvisionError(
            f"{pem}: missing private key of device {device!r} (precinct"
            f" {election.precinct_of(device)!r}); re-run `edgetally devices provision --out {keys_dir}`"
        )
    try:
        key = SigningKey.load(pem)
    except KeyFileError as exc:
        raise ProvisionError(f"{pem}: unusable private key of device {device!r}: {exc}") from exc
    if key.kid != entry.kid:
        raise ProvisionError(
            f"{pem}: private key of device {device!r} (kid {key.kid}) is not the key"
            f" {registry_file} registers for it (kid {entry.kid}); its batches would be rejected"
        )


def _check_same_election(source: ElectionSource, registered: Election, registry_file: Path) -> None:
    """The file must be exactly the election the keys were provisioned for; name the first difference."""
    ours = source.election
    if ours.to_mapping() == registered.to_mapping():
        return
    prefix = f"{source.path} disagrees with {registry_file}"
    if ours.id != registered.id:
        raise ProvisionError(
            f"{prefix}: election {ours.id!r} here, the keys were provisioned for {registered.id!r}"
        )
    theirs_devices = set(registered.devices)
    for device in ours.devices:
        if device not in theirs_devices:
            raise ProvisionError(
                f"{source.where(device)}: device {device!r} is not in {registry_file} (no key"
                " provisioned for it); re-run `edgetally devices provision`"
            )
    ours_devices = set(ours.devices)
    for device in registered.devices:
        if device not in ours_devices:
            raise ProvisionError(f"{prefix}: device {device!r} is registered but not in the file")
    for device in ours.devices:
        if ours.precinct_of(device) != registered.precinct_of(device):
            raise ProvisionError(
                f"{source.where(device)}: device {device!r} is in precinct"
                f" {ours.precinct_of(device)!r} here, {registered.precinct_of(device)!r} in {registry_file}"
            )
    mine, theirs = ours.to_mapping(), registered.to_mapping()
    for contest in _by_id(mine["contests"]).keys() | _by_id(theirs["contests"]).keys():
        if _by_id(mine["contests"]).get(contest) != _by_id(theirs["contests"]).get(contest):
            raise ProvisionError(f"{source.where(contest)}: contest {contest!r} differs from {registry_file}")
    for unit in ours.units.keys() | registered.units.keys():
        if ours.units.get(unit) != registered.units.get(unit):
            raise ProvisionError(f"{source.where(unit)}: unit {unit!r} differs from {registry_file}")
    raise ProvisionError(f"{prefix}: name or polls_close differ")


def _by_id(items: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(item["id"]): item for item in items}
