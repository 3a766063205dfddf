"""Real buffer files for the inspection, check and recover tests: filled through the gateway's own
classification (real signed envelopes), and damaged the way disks damage files."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.generator import device_batches
from gateway.buffer.rows import NewMessage
from gateway.buffer.store import Buffer
from gateway.verify import classify
from protocol import (
    DEFAULT_MAX_BYTES,
    DeviceEntry,
    Election,
    Registry,
    SigningKey,
    batch_topic,
    seal,
)
from protocol.registry import private_key_path
from tests.gateway.support import SEED, Sent, envelopes

PAGE = 4096
TABLE_LEAF, TABLE_INTERIOR = 0x0D, 0x05


def arrived(sent: Sequence[Sent], registry: Registry, received_at: float | None = None) -> list[NewMessage]:
    """What the ingress would store for ``sent``: verified, pending or quarantined."""
    moment = time.time() if received_at is None else received_at
    return [classify(s.topic, s.payload, moment, registry, DEFAULT_MAX_BYTES) for s in sent]


@dataclass(frozen=True)
class Filled:
    path: Path
    sent: list[Sent]
    delivered: int
    inflight: int


def fill(
    path: Path,
    election: Election,
    keys_dir: Path,
    registry: Registry,
    *,
    devices: int = 6,
    batches: int = 20,
    delivered: int = 30,
    inflight: int = 10,
    extra: Sequence[NewMessage] = (),
) -> Filled:
    """A closed buffer holding real envelopes: some delivered, some in flight, the rest pending."""
    sent = envelopes(election, keys_dir, election.devices[:devices], batches)
    with Buffer(path, keys_dir=keys_dir, gateway_id="gw-test") as buffer:
        rows = arrived(sent, registry) + list(extra)
        for start in range(0, len(rows), 500):
            buffer.put_many(rows[start : start + 500])
        out = buffer.fetch_pack(delivered + inflight)
        buffer.confirm([row.id for row in out[:delivered]])
    return Filled(path, sent, delivered, inflight)


def page_types(path: Path) -> dict[int, list[int]]:
    """Page numbers by b-tree page type, read from the (checkpointed) file."""
    data = path.read_bytes()
    found: dict[int, list[int]] = {}
    for number in range(1, len(data) // PAGE + 1):
        offset = (number - 1) * PAGE + (100 if number == 1 else 0)
        found.setdefault(data[offset], []).append(number)
    return found


def messages_root(path: Path) -> int:
    probe = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return int(probe.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()[0])
    finally:
        probe.close()


def overwrite_page(path: Path, number: int, *, seed: int = 1) -> None:
    """Write random bytes over the whole of page ``number`` (1-based), as a bad sector would."""
    garbage = random.Random(seed).randbytes(PAGE)
    with open(path, "r+b") as file:
        file.seek((number - 1) * PAGE)
        file.write(garbage)


def truncate_pages(path: Path, keep: int) -> None:
    os.truncate(path, keep * PAGE)


def snapshot_dir(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def rotated_keys(keys_dir: Path, device: str, into: Path) -> tuple[Path, SigningKey]:
    """A copy of ``keys_dir`` in which ``device`` has a new key (as after a key was added)."""
    shutil.copytree(keys_dir, into)
    key = SigningKey.generate()
    key.save(private_key_path(into, device))
    registry = Registry.load(into)
    entry = registry.devices[device]
    devices = {**registry.devices, device: DeviceEntry(device, entry.precinct, key.public)}
    Registry(election=registry.election, devices=devices).save(into)
    return into, key


def signed_with(election: Election, device: str, key: SigningKey, batches: int) -> list[Sent]:
    """``device``'s batches sealed with ``key`` (not necessarily the registered one)."""
    return [
        Sent(batch_topic(election.id, device), seal(body, key).to_bytes(), device, body.seq)
        for body in device_batches(election, SEED, device, batches)
    ]
