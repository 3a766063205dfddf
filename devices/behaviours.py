"""Misbehaviours real tabulators have, and which devices of a fleet get which one.

Selection (``--behaviour NAME=SHARE``, repeatable, and ``--behaviours FILE.yaml``) is
deterministic: the same devices, seed and specs always give the same assignment, whatever the
order the specs were given in. Each device has at most one behaviour (so the ground truth of
every device is simple to state). Per-device entries of a profile are placed first; shares are
then drawn, behaviour by behaviour in :class:`Behaviour` order, from the devices still honest,
each behaviour with its own random stream (``"{seed}/behaviour/{name}"``).

A share is ``5%`` (of the devices run, rounded half up, at least 1 when the share is above 0)
or a count ``3``. Profile (YAML)::

    devices:            # per device
      dev-001: flap
      dev-002: silent
    share:              # for a share of the rest
      duplicate: 5%
      slow: 2

What each behaviour does (the fleet carries it out; devices/truth.py states what the cloud must
make of it; "mid" is the seq ``max(1, final // 2)``):

    flap         drops its connection (no DISCONNECT) once after publishing seq mid, reconnects
    reboot       after seq mid: drops its connection and its memory, reopens from --state-dir
    power_loss   seq mid is written ahead and its PUBLISH written to the socket, then the device
                 dies before the PUBACK and reboots from --state-dir (the batch may or may not
                 have reached the broker)
    duplicate    publishes every batch twice in a row
    replay       once confirmed, publishes its seq 1 again (the exact old bytes)
    tampered     before seq mid, publishes a copy of it whose counts were changed after signing
    wrong_key    signs every batch with a key that is not its registered one
    clock_skew   every batch's issued_at is CLOCK_SKEW off (the chain is rebuilt over them)
    slow         waits SLOW_DELAY_S before each publish
    silent       never sends its final batch
    after_final  once confirmed, publishes a signed, chained seq final + 1
    burst        publishes all its batches at once (no waiting for each PUBACK, no rate limit)
    lossy        the first publish of one or two of its seqs is lost on the way (never seq 1, never
                 the final: see lost_seqs), so the cloud sees its chain jump; it resends them when
                 the cloud's repair request names them, or at its resend timeout
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from devices._exceptions import FleetError
from protocol import BatchBody, SigningKey, body_hash, parse_body, parse_envelope, seal
from protocol.election import format_timestamp, parse_timestamp
from protocol.envelope import Envelope

CLOCK_SKEW = timedelta(days=-400)  # far in the past: a tabulator whose RTC battery died
SLOW_DELAY_S = 0.3


class Behaviour(StrEnum):
    FLAP = "flap"
    REBOOT = "reboot"
    POWER_LOSS = "power_loss"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    TAMPERED = "tampered"
    WRONG_KEY = "wrong_key"
    CLOCK_SKEW = "clock_skew"
    SLOW = "slow"
    SILENT = "silent"
    AFTER_FINAL = "after_final"
    BURST = "burst"
    LOSSY = "lossy"  # last: adding it left every other behaviour's assignment as it was


NEEDS_STATE_DIR = frozenset({Behaviour.REBOOT, Behaviour.POWER_LOSS})


def parse_behaviour(name: str) -> Behaviour:
    key = name.strip().lower().replace("-", "_")
    try:
        return Behaviour(key)
    except ValueError:
        known = ", ".join(b.value for b in Behaviour)
        raise FleetError(f"unknown behaviour {name!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class Share:
    """``percent`` of the fleet, or an exact ``count`` of devices."""

    percent: float | None = None
    count: int | None = None

    def of(self, devices: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        if self.percent <= 0:
            return 0
        return max(1, math.floor(devices * self.percent / 100 + 0.5))

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


def parse_share(text: str, where: str = "") -> Share:
    raw = str(text).strip()
    label = f"{where}: " if where else ""
    try:
        if raw.endswith("%"):
            percent = float(raw[:-1])
            if not 0 <= percent <= 100:
                raise ValueError(raw)
            return Share(percent=percent)
        count = int(raw)
        if count < 0:
            raise ValueError(raw)
        return Share(count=count)
    except ValueError:
        raise FleetError(f"{label}share {raw!r} is not a percentage like 5% or a device count like 3") from None


def parse_spec(text: str) -> tuple[Behaviour, Share]:
    """``NAME=SHARE`` as given to ``--behaviour``."""
    name, sep, share = text.partition("=")
    if not sep:
        raise FleetError(f"--behaviour {text!r}: expected NAME=SHARE, e.g. flap=5% or silent=2")
    return parse_behaviour(name), parse_share(share, f"--behaviour {text}")


@dataclass(frozen=True)
class Profile:
    """What to inject: per-device behaviours and shares of the rest."""

    per_device: Mapping[str, Behaviour]
    shares: Mapping[Behaviour, Share]

    def merged(self, other: Profile) -> Profile:
        shares = dict(self.shares)
        for behaviour, share in other.shares.items():
            if behaviour in shares:
                raise FleetError(f"behaviour {behaviour} is given a share twice")
            shares[behaviour] = share
        per_device = dict(self.per_device)
        for device, behaviour in other.per_device.items():
            if device in per_device and per_device[device] is not behaviour:
                raise FleetError(f"device {device!r} is given two behaviours")
            per_device[device] = behaviour
        return Profile(per_device, shares)

    @property
    def used(self) -> frozenset[Behaviour]:
        return frozenset(self.per_device.values()) | {b for b, s in self.shares.items() if s.percent or s.count}


EMPTY = Profile({}, {})


def profile_from_specs(specs: Sequence[str]) -> Profile:
    shares: dict[Behaviour, Share] = {}
    for text in specs:
        behaviour, share = parse_spec(text)
        if behaviour in shares:
            raise FleetError(f"--behaviour {behaviour} given twice")
        shares[behaviour] = share
    return Profile({}, shares)


def load_profile(path: Path) -> Profile:
    """Read a YAML profile (see the module docstring); errors name the file and the entry."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the behaviour profile: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise FleetError(f"{path}: not YAML: {exc}") from exc
    if data is None:
        return EMPTY
    if not isinstance(data, dict) or not set(data) <= {"devices", "share"}:
        raise FleetError(f"{path}: a behaviour profile is a mapping with 'devices' and/or 'share'")
    per_device: dict[str, Behaviour] = {}
    for device, name in _mapping(data.get("devices"), path, "devices").items():
        try:
            per_device[str(device)] = parse_behaviour(str(name))
        except FleetError as exc:
            raise FleetError(f"{path}: devices.{device}: {exc}") from None
    shares: dict[Behaviour, Share] = {}
    for name, share in _mapping(data.get("share"), path, "share").items():
        try:
            shares[parse_behaviour(str(name))] = parse_share(str(share), f"{path}: share.{name}")
        except FleetError as exc:
            raise FleetError(f"{path}: share.{name}: {exc}") from None
    return Profile(per_device, shares)


def _mapping(value: Any, path: Path, key: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FleetError(f"{path}: {key!r} must be a mapping")
    return value


def assign(devices: Sequence[str], profile: Profile, seed: int) -> dict[str, Behaviour]:
    """Which device gets which behaviour (devices not in the result behave)."""
    chosen: dict[str, Behaviour] = {}
    known = set(devices)
    for device, behaviour in sorted(profile.per_device.items()):
        if device not in known:
            raise FleetError(f"behaviour profile names device {device!r}, which is not in this fleet")
        chosen[device] = behaviour
    honest = sorted(d for d in devices if d not in chosen)
    for behaviour in Behaviour:  # a fixed order: the assignment does not depend on the specs' order
        share = profile.shares.get(behaviour)
        if share is None:
            continue
        wanted = share.of(len(devices))
        if wanted > len(honest):
            raise FleetError(
                f"behaviour {behaviour}={share} wants {wanted} devices, only {len(honest)} are left"
                f" without a behaviour (of {len(devices)})"
            )
        picked = random.Random(f"{seed}/behaviour/{behaviour.value}").sample(honest, wanted)
        for device in picked:
            chosen[device] = behaviour
        picked_set = set(picked)
        honest = [d for d in honest if d not in picked_set]
    return dict(sorted(chosen.items()))


# -- what the behaviours send -----------------------------------------------------------


def mid_seq(final_seq: int) -> int:
    return max(1, final_seq // 2)


LOSSY_MIN_BATCHES = 3  # a seq between the first and the final one


def lost_seqs(seed: int, device: str, final_seq: int) -> frozenset[int]:
    """lossy: the seqs whose first publish is lost, one or two of ``2 .. final_seq - 1``.

    Chosen from the seed and the device alone (not the fleet, its order or its sharding). Never
    seq 1 and never the final batch: a later seq always follows, so the cloud sees the chain jump
    and asks for the gap. Empty when there is no seq in between (fewer than LOSSY_MIN_BATCHES).
    """
    middle = range(2, final_seq)
    if not middle:
        return frozenset()
    rng = random.Random(f"{seed}/lossy/{device}")
    count = min(len(middle), rng.choice((1, 2)))
    return frozenset(rng.sample(middle, count))


def wrong_key(seed: int, device: str) -> SigningKey:
    """A deterministic key that is not the device's registered one."""
    return SigningKey.from_seed(hashlib.sha256(f"{seed}/wrong-key/{device}".encode()).digest())


def skew(body: BatchBody) -> BatchBody:
    """``adjust`` for clock_skew: issued_at moved by CLOCK_SKEW."""
    moved = parse_timestamp(body.issued_at, "issued_at") + CLOCK_SKEW
    return replace(body, issued_at=format_timestamp(moved))


def tampered(payload: bytes) -> bytes:
    """The envelope ``payload`` with one vote moved between choices after signing (same sig, kid)."""
    envelope = parse_envelope(payload)
    body = parse_body(envelope.body)
    counts = {c: dict(ch) for c, ch in body.counts.items()}
    contest = next(iter(counts))
    choices = list(counts[contest])
    source = next((c for c in choices if counts[contest][c] > 0), None)
    if source is None or len(choices) < 2:
        counts[contest][choices[0]] += 1  # nothing to move: add one
    else:
        target = choices[1] if source == choices[0] else choices[0]
        counts[contest][source] -= 1
        counts[contest][target] += 1
    forged = replace(body, counts=counts)
    return Envelope(body=forged.to_bytes(), sig=envelope.sig, kid=envelope.kid).to_bytes()


def after_final_payload(final_payload: bytes, key: SigningKey) -> bytes:
    """A correctly signed batch chained onto the final one: seq final + 1, no ballots."""
    envelope = parse_envelope(final_payload)
    final = parse_body(envelope.body)
    issued = parse_timestamp(final.issued_at, "issued_at") + timedelta(minutes=1)
    body = replace(
        final,
        seq=final.seq + 1,
        prev=body_hash(envelope.body),
        issued_at=format_timestamp(issued),
        ballots=0,
        counts={c: dict.fromkeys(ch, 0) for c, ch in final.counts.items()},
        final=False,
        totals=None,
    )
    return seal(body, key).to_bytes()
