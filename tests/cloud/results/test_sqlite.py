"""The stdlib reader of a SQLite cloud database (what `cloud results --db sqlite:///F` uses)
gives exactly what the SQLAlchemy reader gives, and refuses what it refuses, with the same words."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from cloud._exceptions import CloudError, NotACloudDatabase, ResultsError
from cloud.db import make_engine, upgrade
from cloud.ledger.ledger import Ledger
from cloud.migrations import VERSION_TABLE
from cloud.results.results import load_results
from cloud.results.sqlite import load_results_file, sqlite_file
from protocol import batch_topic
from tests.cloud.results_support import BATCHES, fill
from tests.cloud.support import Envelopes, raw_inbound


@pytest.fixture
def backend() -> str:
    """SQLite only here (overrides the conftest's sqlite/postgres parameter)."""
    return "sqlite"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def _both(url: str, election: str | None = None, unit: str | None = None) -> tuple[object, object]:
    """(SQLAlchemy's reading, the stdlib's reading): each a mapping, or the error's type and words."""
    out: list[object] = []
    for read in (
        lambda: load_results(make_engine(url, create=False, writer=False), election, unit),
        lambda: load_results_file(Path(url.removeprefix("sqlite:///")), url, election, unit),
    ):
        try:
            out.append(read().to_mapping())
        except CloudError as err:
            out.append((type(err).__name__, str(err)))
    return out[0], out[1]


def test_both_readers_give_the_same_results_at_every_unit(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, db_url: str
) -> None:
    election = envelopes.election
    devices = list(election.devices)
    late = devices[0]
    fill(ledger, envelopes, devices, skip=[(late, BATCHES)])
    again = envelopes.inbound(envelopes.bodies(devices[1], BATCHES)[0])
    ledger.record([again])  # a duplicate
    ledger.record([raw_inbound(b"not json", batch_topic(election.id, devices[2]))])  # a rejection
    ledger.record([raw_inbound(b"{}", "edgetally/v1/no-such-election/x/batch")])  # names no device

    sa, stdlib = _both(db_url)
    assert isinstance(sa, dict) and sa == stdlib
    assert sa["duplicates"] == 1 and sa["rejections"] >= 2 and sa["batches"] > 0
    for unit in election.walk(election.root):
        assert _both(db_url, unit=unit.id)[0] == _both(db_url, unit=unit.id)[1]


def test_both_readers_refuse_the_same_way(sqlite_url: str, tmp_path: Path) -> None:
    empty_db = _both(sqlite_url)
    assert empty_db[0] == empty_db[1]
    assert empty_db[1][0] == ResultsError.__name__  # type: ignore[index]

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    before = other.read_bytes()
    refused = _both(f"sqlite:///{other}")
    assert refused[0] == refused[1] and "not an EdgeTally cloud database" in str(refused[1])
    assert other.read_bytes() == before and not (tmp_path / "other.db-wal").exists()

    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0001'"))
    engine.dispose()
    old = _both(sqlite_url)
    assert old[0] == old[1] and "schema is at 0001" in str(old[1])

    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_bytes(b"x" * 4096)
    garbled = _both(f"sqlite:///{not_sqlite}")
    assert garbled[0] == garbled[1] and "not a database" in str(garbled[1])


def test_a_missing_file_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(NotACloudDatabase, match="no database file"):
        load_results_file(missing, f"sqlite:///{missing}")
    assert not missing.exists()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///cloud.db", "cloud.db"),
        ("sqlite:////var/lib/edgetally/cloud.db", "/var/lib/edgetally/cloud.db"),
        ("sqlite+pysqlite:///x.db", "x.db"),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("sqlite:///x.db?timeout=3", None),
        ("sqlite:///file:x.db", None),
        ("sqlite:///a%20b.db", None),
        ("postgresql+psycopg://u@127.0.0.1/db", None),
    ],
)
def test_only_a_plain_sqlite_file_url_is_read_without_sqlalchemy(url: str, path: str | None) -> None:
    assert sqlite_file(url) == (None if path is None else Path(path))
