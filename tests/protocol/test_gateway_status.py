"""The gateway status message (protocol/gateway_status.py, docs/protocol.md section 15)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol import ProtocolError, RejectReason
from protocol.gateway_status import GatewayStatus, Quarantine, Rates
from tests.helpers import REPO

DOC = REPO / "docs" / "protocol.md"


def documented_example() -> bytes:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## 15. Gateway status") :]
    [line] = [line for line in section.splitlines() if line.startswith('{"at":')]
    return line.encode()


def test_the_documented_example_parses_and_is_written_back_byte_for_byte() -> None:
    example = documented_example()
    status = GatewayStatus.parse(example)
    assert status.to_bytes() == example
    assert status.rates == Rates(ingress=19.8, egress=0.0, interval_s=5.0)
    assert status.buffer == {"delivered": 0, "inflight": 0, "pending": 1200, "quarantined": 1}


def test_a_last_will_has_nulls_where_it_cannot_know() -> None:
    will = GatewayStatus(
        gateway="gw1", state="offline", started_at="2026-11-03T19:58:00Z", pid=1, version="0.1.0"
    )
    assert GatewayStatus.parse(will.to_bytes()) == will


QUARANTINE = {"rows": 0, "bytes": 0, "dropped": 0, "devices_at_cap": 0, "total_at_cap": False}


def test_the_documented_example_carries_the_quarantine_figures() -> None:
    status = GatewayStatus.parse(documented_example())
    assert status.quarantine == Quarantine(rows=1, bytes=2311, dropped=0, devices_at_cap=0, total_at_cap=False)


def test_a_status_of_an_older_gateway_without_quarantine_figures_is_accepted() -> None:
    status = GatewayStatus.parse(_with(quarantine=KeyError))
    assert status.quarantine is None and status.buffer is not None


def _with(**changes: Any) -> bytes:
    data = orjson.loads(documented_example())
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[1]", RejectReason.MALFORMED_JSON),
        (b"{", RejectReason.MALFORMED_JSON),
        (_with(pid=KeyError), RejectReason.MISSING_FIELD),
        (_with(extra=1), RejectReason.EXTRA_FIELD),
        (_with(v=2), RejectReason.INVALID_VALUE),
        (_with(state="sleeping"), RejectReason.INVALID_VALUE),
        (_with(uplink=True), RejectReason.WRONG_TYPE),
        (_with(gateway="no spaces"), RejectReason.INVALID_VALUE),
        (_with(started_at="yesterday"), RejectReason.INVALID_VALUE),
        (_with(pid="1"), RejectReason.WRONG_TYPE),
        (
            _with(buffer={"pending": -1, "inflight": 0, "delivered": 0, "quarantined": 0}),
            RejectReason.INVALID_VALUE,
        ),
        (_with(buffer={"pending": 1}), RejectReason.MISSING_FIELD),
        (_with(oldest_pending_age_s=-1), RejectReason.INVALID_VALUE),
        (_with(rates={"ingress": 1, "egress": None, "interval_s": 5}), RejectReason.WRONG_TYPE),
        (_with(quarantine={"rows": 1}), RejectReason.MISSING_FIELD),
        (_with(quarantine=[]), RejectReason.WRONG_TYPE),
        (_with(quarantine={**QUARANTINE, "dropped": -1}), RejectReason.INVALID_VALUE),
        (_with(quarantine={**QUARANTINE, "total_at_cap": 1}), RejectReason.WRONG_TYPE),
        (b" " * 5000, RejectReason.OVERSIZE),
    ],
)
def test_a_malformed_status_is_refused_with_a_reason(payload: bytes, reason: RejectReason) -> None:
    with pytest.raises(ProtocolError) as caught:
        GatewayStatus.parse(payload)
    assert caught.value.reason is reason
