"""The fleet's ground truth (``--truth FILE.json``): what the cloud must make of what was sent.

Everything but the publish counters is decided before the first connection (the batches are
deterministic, devices/behaviours.py says what each behaviour sends), so the file is written
once after ``prepare`` and again at the end with what each device published.

Per device::

    behaviour   null or the behaviour's name
    final_seq   the device's final seq
    accept      [{seq, body_hash}]  each must be in the ledger exactly once, with that hash
    reject      [{seq, payload_hash, reason, where}]  each such message must be refused with that
                protocol RejectReason; ``where`` is who refuses it: ``gateway`` (stateless checks:
                the gateway verifies and quarantines, so the message never reaches the cloud;
                find it with ``gateway buffer quarantine``) or ``cloud`` (stateful: conflict,
                broken_chain, after_final; a row in the cloud's rejections table)
    duplicates  [{seq, body_hash, copies}]  extra copies of an accepted batch the device sends on
                purpose. The cloud counts one as a duplicate only if it reaches it: the gateway
                stores an envelope still buffered only once. So 0..copies, never a second row.
    withheld    [seq]  seqs whose first publish the device skips, as if lost on the way (lossy;
                [] for every other device). Each is in ``accept`` too: it must end in the ledger
                exactly once, brought by a resend (the cloud's repair request or the device's
                own resend timeout)
    repairs     [{seqs, state}]  the gaps the withheld seqs leave in the device's chain, written as
                ``cloud audit --json`` writes its ``repairs`` rows (``seqs`` "3" or "3-4"), and the
                state each must end in: ``repaired``. So: no row of this device is ``open``, and
                every withheld seq lies in a repaired row of this device in the audit's
                ``repairs`` (a gap filled over two commits keeps its one row, "3-4") -- unless
                the resend was committed before the seq above it, when the cloud never saw a
                jump and lists nothing: then the seqs are simply held
    confirmed   whether the cloud's receipt must reach final_seq (silent, wrong_key: no)
    ballots     ballots of the accepted batches
    published / resends   what the device put on the wire (filled at the end of the run)
    ignored     {word: {reason: n}}  receipts and repair requests the device ignored, not signed
                by the cloud for it (devices/fleet/words.py; filled at the end of the run)

Top level: ``expected`` totals over every accepted batch (ballots, contests, ballots per
precinct, accepted batch count, rejections by reason and where, ``withheld``: how many seqs were
withheld once over the fleet), the seed, the election and the behaviour of each device.
``version`` 2 added ``withheld``, ``repairs`` and ``expected.withheld``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from devices import behaviours as bh
from devices.behaviours import Behaviour
from devices.fleet.config import last_seq, withheld_seqs
from devices.fleet.fleet import Fleet
from devices.fleet.words import nested
from devices.tabulator import Tabulator
from protocol import RejectReason, parse_body, parse_envelope, sha256_hex

TRUTH_VERSION = 2
STATEFUL = frozenset({RejectReason.CONFLICT, RejectReason.BROKEN_CHAIN, RejectReason.AFTER_FINAL})


def where(reason: RejectReason) -> str:
    """Who refuses a message for ``reason``: the gateway (stateless) or the cloud ledger."""
    return "cloud" if reason in STATEFUL else "gateway"


def gap_rows(withheld: frozenset[int] | set[int]) -> list[dict[str, str]]:
    """The gaps ``withheld`` seqs leave, one per run of consecutive seqs, as the audit writes them."""
    rows: list[dict[str, str]] = []
    seqs = sorted(withheld)
    start = 0
    for i, seq in enumerate(seqs):
        if i + 1 == len(seqs) or seqs[i + 1] != seq + 1:
            first = seqs[start]
            seqs_text = f"{first}-{seq}" if first != seq else str(seq)
            rows.append({"seqs": seqs_text, "state": "repaired"})
            start = i + 1
    return rows


def device_truth(
    tab: Tabulator, behaviour: Behaviour | None, withheld: frozenset[int] = frozenset()
) -> dict[str, Any]:
    """``withheld``: the seqs the device skips on their first publish (devices/fleet/config.py
    withheld_seqs). Only those below an accepted seq the device does publish the first time leave
    a gap the cloud sees (for lossy: all of them, never seq 1 nor the final)."""
    last = last_seq(tab, behaviour)
    own = [b for b in tab.batches if b.seq <= last]
    accept: list[dict[str, Any]] = []
    reject: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []

    def refuse(seq: int, payload: bytes, reason: RejectReason) -> None:
        reject.append(
            {"seq": seq, "payload_hash": sha256_hex(payload), "reason": reason.value, "where": where(reason)}
        )

    if behaviour is Behaviour.WRONG_KEY:
        for batch in own:
            refuse(batch.seq, batch.payload, RejectReason.WRONG_KEY)
    else:
        accept = [{"seq": b.seq, "body_hash": b.body_hash} for b in own]
    if behaviour is Behaviour.TAMPERED:
        batch = tab.batches[bh.mid_seq(tab.final_seq) - 1]
        refuse(batch.seq, bh.tampered(batch.payload), RejectReason.BAD_SIGNATURE)
    elif behaviour is Behaviour.AFTER_FINAL:
        assert tab.key is not None  # an after_final device keeps its key (Fleet._build)
        refuse(tab.final_seq + 1, bh.after_final_payload(tab.batches[-1].payload, tab.key), RejectReason.AFTER_FINAL)
    elif behaviour is Behaviour.DUPLICATE:
        duplicates = [{"seq": b.seq, "body_hash": b.body_hash, "copies": 1} for b in own]
    elif behaviour is Behaviour.REPLAY:
        duplicates = [{"seq": 1, "body_hash": tab.batches[0].body_hash, "copies": 1}]
    accepted_seqs = {a["seq"] for a in accept}
    top = max(accepted_seqs - withheld, default=0)  # highest seq published on the first go
    ballots = 0
    counts: dict[str, dict[str, int]] = {}
    for batch in tab.batches:
        if batch.seq not in accepted_seqs:
            continue
        body = parse_body(parse_envelope(batch.payload).body)
        ballots += body.ballots
        for contest, choices in body.counts.items():
            mine = counts.setdefault(contest, {})
            for choice, votes in choices.items():
                mine[choice] = mine.get(choice, 0) + votes
    return {
        "behaviour": behaviour.value if behaviour is not None else None,
        "precinct": tab.election.precinct_of(tab.device),
        "final_seq": tab.final_seq,
        "accept": accept,
        "reject": reject,
        "duplicates": duplicates,
        "withheld": sorted(withheld),
        "repairs": gap_rows({s for s in withheld if s < top}),
        "confirmed": behaviour not in (Behaviour.SILENT, Behaviour.WRONG_KEY),
        "ballots": ballots,
        "counts": counts,
        "published": tab.publishes,
        "resends": tab.resends,
        "ignored": nested(tab.ignored),  # receipts and repair requests ignored (devices/fleet/words.py)
    }


def aggregate(devices: Mapping[str, Mapping[str, Any]], contests: Mapping[str, list[str]]) -> dict[str, Any]:
    totals = {c: dict.fromkeys(choices, 0) for c, choices in contests.items()}
    by_precinct: dict[str, int] = {}
    rejected: dict[str, int] = {}
    ballots = batches = withheld = 0
    for entry in devices.values():
        ballots += entry["ballots"]
        batches += len(entry["accept"])
        withheld += len(entry.get("withheld", ()))
        by_precinct[entry["precinct"]] = by_precinct.get(entry["precinct"], 0) + entry["ballots"]
        for contest, choices in entry["counts"].items():
            for choice, votes in choices.items():
                totals[contest][choice] += votes
        for item in entry["reject"]:
            key = f"{item['where']}:{item['reason']}"
            rejected[key] = rejected.get(key, 0) + 1
    return {
        "ballots": ballots,
        "batches": batches,
        "contests": totals,
        "ballots_by_precinct": dict(sorted(by_precinct.items())),
        "rejected": dict(sorted(rejected.items())),
        "withheld": withheld,
    }


def build_truth(fleet: Fleet) -> dict[str, Any]:
    election = fleet.registry.election
    behaviours = fleet.config.behaviours
    devices: dict[str, dict[str, Any]] = {}
    for tab in fleet.tabulators:
        behaviour = behaviours.get(tab.device)
        withheld = withheld_seqs(fleet.config, tab, behaviour)
        devices[tab.device] = device_truth(tab, behaviour, withheld)
    contests = {c.id: list(c.choice_ids) for c in election.contests}
    return {
        "version": TRUTH_VERSION,
        "election": election.id,
        "seed": fleet.config.seed,
        "batches_per_device": fleet.config.batches_per_device,
        "behaviours": {d: b.value for d, b in sorted(behaviours.items())},
        "expected": aggregate(devices, contests),
        "devices": devices,
    }


def write_truth(path: Path, truth: Mapping[str, Any]) -> None:
    """Atomically (tmp + fsync + rename) write ``truth`` as JSON."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(orjson.dumps(truth, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load_truth(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


# -- shards ------------------------------------------------------------------------------
_MERGED_KEYS = frozenset({"devices", "expected", "behaviours"})
_ABSENT = object()


def merge_truths(truths: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One truth out of several fleet shards' (``devices run --shard k/N --truth FILE_k``).

    The shards' devices must be disjoint and every other top-level field (version, election,
    seed, batches per device, ...) the same; else :class:`ValueError` names the difference.
    ``devices`` and ``behaviours`` are united, ``expected`` added up (counters, per contest and
    choice, per precinct, per rejection reason) and checked against the merged devices
    (devices/truth.py ``aggregate``). The result equals the truth of the whole fleet run as one
    (up to the publish counters each device records).
    """
    if not truths:
        raise ValueError("no truth to merge")
    merged: dict[str, Any] = {}
    keys = sorted({k for truth in truths for k in truth} - _MERGED_KEYS)
    for key in keys:
        values = [truth.get(key, _ABSENT) for truth in truths]
        for i, value in enumerate(values[1:], start=2):
            if value != values[0]:
                raise ValueError(
                    f"the truths differ in {key!r}: {_shown(values[0])} (truth 1)"
                    f" vs {_shown(value)} (truth {i}); they are not shards of one fleet run"
                )
        merged[key] = copy.deepcopy(values[0])
    devices: dict[str, Any] = {}
    owner: dict[str, int] = {}
    for i, truth in enumerate(truths, start=1):
        for device, entry in truth.get("devices", {}).items():
            if device in devices:
                raise ValueError(
                    f"device {device} is in truth {owner[device]} and truth {i}:"
                    " the shards of a fleet hold disjoint devices"
                )
            devices[device] = copy.deepcopy(entry)
            owner[device] = i
    behaviours: dict[str, Any] = {}
    for truth in truths:
        behaviours.update(truth.get("behaviours", {}))
    expected: dict[str, Any] = {}
    for truth in truths:
        expected = _add(expected, truth.get("expected", {}), "expected")
    for key in ("ballots_by_precinct", "rejected"):
        if isinstance(expected.get(key), dict):
            expected[key] = dict(sorted(expected[key].items()))
    contests = {c: list(choices) for c, choices in expected.get("contests", {}).items()}
    for key, value in aggregate(devices, contests).items():
        if key in expected and expected[key] != value:
            raise ValueError(
                f"the truths' expected {key!r} do not add up to their devices':"
                f" {_shown(expected[key])} vs {_shown(value)}"
            )
    merged["behaviours"] = dict(sorted(behaviours.items()))
    merged["expected"] = expected
    merged["devices"] = dict(sorted(devices.items()))
    return merged


def _add(a: Any, b: Any, where: str) -> Any:
    """``a`` + ``b``: numbers added, mappings merged key by key, anything else must be equal."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = dict(a)
        for key, value in b.items():
            out[key] = (
                _add(out[key], value, f"{where}.{key}") if key in out else copy.deepcopy(value)
            )
        return out
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a + b
    if a != b:
        raise ValueError(f"the truths differ in {where}: {_shown(a)} vs {_shown(b)}")
    return a


def _shown(value: object) -> str:
    return "absent" if value is _ABSENT else repr(value)
