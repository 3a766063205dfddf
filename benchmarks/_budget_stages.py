"""The CPU budget's in-process stages: the real functions of each tier, timed on the real
payloads (the sample election's signed envelopes, ~568 B; the gateway's bundles of 64), in µs
of this thread's CPU (``time.thread_time``) per call, the median of ``rounds`` rounds.

* sign: what a device does per batch once the body exists, ``seal(body, key).to_bytes()`` and
  the body hash it chains on (the body generator is the simulation's, not counted);
* gateway parse + verify: ``gateway.verify.classify`` per envelope (topic, size, JSON, Ed25519,
  election), as the gateway's verification threads call it;
* cloud parse + verify: ``cloud.ledger.ledger.unwrap`` of a bundle then ``Ledger.check`` of its
  entries, per entry, as the cloud worker's verification threads do;
* device receipt handling: ``protocol.signed.open_receipt`` (Ed25519 verify of the cloud's
  signature) then ``Tabulator.apply_receipt``, per receipt.

The verify rows run inside the gateway and cloud processes too: :mod:`benchmarks.budget` shows
them as "of which" rows and does not add them to the sum.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine

from benchmarks._mqtt import Envelope
from cloud.ledger.ledger import Ledger, Rejection, unwrap
from devices.generator import iter_batches
from devices.tabulator import Tabulator
from gateway.buffer.schema import State
from gateway.verify import classify
from protocol import (
    Election,
    Receipt,
    Registry,
    body_hash,
    gateway_bundle_topic,
    load_signing_key,
    seal,
)
from protocol import bundle as bundles
from protocol.limits import DEFAULT_MAX_BYTES
from protocol.registry import load_cloud_key
from protocol.signed import open_receipt, sign_receipt

BUNDLE_MAX = 64  # the gateway's default --bundle-max


@dataclass(frozen=True)
class InProcess:
    """µs of CPU per call of each in-process stage."""

    sign_us: float
    gateway_verify_us: float
    cloud_verify_us: float
    receipt_us: float


def cpu_us_per_call(run: Callable[[], int], rounds: int) -> float:
    """Median over ``rounds`` of (thread CPU of one ``run()``) / (the calls it reports), in µs."""
    samples = []
    for _ in range(max(1, rounds)):
        started = time.thread_time()
        calls = run()
        samples.append((time.thread_time() - started) * 1e6 / max(1, calls))
    return statistics.median(samples)


def time_sign(election: Election, keys: Path, count: int, rounds: int) -> float:
    devices = election.devices[: max(1, min(len(election.devices), count // 10 or 1))]
    per_device = -(-count // len(devices))
    work = []
    for device in devices:
        key = load_signing_key(keys, device)
        work += [(body, key) for body in iter_batches(election, 7, device, per_device)]

    def run() -> int:
        for body, key in work:
            envelope = seal(body, key)
            envelope.to_bytes()
            body_hash(envelope.body)
        return len(work)

    return cpu_us_per_call(run, rounds)


def time_gateway_verify(registry: Registry, envelopes: Sequence[Envelope], rounds: int) -> float:
    refused = [row.reason for t, p in envelopes if (row := classify(t, p, 0.0, registry, DEFAULT_MAX_BYTES)).state != State.PENDING]
    if refused:  # a refusal is cheaper than a verify: the figure would be too low
        raise RuntimeError(f"the gateway refused {len(refused)} of the envelopes, first: {refused[0]}")

    def run() -> int:
        for topic, payload in envelopes:
            classify(topic, payload, 0.0, registry, DEFAULT_MAX_BYTES)
        return len(envelopes)

    return cpu_us_per_call(run, rounds)


def time_cloud_verify(registry: Registry, envelopes: Sequence[Envelope], rounds: int) -> float:
    ledger = Ledger(create_engine("sqlite://"), registry, max_payload_bytes=DEFAULT_MAX_BYTES)  # no I/O
    topic = gateway_bundle_topic("bench-gw")
    framed = [bundles.encode(envelopes[i : i + BUNDLE_MAX]) for i in range(0, len(envelopes), BUNDLE_MAX)]
    now = datetime.now(UTC)
    refused = [c for payload in framed for c in ledger.check(unwrap(topic, payload, now)) if isinstance(c, Rejection)]
    if refused:
        raise RuntimeError(f"the cloud refused {len(refused)} of the envelopes, first: {refused[0].reason}")

    def run() -> int:
        entries = 0
        for payload in framed:
            inbound = unwrap(topic, payload, now)
            ledger.check(inbound)
            entries += len(inbound)
        return entries

    return cpu_us_per_call(run, rounds)


def time_receipts(election: Election, keys: Path, registry: Registry, count: int, rounds: int) -> float:
    """Receipts seq 1..k of a few devices, each opened and applied in order (each advances)."""
    cloud = load_cloud_key(keys)
    devices = election.devices[:10]
    per_device = max(1, -(-count // len(devices)))
    tabs = [Tabulator.load(election, keys, device, 7, per_device) for device in devices]
    signed = [
        (tab.device, sign_receipt(Receipt(election.id, tab.device, b.seq, b.body_hash), cloud))
        for tab in tabs
        for b in tab.batches
    ]
    cloud_key = registry.cloud_key

    def run() -> int:
        for tab in tabs:
            tab.receipted = 0
            tab.acked.clear()
        by_device = {tab.device: tab for tab in tabs}
        for device, payload in signed:
            receipt = open_receipt(payload, cloud_key, election=election.id, device=device)
            by_device[device].apply_receipt(receipt)
        return len(signed)

    return cpu_us_per_call(run, rounds)


def measure_in_process(
    election: Election, keys: Path, registry: Registry, envelopes: Sequence[Envelope], rounds: int
) -> InProcess:
    """Every in-process stage, on ``envelopes`` (a few thousand is plenty)."""
    return InProcess(
        sign_us=time_sign(election, keys, len(envelopes), rounds),
        gateway_verify_us=time_gateway_verify(registry, envelopes, rounds),
        cloud_verify_us=time_cloud_verify(registry, envelopes, rounds),
        receipt_us=time_receipts(election, keys, registry, len(envelopes), rounds),
    )
