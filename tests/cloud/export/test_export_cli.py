"""`edgetally cloud export`: stdout or an atomic --out file, --election, and one clear line on
stderr (exit 1) for what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

from cloud.export.export import write_atomically
from cloud.ledger.ledger import Ledger
from tests.cloud.export.support import QUIET, export, fill_mid_count, schema_errors
from tests.cloud.support import Envelopes
from tests.helpers import run_cli


def fails(*args: str) -> str:
    """The one stderr line of a failing `edgetally cloud export ARGS`."""
    proc = run_cli(*QUIET, "cloud", "export", *args, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("edgetally cloud export: error: ")
    return line


def test_out_writes_the_file_stdout_would_show_and_leaves_no_temporary_file(
    ledger: Ledger, envelopes: Envelopes, db_url: str, tmp_path: Path
) -> None:
    fill_mid_count(ledger, envelopes)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "results.csv"
    target.write_text("an older export\n")

    proc = run_cli(*QUIET, "cloud", "export", "--db", db_url, "--format", "csv", "--out", str(target))
    nist = out_dir / "results.json"
    run_cli(*QUIET, "cloud", "export", "--db", db_url, "--format", "nist-1500-100",
            "--election", envelopes.election.id, "--out", str(nist))  # fmt: skip

    assert proc.stdout == ""
    written = target.read_bytes()
    assert written.endswith(b"\r\n")  # the csv module's line ends, as stdout has them
    # run_cli reads text: its universal newlines make stdout's CRLF "\n"
    assert written.decode().replace("\r\n", "\n") == export(db_url, "csv")
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.csv", "results.json"]
    assert schema_errors(json.loads(nist.read_text())) == []
    assert nist.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    target.chmod(0o640)

    write_atomically(target, "new,\r\nrows\r\n")

    assert target.read_bytes() == b"new,\r\nrows\r\n"  # the csv's CRLF kept as written
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_an_unknown_format_is_named_before_the_database_is_opened(tmp_path: Path) -> None:
    line = fails("--db", f"sqlite:///{tmp_path / 'absent.db'}", "--format", "xml")

    assert "--format 'xml' is not a known format (one of: nist-1500-100, csv)" in line
    assert not (tmp_path / "absent.db").exists()


def test_a_missing_database_is_named_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "absent.db"

    line = fails("--db", f"sqlite:///{missing}", "--format", "csv")

    assert f"no database file {missing}" in line
    assert not missing.exists()


def test_an_unknown_election_is_named_with_the_ones_the_database_holds(
    ledger: Ledger, db_url: str
) -> None:
    line = fails("--db", db_url, "--format", "nist-1500-100", "--election", "atlantis-2030")

    assert "the database holds no election 'atlantis-2030' (it holds sample-2026)" in line


def test_an_out_file_in_a_missing_directory_is_named(ledger: Ledger, db_url: str, tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "results.json"

    line = fails("--db", db_url, "--format", "nist-1500-100", "--out", str(target))

    assert f"--out {target}: directory {target.parent} does not exist" in line
