"""Reading what an export needs in one read snapshot, rendering it in a named format, and
writing it to stdout or atomically to a file.

The figures are :func:`cloud.results.results.read_rollups`: the same per-unit rollups
``edgetally cloud results --json`` prints (votes per contest and choice, ballots, precincts
reporting, devices with their final batch), so an export never disagrees with the results
command on the same database state. Everything is read in one read transaction
(:func:`cloud.results.results.read_snapshot`): a worker committing meanwhile changes nothing
in the export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cloud._exceptions import ConfigError, ExportError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from cloud.results.rollups import Rollup
    from protocol import Election

log = logging.getLogger(__name__)

NIST_FORMAT = "nist-1500-100"
CSV_FORMAT = "csv"
FORMATS = (NIST_FORMAT, CSV_FORMAT)


@dataclass(frozen=True)
class ExportData:
    """An election and every unit's figures, read together."""

    election: Election
    rollups: Mapping[str, Rollup]  # unit id -> its figures

    @property
    def root(self) -> Rollup:
        return self.rollups[self.election.root]

    @property
    def complete(self) -> bool:
        """Every device of the election has its final batch in the ledger."""
        return self.root.devices_final >= self.root.devices_total


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not a known format (one of: {', '.join(FORMATS)})")
    return fmt


def read_export(engine: Engine, election_id: str | None = None) -> ExportData:
    """The stored election (the only one, or ``election_id``) and its rollups, in one
    snapshot. Raises :class:`~cloud._exceptions.ResultsError` for an unknown election."""
    from cloud.results.results import read_rollups, read_snapshot, sa_query, stored_election

    with read_snapshot(engine, "reading results for the export") as conn:
        query = sa_query(conn)
        election = stored_election(query, election_id)
        return ExportData(election, read_rollups(query, election))


def render(data: ExportData, fmt: str, generated: datetime) -> str:
    """``data`` as the text of format ``fmt``; ``generated`` is the report's time."""
    renderers: dict[str, Callable[[ExportData, datetime], str]] = {
        NIST_FORMAT: _nist,
        CSV_FORMAT: _csv,
    }
    return renderers[check_format(fmt)](data, generated)


def _nist(data: ExportData, generated: datetime) -> str:
    from cloud.export.nist import nist_json

    return nist_json(data, generated)


def _csv(data: ExportData, generated: datetime) -> str:
    from cloud.export.table import csv_text

    return csv_text(data)


def export_text(db_url: str, fmt: str, election_id: str | None, generated: datetime) -> str:
    """Read the database at ``db_url`` and render it as ``fmt``. The format is checked before
    the database is opened; a missing SQLite file is an error (never created)."""
    from cloud.db import make_engine

    check_format(fmt)
    engine = make_engine(db_url, create=False, writer=False)
    try:
        data = read_export(engine, election_id)
    finally:
        engine.dispose()
    log.debug(
        "export %s of %s: %d units, %d of %d devices final",
        fmt, data.election.id, len(data.rollups), data.root.devices_final, data.root.devices_total,
    )  # fmt: skip
    return render(data, fmt, generated)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, line endings as given) to ``path``: a temporary file in the same
    directory, flushed to disk, then renamed over ``path``, so a reader sees the old file or
    the whole new one, never a part. A new file is 0644; a replaced one keeps its mode."""
    directory = path.parent
    if not directory.is_dir():
        raise ExportError(f"--out {path}: directory {directory} does not exist")
    if path.is_dir():
        raise ExportError(f"--out {path}: is a directory")
    tmp: str | None = None
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", newline="", dir=directory,
            prefix=f".{path.name}.", suffix=".tmp", delete=False,
        ) as handle:  # fmt: skip
            tmp = handle.name
            os.fchmod(handle.fileno(), mode)  # mkstemp makes it 0600; results are for reading
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise ExportError(f"--out {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
