"""Uplink bundles: several device envelopes in one MQTT message, optionally compressed.

A gateway may publish a bundle on ``edgetally/v1/_gateway/{gateway}/bundle`` instead of one
message per envelope; the cloud unwraps it and treats every entry exactly as if the envelope
had arrived alone on the entry's topic. The envelope bytes inside are never changed: a bundle
only frames them. docs/protocol.md section 14 is the reference, with a test vector.

Layout (integers big-endian)::

    offset  size  field
    0       4     magic  b"ETBN"
    4       1     version  1
    5       1     flags  bit 0: the entries section is zlib-compressed (RFC 1950); other bits 0
    6       2     count  number of entries, 1..MAX_ENTRIES
    8       ...   entries section (compressed as a whole when flag bit 0 is set):
                  count x [topic length (2), topic (UTF-8), payload length (4), payload]

Limits: the message, and the entries section once decompressed, are at most ``max_bytes``
(MAX_BUNDLE_BYTES by default, below the brokers' 1 MiB packet limit). Decoding stops at the
first problem and raises a :class:`protocol.BadBundle` subclass (reason ``bad_bundle``, or
``oversize`` for :class:`BundleTooLarge`); nothing in a bundle whose framing is bad is used.

Pure: no I/O, no MQTT.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from protocol._errors import BadBundle, RejectReason

MAGIC = b"ETBN"
VERSION = 1
FLAG_ZLIB = 0x01
KNOWN_FLAGS = FLAG_ZLIB
MAX_ENTRIES = 4096
MAX_BUNDLE_BYTES = 512 * 1024
MAX_TOPIC_BYTES = 1024
ZLIB_LEVEL = 1  # fastest: the gateway compresses on its uplink thread

_HEADER = struct.Struct(">4sBBH")
_TOPIC_LEN = struct.Struct(">H")
_PAYLOAD_LEN = struct.Struct(">I")
HEADER_BYTES = _HEADER.size
ENTRY_OVERHEAD = _TOPIC_LEN.size + _PAYLOAD_LEN.size

__all__ = [
    "ENTRY_OVERHEAD",
    "FLAG_ZLIB",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_BUNDLE_BYTES",
    "MAX_ENTRIES",
    "VERSION",
    "BadBundleCompression",
    "BadBundleEntry",
    "BadBundleHeader",
    "BundleTooLarge",
    "Entry",
    "TruncatedBundle",
    "count",
    "decode",
    "encode",
    "entry_bytes",
    "is_bundle",
]


class BadBundleHeader(BadBundle):
    """Wrong magic, an unknown version or flag, or an entry count out of range."""


class TruncatedBundle(BadBundle):
    """The data ends inside the header or an entry, or bytes follow the last entry."""


class BadBundleCompression(BadBundle):
    """The compressed entries section is not a single valid zlib stream."""


class BadBundleEntry(BadBundle):
    """An entry's topic is empty, too long or not UTF-8."""


class BundleTooLarge(BadBundle):
    """The message, or its entries once decompressed, exceed the size limit."""

    reason = RejectReason.OVERSIZE


@dataclass(frozen=True, slots=True)
class Entry:
    """One envelope and the device topic it was published on."""

    topic: str
    payload: bytes


def entry_bytes(topic: str, payload: bytes) -> int:
    """The size of one entry in the (uncompressed) entries section."""
    return ENTRY_OVERHEAD + len(topic.encode("utf-8")) + len(payload)


def is_bundle(data: bytes) -> bool:
    """Whether ``data`` claims to be a bundle (starts with the magic; an envelope starts with ``{``)."""
    return data[: len(MAGIC)] == MAGIC


def count(data: bytes) -> int:
    """The entry count from the header (header checked; entries not decoded)."""
    return _header(data, MAX_BUNDLE_BYTES)[1]


def encode(
    entries: Iterable[Entry | tuple[str, bytes]],
    *,
    compress: bool = False,
    max_bytes: int = MAX_BUNDLE_BYTES,
    level: int = ZLIB_LEVEL,
) -> bytes:
    """Frame ``entries`` (in order) as one bundle; :class:`BadBundle` if they do not fit."""
    parts: list[bytes] = []
    total = 0
    n = 0
    for item in entries:
        topic, payload = (item.topic, item.payload) if isinstance(item, Entry) else item
        raw_topic = _topic_bytes(topic)
        parts += (_TOPIC_LEN.pack(len(raw_topic)), raw_topic, _PAYLOAD_LEN.pack(len(payload)))
        parts.append(payload)
        total += ENTRY_OVERHEAD + len(raw_topic) + len(payload)
        n += 1
    if not 1 <= n <= MAX_ENTRIES:
        raise BadBundleHeader(f"a bundle holds 1 to {MAX_ENTRIES} entries, not {n}")
    if total > max_bytes:
        raise BundleTooLarge(f"bundle entries take {total} bytes, the limit is {max_bytes}")
    section = b"".join(parts)
    flags = 0
    if compress:
        section = zlib.compress(section, level)
        flags |= FLAG_ZLIB
    data = _HEADER.pack(MAGIC, VERSION, flags, n) + section
    if len(data) > max_bytes:
        raise BundleTooLarge(f"bundle is {len(data)} bytes, the limit is {max_bytes}")
    return data


def decode(data: bytes, *, max_bytes: int = MAX_BUNDLE_BYTES) -> tuple[Entry, ...]:
    """Every entry of the bundle ``data``, in order; :class:`BadBundle` on any framing problem."""
    flags, n = _header(data, max_bytes)
    section = memoryview(data)[HEADER_BYTES:]
    if flags & FLAG_ZLIB:
        section = memoryview(_inflate(bytes(section), max_bytes))
    entries: list[Entry] = []
    offset = 0
    for index in range(n):
        topic_len = _read(section, offset, _TOPIC_LEN, index, "topic length")
        offset += _TOPIC_LEN.size
        raw_topic = _take(section, offset, topic_len, index, "topic")
        offset += topic_len
        payload_len = _read(section, offset, _PAYLOAD_LEN, index, "payload length")
        offset += _PAYLOAD_LEN.size
        payload = _take(section, offset, payload_len, index, "payload")
        offset += payload_len
        entries.append(Entry(_topic_text(raw_topic, index), payload))
    if offset != len(section):
        raise TruncatedBundle(
            f"bundle has {len(section) - offset} bytes after its last entry (entry {n} of {n})"
        )
    return tuple(entries)


def _header(data: bytes, max_bytes: int) -> tuple[int, int]:
    if len(data) > max_bytes:
        raise BundleTooLarge(f"bundle is {len(data)} bytes, the limit is {max_bytes}")
    if len(data) < HEADER_BYTES:
        if not MAGIC.startswith(bytes(data[: len(MAGIC)])):
            raise BadBundleHeader("not a bundle: wrong magic")
        raise TruncatedBundle(
            f"bundle is {len(data)} bytes, shorter than its {HEADER_BYTES}-byte header"
        )
    magic, version, flags, n = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadBundleHeader(f"not a bundle: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise BadBundleHeader(f"bundle version {version} is not supported (only {VERSION})")
    if flags & ~KNOWN_FLAGS:
        raise BadBundleHeader(f"bundle flags {flags:#04x} set unknown bits")
    if not 1 <= n <= MAX_ENTRIES:
        raise BadBundleHeader(f"bundle entry count {n} is outside 1..{MAX_ENTRIES}")
    return flags, n


def _inflate(section: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(section, max_bytes + 1)
    except zlib.error as exc:
        raise BadBundleCompression(f"bundle entries are not valid zlib data: {exc}") from exc
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise BundleTooLarge(
            f"bundle entries decompress to more than the limit of {max_bytes} bytes"
        )
    if not inflater.eof:
        raise BadBundleCompression("bundle entries end inside the zlib stream (truncated)")
    if inflater.unused_data:
        raise BadBundleCompression(
            f"bundle has {len(inflater.unused_data)} bytes after its zlib stream"
        )
    return out


def _read(section: memoryview, offset: int, field: struct.Struct, index: int, what: str) -> int:
    if offset + field.size > len(section):
        raise TruncatedBundle(f"bundle ends inside the {what} of entry {index + 1}")
    value: int = field.unpack_from(section, offset)[0]
    return value


def _take(section: memoryview, offset: int, size: int, index: int, what: str) -> bytes:
    if offset + size > len(section):
        raise TruncatedBundle(
            f"bundle ends inside the {what} of entry {index + 1}"
            f" ({size} bytes announced, {max(len(section) - offset, 0)} left)"
        )
    return bytes(section[offset : offset + size])


def _topic_bytes(topic: str) -> bytes:
    raw = topic.encode("utf-8")
    if not 1 <= len(raw) <= MAX_TOPIC_BYTES:
        raise BadBundleEntry(f"an entry topic is 1 to {MAX_TOPIC_BYTES} bytes, not {len(raw)}")
    return raw


def _topic_text(raw: bytes, index: int) -> str:
    if not 1 <= len(raw) <= MAX_TOPIC_BYTES:
        raise BadBundleEntry(
            f"the topic of entry {index + 1} is {len(raw)} bytes, not 1 to {MAX_TOPIC_BYTES}"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBundleEntry(f"the topic of entry {index + 1} is not UTF-8") from exc
