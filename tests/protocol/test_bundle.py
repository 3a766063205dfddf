"""Uplink bundles (protocol/bundle.py): docs/protocol.md section 14 and its test vector, round
trips, and every way a bundle's framing can be corrupt."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import BadBundle, ProtocolError, RejectReason, batch_topic
from protocol import bundle as b
from protocol.bundle import (
    BadBundleCompression,
    BadBundleEntry,
    BadBundleHeader,
    BundleTooLarge,
    Entry,
    TruncatedBundle,
)
from tests.helpers import REPO
from tests.protocol.test_vector import read_vector

DOC = REPO / "docs" / "protocol.md"
_FENCE = re.compile(r"^```(bundle-vector-[a-z0-9-]+)\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
TOPIC = batch_topic("demo-2026", "town-p1-a")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    found = {m.group(1): m.group(2) for m in _FENCE.finditer(DOC.read_text(encoding="utf-8"))}
    assert set(found) == {
        "bundle-vector-header",
        "bundle-vector-entry-1-framing",
        "bundle-vector-sha256",
        "bundle-vector-compressed-base64",
    }
    return found


@pytest.fixture(scope="module")
def entries() -> tuple[Entry, ...]:
    vector = read_vector()
    return (
        Entry(TOPIC, vector["vector-envelope-1"].encode()),
        Entry(TOPIC, vector["vector-envelope-2"].encode()),
    )


def test_the_documented_vector_is_what_encode_produces(
    blocks: dict[str, str], entries: tuple[Entry, ...]
) -> None:
    data = b.encode(entries)
    assert data[:8].hex() == blocks["bundle-vector-header"]
    framing = bytes.fromhex(blocks["bundle-vector-entry-1-framing"])
    assert data[8 : 8 + len(framing)] == framing
    assert data[8 + len(framing) :].startswith(entries[0].payload)
    assert hashlib.sha256(data).hexdigest() == blocks["bundle-vector-sha256"]
    assert len(data) == 1127  # as the doc says
    assert b.decode(data) == entries


def test_the_documented_compressed_vector_decodes_to_the_same_entries(
    blocks: dict[str, str], entries: tuple[Entry, ...]
) -> None:
    data = base64.b64decode("".join(blocks["bundle-vector-compressed-base64"].split()))
    assert data[:8].hex() == "4554424e01010002"
    assert b.is_bundle(data) and b.count(data) == 2
    assert b.decode(data) == entries


def test_envelope_bytes_come_out_exactly_as_they_went_in_compressed_or_not(
    entries: tuple[Entry, ...],
) -> None:
    for compress in (False, True):
        data = b.encode([(e.topic, e.payload) for e in entries], compress=compress)
        assert b.decode(data) == entries
    assert len(b.encode(entries, compress=True)) < len(b.encode(entries))


@FAST
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=60).filter(lambda t: len(t.encode()) <= 1024),
            st.binary(max_size=300),
        ),
        min_size=1,
        max_size=40,
    ),
    st.booleans(),
)
def test_any_entries_round_trip(items: list[tuple[str, bytes]], compress: bool) -> None:
    data = b.encode(items, compress=compress)
    assert b.is_bundle(data) and b.count(data) == len(items)
    assert b.decode(data) == tuple(Entry(t, p) for t, p in items)


@FAST
@given(st.data())
def test_every_truncation_is_refused_as_truncated_or_bad_compression(data: st.DataObject) -> None:
    compress = data.draw(st.booleans())
    items = [(TOPIC, data.draw(st.binary(min_size=1, max_size=200))) for _ in range(3)]
    full = b.encode(items, compress=compress)
    cut = data.draw(st.integers(min_value=0, max_value=len(full) - 1))
    with pytest.raises(BadBundle) as caught:
        b.decode(full[:cut])
    assert isinstance(caught.value, TruncatedBundle | BadBundleCompression | BadBundleHeader)
    assert caught.value.reason is RejectReason.BAD_BUNDLE


def _header(magic: bytes = b"ETBN", version: int = 1, flags: int = 0, count: int = 1) -> bytes:
    return struct.pack(">4sBBH", magic, version, flags, count)


def _entry(topic: bytes, payload: bytes) -> bytes:
    return struct.pack(">H", len(topic)) + topic + struct.pack(">I", len(payload)) + payload


GOOD_ENTRY = _entry(TOPIC.encode(), b'{"body":"x"}')


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"XTBN" + _header()[4:] + GOOD_ENTRY, BadBundleHeader, "magic"),
        (b'{"body"', BadBundleHeader, "wrong magic"),
        (_header(version=2) + GOOD_ENTRY, BadBundleHeader, "version 2"),
        (_header(flags=0x02) + GOOD_ENTRY, BadBundleHeader, "flags"),
        (_header(count=0), BadBundleHeader, "count 0"),
        (_header(count=b.MAX_ENTRIES + 1) + GOOD_ENTRY, BadBundleHeader, "count"),
        (b"ETBN\x01", TruncatedBundle, "header"),
        (_header(count=2) + GOOD_ENTRY, TruncatedBundle, "entry 2"),
        (_header() + GOOD_ENTRY[:-1], TruncatedBundle, "payload of entry 1"),
        (_header() + GOOD_ENTRY + b"\x00", TruncatedBundle, "after its last entry"),
        (_header() + _entry(b"", b"x"), BadBundleEntry, "topic of entry 1"),
        (_header() + _entry(b"\xff\xfe", b"x"), BadBundleEntry, "not UTF-8"),
        (_header() + _entry(b"t" * 1025, b"x"), BadBundleEntry, "1025 bytes"),
        (_header(flags=1) + b"not zlib at all", BadBundleCompression, "zlib"),
        (_header(flags=1) + zlib.compress(GOOD_ENTRY)[:-3], BadBundleCompression, "truncated"),
        (_header(flags=1) + zlib.compress(GOOD_ENTRY) + b"x", BadBundleCompression, "after"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_corrupt_framing_is_refused_with_a_reason(
    data: bytes, error: type[BadBundle], words: str
) -> None:
    with pytest.raises(error, match=words) as caught:
        b.decode(data)
    assert caught.value.reason is RejectReason.BAD_BUNDLE
    assert isinstance(caught.value, ProtocolError)


def test_a_bundle_over_the_size_limit_is_oversize_before_anything_is_parsed() -> None:
    data = b.encode([(TOPIC, b"x" * 2000)])
    with pytest.raises(BundleTooLarge) as caught:
        b.decode(data, max_bytes=1000)
    assert caught.value.reason is RejectReason.OVERSIZE
    assert isinstance(caught.value, BadBundle)


def test_a_small_compressed_bundle_that_inflates_past_the_limit_is_refused() -> None:
    bomb = _header(flags=1) + zlib.compress(_entry(TOPIC.encode(), b"\x00" * 4_000_000), 9)
    assert len(bomb) < 10_000
    with pytest.raises(BundleTooLarge, match="decompress"):
        b.decode(bomb)


def test_encode_refuses_what_would_not_decode() -> None:
    with pytest.raises(BadBundleHeader):
        b.encode([])
    with pytest.raises(BadBundleEntry):
        b.encode([("", b"x")])
    with pytest.raises(BundleTooLarge):
        b.encode([(TOPIC, b"x" * 600)], max_bytes=500)
    with pytest.raises(BadBundleHeader):
        b.encode([(TOPIC, b"")] * (b.MAX_ENTRIES + 1))


def test_an_envelope_is_never_taken_for_a_bundle(entries: tuple[Entry, ...]) -> None:
    assert not b.is_bundle(entries[0].payload)
    assert b.is_bundle(b.encode(entries))
    assert b.entry_bytes(TOPIC, b"abc") == 2 + len(TOPIC) + 4 + 3
