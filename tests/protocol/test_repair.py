"""Repair requests: exact bytes out, strict parse in; gap detection as seq ranges."""

from __future__ import annotations

import pytest

from protocol import (
    InvalidValue,
    NonCanonicalBody,
    ProtocolError,
    RepairRequest,
    WrongType,
    command_topic,
    missing_ranges,
    parse_device_topic,
)
from protocol.topics import DeviceTopicKind

VECTOR = b'{"device":"p-001-a","election":"sample-2026","missing":[[11,12]],"type":"repair","v":1}'


def test_repair_request_bytes_match_the_documented_vector() -> None:
    request = RepairRequest("sample-2026", "p-001-a", ((11, 12),))
    assert request.to_bytes() == VECTOR
    assert RepairRequest.parse(VECTOR) == request
    assert request.seqs == [11, 12]


def test_command_topic_is_a_device_topic() -> None:
    topic = command_topic("sample-2026", "p-001-a")
    assert topic == "edgetally/v1/sample-2026/p-001-a/command"
    parsed = parse_device_topic(topic)
    assert parsed is not None and parsed.kind is DeviceTopicKind.COMMAND


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (VECTOR.replace(b'"v":1', b'"v":2'), InvalidValue),
        (VECTOR.replace(b'"repair"', b'"reboot"'), InvalidValue),
        (VECTOR.replace(b"[[11,12]]", b"[]"), InvalidValue),
        (VECTOR.replace(b"[[11,12]]", b"[[12,11]]"), InvalidValue),
        (VECTOR.replace(b"[[11,12]]", b"[[0,2]]"), InvalidValue),
        (VECTOR.replace(b"[[11,12]]", b"[[11,12],[13,14]]"), InvalidValue),  # adjacent
        (VECTOR.replace(b"[[11,12]]", b"[[11,12],[5,6]]"), InvalidValue),  # not ascending
        (VECTOR.replace(b"[[11,12]]", b'[[11,"12"]]'), WrongType),
        (VECTOR.replace(b"[[11,12]]", b"[[11,12,13]]"), WrongType),
        (VECTOR.replace(b":", b": ", 1), NonCanonicalBody),
        (b"[]", ProtocolError),
    ],
)
def test_bad_repair_requests_are_refused(payload: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        RepairRequest.parse(payload)


def test_missing_ranges_finds_the_jump() -> None:
    assert missing_ranges(10, 13, [13]) == ((11, 12),)
    assert missing_ranges(10, 16, [13, 16, 3, 99]) == ((11, 12), (14, 15))
    assert missing_ranges(10, 10, []) == ()
    assert missing_ranges(0, 3, [1, 2, 3]) == ()
    assert missing_ranges(0, 9, [3, 5, 7, 9], limit=2) == ((1, 2), (4, 4))
