"""``edgetally cloud publish``: a static, versioned results feed that any web server or CDN serves.

Layout under ``--out DIR`` (the shape election-night reporting feeds use)::

    current_ver.txt                 the version to read, e.g. ``364``, written last
    v/{version}/summary.json        the election, the results version, when, and the root's figures
    v/{version}/units/{unit}.json   every reporting unit's figures (``cloud results --json --unit``)
    v/{version}/nist-1500-100.json  the NIST SP 1500-100 v2 export of that version (cloud/export/)
    v/{version}/results.csv         the CSV export (one row per unit x contest x choice)

A reader first reads ``current_ver.txt``, then the files of that version: they are complete,
because a version is written into a hidden directory (``v/.tmp-…``) and renamed into place in
one step, and ``current_ver.txt`` is replaced (temp file + rename) only after that. A version
already published is not written again. Versions beyond the newest ``keep`` are removed, never
the current one (a reader that just read the old pointer still finds its files for a while:
keep at least 2). The version is the results version of cloud/serve/snapshot.py, so it only rises.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from cloud._exceptions import CloudError, ConfigError
from cloud.export.export import CSV_FORMAT, NIST_FORMAT, ExportData, render
from cloud.serve.snapshot import Poller, Snapshot

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

POINTER = "current_ver.txt"


@dataclass(frozen=True, slots=True)
class Published:
    version: int
    written: bool  # False: that version was already there
    pruned: tuple[int, ...]


def _write(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def versions(out: Path) -> list[int]:
    """The versions published under ``out``, oldest first."""
    root = out / "v"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def current(out: Path) -> int | None:
    try:
        return int((out / POINTER).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def publish(snapshot: Snapshot, out: Path, *, keep: int = 10) -> Published:
    """Publish ``snapshot`` under ``out`` as described above. :class:`ConfigError` when ``out``
    cannot be written."""
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {keep}")
    try:
        (out / "v").mkdir(parents=True, exist_ok=True)
        final = out / "v" / str(snapshot.version)
        written = not final.is_dir()
        if written:
            staging = out / "v" / f".tmp-{snapshot.version}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "units").mkdir(parents=True)
            for unit, body in snapshot.units.items():
                _write(staging / "units" / f"{unit}.json", body)
            summary = {
                "election": orjson.loads(snapshot.definition),
                "version": snapshot.version,
                "generated_at": snapshot.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "results": orjson.loads(snapshot.units[snapshot.root]),
            }
            _write(staging / "summary.json", orjson.dumps(summary))
            if snapshot.model is not None:
                data = ExportData(snapshot.model, snapshot.rollups)
                _write(staging / "nist-1500-100.json", render(data, NIST_FORMAT, snapshot.at).encode("utf-8"))
                _write(staging / "results.csv", render(data, CSV_FORMAT, snapshot.at).encode("utf-8"))
            os.rename(staging, final)  # the whole version appears at once
        if current(out) != snapshot.version:
            _write(out / POINTER, f"{snapshot.version}\n".encode("ascii"))
        pruned = tuple(v for v in versions(out)[:-keep] if v != snapshot.version)
        for version in pruned:
            shutil.rmtree(out / "v" / str(version), ignore_errors=True)
    except OSError as exc:
        raise ConfigError(f"cannot publish into {out}: {exc.strerror or exc}") from exc
    if written:
        log.info("published results version %d into %s (%d units)", snapshot.version, out, len(snapshot.units))
    return Published(snapshot.version, written, pruned)


def publish_until(engine: Engine, out: Path, *, election: str | None, every: float | None, keep: int, stop: threading.Event) -> int:
    """Publish now, then (``every``) each new version until ``stop`` is set; return how many
    versions were written. A database that cannot be read ends a one-off run with the error; a
    loop logs it and tries again at the next tick."""
    poller = Poller(engine, election)
    count = 0
    while True:
        try:
            poller.poll()
        except CloudError as exc:
            if every is None:
                raise
            log.warning("cloud publish: cannot read the database: %s", exc)
        if poller.current is not None:
            count += publish(poller.current, out, keep=keep).written
        if every is None or stop.wait(every):
            return count
