"""`edgetally cloud migrate|results|run` as real subprocesses, without a broker."""

from __future__ import annotations

import json
from pathlib import Path

from cloud.db import head_revision, make_engine
from cloud.ledger.ledger import Ledger
from devices.generator import expected_totals
from protocol import Registry
from tests.cloud.support import SEED, Envelopes
from tests.helpers import run_cli


def _filled_database(
    tmp_path: Path, registry: Registry, envelopes: Envelopes, devices: list[str]
) -> str:
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    run_cli("cloud", "migrate", "--db", url)
    engine = make_engine(url)
    ledger = Ledger(engine, registry, max_payload_bytes=64 * 1024)
    ledger.prepare()
    messages = envelopes.messages(devices, 3)
    ledger.record(messages)
    ledger.record(messages[:2])  # two duplicates
    engine.dispose()
    return url


def test_results_json_matches_the_expected_totals(
    tmp_path: Path, registry: Registry, envelopes: Envelopes
) -> None:
    devices = envelopes.devices(4)
    url = _filled_database(tmp_path, registry, envelopes, devices)

    got = json.loads(
        run_cli("--log-level", "WARNING", "cloud", "results", "--db", url, "--json").stdout
    )

    expected = expected_totals(registry.election, SEED, 3, devices).to_mapping()
    assert {k: got[k] for k in expected} == expected
    assert (got["duplicates"], got["rejections"], got["devices_final"]) == (2, 0, 4)
    # The keys the demo and tests compare are kept; issue 4 added the unit's (test_results_cli).
    assert {*expected, "duplicates", "rejections", "devices_final"} <= set(got)


def test_results_print_a_table_per_contest_with_votes_and_shares(
    tmp_path: Path, registry: Registry, envelopes: Envelopes
) -> None:
    url = _filled_database(tmp_path, registry, envelopes, envelopes.devices(2))

    out = run_cli("cloud", "results", "--db", url).stdout

    for contest in registry.election.contests:
        assert contest.name in out
        for choice in contest.choices:
            assert f"({choice.id})" in out
    assert "100.00%" in out
    assert "duplicates" in out and "rejections" in out


def test_migrate_creates_the_schema_and_says_which_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    head = f"revision {head_revision()}"  # 0003 since the trend windows
    assert head in run_cli("cloud", "migrate", "--db", url).stdout
    assert head in run_cli("cloud", "migrate", "--db", url).stdout


def test_results_on_a_missing_database_fail_with_one_clear_line(tmp_path: Path) -> None:
    proc = run_cli("cloud", "results", "--db", f"sqlite:///{tmp_path / 'nope.db'}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"edgetally cloud results: error: no database file {tmp_path / 'nope.db'}"
    ]


def test_results_before_any_election_is_stored_fail_clearly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run_cli("cloud", "migrate", "--db", url)
    proc = run_cli("--log-level", "WARNING", "cloud", "results", "--db", url, check=False)
    assert proc.returncode == 1
    assert "holds no election yet" in proc.stderr


def test_run_without_a_keys_directory_fails_with_one_clear_line(tmp_path: Path) -> None:
    proc = run_cli(
        "cloud",
        "run",
        "--broker",
        "mqtt://127.0.0.1:1",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
        "--keys",
        str(tmp_path / "no-keys"),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"edgetally cloud run: error: --keys {tmp_path / 'no-keys'}: no such directory"
    )


def test_run_with_a_bad_broker_url_fails_clearly(tmp_path: Path, keys_dir: Path) -> None:
    proc = run_cli(
        "cloud",
        "run",
        "--broker",
        "http://x",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
        "--keys",
        str(keys_dir),
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "--broker" in proc.stderr and "mqtt://host:port" in proc.stderr


def test_run_with_no_election_to_serve_or_one_given_twice_fails_clearly(tmp_path: Path, keys_dir: Path) -> None:
    base = ("cloud", "run", "--broker", "mqtt://127.0.0.1:1", "--db", f"sqlite:///{tmp_path / 'c.db'}")
    none = run_cli(*base, check=False, timeout=30)
    assert none.returncode == 1
    assert none.stderr.strip().splitlines()[-1] == (
        "edgetally cloud run: error: no election to serve: give --keys DIR, or add one with `edgetally cloud elections add`"
    )
    twice = run_cli(*base, "--keys", str(keys_dir), "--keys", str(keys_dir), check=False, timeout=30)
    assert twice.returncode == 1
    assert "is given twice" in twice.stderr.strip().splitlines()[-1]
