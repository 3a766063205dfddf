"""The cloud's words to a device, verified before they count: receipts and repair requests.

A receipt makes a device forget batches and a repair request makes it resend, so a device acts
on one only if the cloud signed it for this device of this election (protocol/signed.py,
docs/protocol.md §9b). Anything else (unsigned, another key's, tampered, for another device or
election, malformed) is ignored: the device keeps its batches and resends as before. Each ignored
word is counted per word and reason, fleet-wide (:attr:`FleetStats.ignored`, the summary, the
metrics) and per device (:attr:`Tabulator.ignored`, the truth file), and logged one line naming
device and reason: the first of a device's words per (word, reason) at WARNING, the rest at
DEBUG, so a flood of forgeries does not flood the log.
"""

from __future__ import annotations

import logging

from devices.fleet.stats import FleetStats
from devices.tabulator import Tabulator
from protocol import ProtocolError, PublicKey, Receipt, RepairRequest
from protocol.signed import open_receipt, open_repair

log = logging.getLogger(__name__)

RECEIPT = "receipt"
REPAIR = "repair"


def verified_receipt(
    payload: bytes, cloud_key: PublicKey, tab: Tabulator, stats: FleetStats
) -> Receipt | None:
    """The receipt in ``payload`` if the cloud signed it for ``tab``'s device; else None
    (counted and logged)."""
    try:
        return open_receipt(payload, cloud_key, election=tab.election.id, device=tab.device)
    except ProtocolError as exc:
        ignored(RECEIPT, exc, tab, stats)
        return None


def verified_repair(
    payload: bytes, cloud_key: PublicKey, tab: Tabulator, stats: FleetStats
) -> RepairRequest | None:
    """The repair request in ``payload`` if the cloud signed it for ``tab``'s device; else
    None (counted and logged)."""
    try:
        return open_repair(payload, cloud_key, election=tab.election.id, device=tab.device)
    except ProtocolError as exc:
        ignored(REPAIR, exc, tab, stats)
        return None


def ignored(word: str, exc: ProtocolError, tab: Tabulator, stats: FleetStats) -> None:
    """Count an ignored ``word`` (``receipt`` or ``repair``) for ``tab``'s device and the fleet;
    log it at WARNING the first time per device, word and reason, at DEBUG after that."""
    key = (word, exc.reason.value)
    first = key not in tab.ignored
    tab.ignored[key] = tab.ignored.get(key, 0) + 1
    stats.ignored[key] = stats.ignored.get(key, 0) + 1
    if first:
        log.warning(
            "device=%s ignoring %s (%s): %s; it keeps its batches (more of these logged at DEBUG)",
            tab.device, _WHAT[word], exc.reason.value, exc,
        )  # fmt: skip
    else:
        log.debug("device=%s ignoring %s (%s): %s", tab.device, _WHAT[word], exc.reason.value, exc)


_WHAT = {RECEIPT: "a receipt", REPAIR: "a repair request"}


def nested(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """``{(word, reason): n}`` as ``{word: {reason: n}}``, sorted (the JSON form)."""
    out: dict[str, dict[str, int]] = {}
    for (word, reason), count in sorted(counts.items()):
        out.setdefault(word, {})[reason] = count
    return out
