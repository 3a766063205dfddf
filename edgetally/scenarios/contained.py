"""The scenario check for a rogue client (``start: rogue``; edgetally/rogue.py): was it contained?

``CONTAINED`` holds when, in the rogue's report (``--report``) and the stores:

- it was handed no one's session and saw no message but its own device's, though it asked
  for the gateway's client id, ``#`` and every device's batches;
- the broker refused every forged receipt, repair request and batch it published as another
  device (Mosquitto closes the connection on a publish the ACL refuses);
- every reject of its flood that the broker acknowledged is accounted for at the gateway:
  quarantined with a reason, or counted past the quarantine caps (``quarantine_dropped``);
- no device ignored a receipt or repair request: no forged word reached one (a device that
  got one would also ignore it, since the cloud did not sign it; this says the ACL held first).

Its flood's payloads are not "unexpected" refusals for ``REFUSALS``: :func:`flood_hashes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgetally.rogue import FORGERIES
from edgetally.verdict import Check
from gateway.inspect.snapshot import buffer_stats

CONTAINED = "the rogue client contained"


def flood_hashes(report: Mapping[str, Any] | None) -> set[str]:
    """The payload SHA-256 of every reject the rogue flooded (none without a rogue)."""
    return set() if report is None else {str(h) for h in report["flood"]["payload_hashes"]}


def dropped_rejects(buffers: Iterable[Path], device: str) -> int:
    """Rejects of ``device`` the gateways counted past their quarantine caps, over every buffer."""
    return sum(
        int(entry["count"])
        for path in buffers
        for entry in buffer_stats(path).quarantine["dropped"]["by_device_reason"]
        if entry["device"] == device
    )


def check_contained(
    report: Mapping[str, Any],
    refused: Mapping[str, set[tuple[str, str]]],
    dropped: int,
    fleet_summaries: Iterable[Mapping[str, Any]],
) -> Check:
    """``refused``: payload hash -> {(where, reason)} (observe.read_refusals); ``dropped``:
    :func:`dropped_rejects` of the rogue's device."""
    problems: list[str] = []
    parts: list[str] = [f"as {report['device']}"]
    hijack = report["hijack"]
    if hijack["session_present"]:
        problems.append(f"the broker handed it the session of {hijack['client_id']}")
    if hijack["foreign"]:
        problems.append(f"it saw {hijack['foreign']} messages of others ({', '.join(hijack['foreign_topics'])})")
    if not problems:
        parts.append(f"{hijack['client_id']}'s session not handed over, 0 foreign messages")
    for kind in FORGERIES:
        attempted, refused_n = int(report[kind]["attempted"]), int(report[kind]["refused_by_broker"])
        parts.append(f"forged {kind} {refused_n}/{attempted} refused by the broker")
        if refused_n != attempted:
            problems.append(f"{attempted - refused_n} forged {kind} not refused by the broker")
    flood = report["flood"]
    reasons: dict[str, int] = {}
    for digest in flood_hashes(report):
        for where, reason in refused.get(digest, ()):
            if where == "gateway":
                reasons[reason] = reasons.get(reason, 0) + 1
    held = sum(reasons.values())
    acknowledged = int(flood["acknowledged"])
    shown = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) or "none"
    parts.append(f"flood {acknowledged}/{flood['published']} acknowledged: {held} quarantined ({shown}) + {dropped} counted past the cap")
    if held + dropped != acknowledged:
        problems.append(f"flood: {acknowledged} acknowledged but {held} quarantined + {dropped} counted")
    ignored = sum(int(n) for s in fleet_summaries for reasons_ in (s.get("ignored") or {}).values() for n in reasons_.values())
    if ignored:
        problems.append(f"devices ignored {ignored} receipts or repair requests: forged words reached them")
    detail = "; ".join(parts)
    return Check(CONTAINED, not problems, detail + (f"; FAILED: {'; '.join(problems)}" if problems else ""))
