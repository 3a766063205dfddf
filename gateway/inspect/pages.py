"""Reading a damaged SQLite file page by page, without SQLite: the last resort of ``recover``.

When a b-tree's interior page is overwritten, SQLite cannot reach any row below it, although
the leaf pages holding those rows are intact. This module reads the file the way SQLite lays
it out (https://www.sqlite.org/fileformat2.html) and yields every record of every table leaf
page, so that ``recover`` can take the rows SQL could not reach:

* the page images are the main file overlaid with the committed frames of the write-ahead
  log (frames after the last valid commit frame, or with a wrong salt or checksum, are
  ignored, as SQLite does), so nothing committed but not yet checkpointed is missed;
* pages on the freelist are skipped (they hold rows deleted long ago);
* a page or a cell that does not parse is counted and skipped; overflow chains are followed
  with a bound on their length.

Only reads; the file and its write-ahead log are opened read-only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

TABLE_LEAF = 0x0D
SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24


@dataclass
class PageFile:
    """The pages of a database file as SQLite would see them (main file + committed WAL)."""

    path: Path
    main: IO[bytes]
    wal: IO[bytes] | None
    page_size: int
    usable: int
    page_count: int
    wal_frames: dict[int, int] = field(default_factory=dict)  # page number -> offset in the WAL
    header_trusted: bool = True  # False: page 1 is damaged, so is what it says (the freelist)
    bad_pages: int = 0
    bad_cells: int = 0

    def page(self, number: int) -> bytes | None:
        if not 1 <= number <= self.page_count:
            return None
        offset = self.wal_frames.get(number)
        source = self.main if offset is None or self.wal is None else self.wal
        try:
            source.seek((number - 1) * self.page_size if offset is None else offset)
            data = source.read(self.page_size)
        except OSError:
            return None
        return data if len(data) == self.page_size else None


@contextmanager
def open_pages(path: Path) -> Iterator[PageFile]:
    """The file's pages; opened read-only, closed on exit."""
    with ExitStack() as stack:
        main = stack.enter_context(open(path, "rb"))
        header = main.read(100)
        page_size, reserved, trusted = 4096, 0, False  # a damaged header: SQLite's defaults
        if header.startswith(SQLITE_MAGIC) and len(header) == 100:
            declared = int.from_bytes(header[16:18], "big")
            declared = 65536 if declared == 1 else declared
            if declared >= 512 and not declared & (declared - 1):
                page_size, reserved, trusted = declared, header[20], True
        wal_path = path.with_name(path.name + "-wal")
        wal = stack.enter_context(open(wal_path, "rb")) if wal_path.exists() else None
        size = path.stat().st_size
        pages = PageFile(path, main, wal, page_size, page_size - reserved, size // page_size)
        pages.header_trusted = trusted
        if wal is not None:
            _read_wal(pages, wal)
        yield pages


def _read_wal(pages: PageFile, wal: IO[bytes]) -> None:
    header = wal.read(WAL_HEADER)
    if len(header) < WAL_HEADER:
        return
    magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", header[:24])
    if magic not in WAL_MAGIC or page_size != pages.page_size:
        return
    big_endian = magic & 1
    s0, s1 = _checksum(header[:24], 0, 0, big_endian)
    if (s0, s1) != struct.unpack(">2I", header[24:32]):
        return
    committed: dict[int, int] = {}
    pending: dict[int, int] = {}
    offset = WAL_HEADER
    size_after_commit = pages.page_count
    while True:  # bounded by the WAL's length: every round reads one frame
        frame = wal.read(FRAME_HEADER + page_size)
        if len(frame) < FRAME_HEADER + page_size:
            break
        number, commit, f_salt1, f_salt2, c0, c1 = struct.unpack(">6I", frame[:24])
        if (f_salt1, f_salt2) != (salt1, salt2):
            break
        s0, s1 = _checksum(frame[:8], s0, s1, big_endian)
        s0, s1 = _checksum(frame[24:], s0, s1, big_endian)
        if (s0, s1) != (c0, c1):
            break
        pending[number] = offset + FRAME_HEADER
        if commit:
            committed.update(pending)
            pending.clear()
            size_after_commit = commit
        offset += len(frame)
    pages.wal_frames = committed
    if committed:
        pages.page_count = size_after_commit  # the database's size as of the last commit


def _checksum(chunk: bytes, s0: int, s1: int, big_endian: int) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(chunk) // 4}I", chunk)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def freelist(pages: PageFile) -> set[int]:
    """Page numbers on the freelist (trunk and leaf pages), as far as it can be read."""
    first = pages.page(1)
    found: set[int] = set()
    if first is None or not first.startswith(SQLITE_MAGIC):
        return found  # unknown: rows deleted long ago may come back (recover says so)
    trunk = int.from_bytes(first[32:36], "big")
    while 0 < trunk <= pages.page_count and trunk not in found:  # bounded by page_count
        found.add(trunk)
        data = pages.page(trunk)
        if data is None:
            break
        count = int.from_bytes(data[4:8], "big")
        if count > (pages.usable - 8) // 4:
            break
        for i in range(count):
            leaf = int.from_bytes(data[8 + 4 * i : 12 + 4 * i], "big")
            if 0 < leaf <= pages.page_count:
                found.add(leaf)
        trunk = int.from_bytes(data[0:4], "big")
    return found


def leaf_records(pages: PageFile) -> Iterator[tuple[int, list[Any]]]:
    """(rowid, column values) of every cell of every table leaf page not on the freelist."""
    skip = freelist(pages)
    for number in range(1, pages.page_count + 1):
        if number not in skip:
            yield from page_records(pages, number)


def page_records(pages: PageFile, number: int) -> Iterator[tuple[int, list[Any]]]:
    """(rowid, column values) of the cells of page ``number`` if it is a table leaf page."""
    data = pages.page(number)
    if data is None:
        pages.bad_pages += 1
        return
    start = 100 if number == 1 else 0
    if data[start] != TABLE_LEAF:
        return
    cells = int.from_bytes(data[start + 3 : start + 5], "big")
    if 8 + 2 * cells > pages.usable - start:
        pages.bad_pages += 1
        return
    for i in range(cells):
        pointer = int.from_bytes(data[start + 8 + 2 * i : start + 10 + 2 * i], "big")
        try:
            yield _cell(pages, data, pointer)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            pages.bad_cells += 1


def _cell(pages: PageFile, data: bytes, pointer: int) -> tuple[int, list[Any]]:
    if not 0 < pointer < pages.usable:
        raise ValueError("cell pointer out of the page")
    size, pos = _varint(data, pointer)
    rowid, pos = _varint(data, pos)
    if rowid >= 1 << 63:
        rowid -= 1 << 64
    payload = _payload(pages, data, pos, size)
    return rowid, _record(payload)


def _payload(pages: PageFile, data: bytes, pos: int, size: int) -> bytes:
    usable = pages.usable
    limit = usable - 35
    if size <= limit:
        if pos + size > usable:
            raise ValueError("cell runs off the page")
        return data[pos : pos + size]
    low = ((usable - 12) * 32 // 255) - 23
    local = low + (size - low) % (usable - 4)
    if local > limit:
        local = low
    if pos + local + 4 > usable:
        raise ValueError("cell runs off the page")
    parts = [data[pos : pos + local]]
    remaining = size - local
    following = int.from_bytes(data[pos + local : pos + local + 4], "big")
    seen: set[int] = set()
    while remaining > 0:  # bounded: every page is visited once
        if not 0 < following <= pages.page_count or following in seen:
            raise ValueError("broken overflow chain")
        seen.add(following)
        page = pages.page(following)
        if page is None:
            raise ValueError("unreadable overflow page")
        take = min(remaining, usable - 4)
        parts.append(page[4 : 4 + take])
        remaining -= take
        following = int.from_bytes(page[0:4], "big")
    return b"".join(parts)


def _record(payload: bytes) -> list[Any]:
    header_size, pos = _varint(payload, 0)
    if header_size > len(payload):
        raise ValueError("record header runs off the record")
    types = []
    while pos < header_size:
        serial, pos = _varint(payload, pos)
        types.append(serial)
    values: list[Any] = []
    body = header_size
    for serial in types:
        value, body = _value(payload, body, serial)
        values.append(value)
    if body != len(payload):
        raise ValueError("record length does not match its header")
    return values


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _value(payload: bytes, pos: int, serial: int) -> tuple[Any, int]:
    if serial == 0:
        return None, pos
    if serial in _INT_SIZES:
        width = _INT_SIZES[serial]
        if pos + width > len(payload):
            raise ValueError("integer runs off the record")
        return int.from_bytes(payload[pos : pos + width], "big", signed=True), pos + width
    if serial == 7:
        if pos + 8 > len(payload):
            raise ValueError("real runs off the record")
        return struct.unpack(">d", payload[pos : pos + 8])[0], pos + 8
    if serial in (8, 9):
        return serial - 8, pos
    if serial in (10, 11):
        raise ValueError("reserved serial type")
    length = (serial - 12) // 2
    if pos + length > len(payload):
        raise ValueError("value runs off the record")
    raw = payload[pos : pos + length]
    return (raw if serial % 2 == 0 else raw.decode("utf-8")), pos + length


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise ValueError("bad varint")  # pragma: no cover - the loop always returns
