"""Many elections in one cloud: isolation between them, and an election joining a running cloud
(cloud/elections.py), on real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine

from cloud import models
from cloud._exceptions import ConfigError, ElectionMismatch
from cloud.audit.audit import run_audit
from cloud.elections import Elections, Served, load_served, served_from, store
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import Ledger
from cloud.results.results import load_results
from devices.generator import expected_totals
from devices.synth import synth_election
from protocol import Registry, RejectReason, provision
from tests.cloud.engine_support import dead_letters, rules, rules_engine
from tests.cloud.support import SEED, Envelopes
from tests.helpers import run_cli

MAX = 64 * 1024


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Envelopes, Envelopes]:
    """Two synthetic elections whose device ids are the same (p00001-d01, ...), keys apart."""
    made = []
    for seed in (1, 2):
        directory = tmp_path_factory.mktemp(f"election{seed}")
        provision(synth_election(4, 2, seed), directory)
        made.append(Envelopes(directory))
    a, b = made
    assert a.election.id != b.election.id and a.election.devices == b.election.devices
    return a, b


def both(a: Envelopes, b: Envelopes, engine: Engine) -> Ledger:
    ledger = Ledger(engine, Elections([served_from(a.keys_dir), served_from(b.keys_dir)]), max_payload_bytes=MAX)
    ledger.prepare()
    return ledger


def votes(engine: Engine, election: str) -> dict[str, object]:
    return load_results(engine, election).to_mapping()


def test_a_device_id_held_by_two_elections_is_two_devices(two: tuple[Envelopes, Envelopes], engine: Engine) -> None:
    a, b = two
    ledger = both(a, b, engine)
    device = a.election.devices[0]
    result = ledger.record(a.messages([device], 3) + b.messages([device], 2))
    assert [o.verdict for o in result.outcomes] == [Verdict.ACCEPTED] * 5
    with engine.connect() as conn:
        rows = conn.execute(select(models.devices.c.election, models.devices.c.contiguous_seq).where(models.devices.c.device == device)).all()
    assert sorted(rows) == sorted([(a.election.id, 3), (b.election.id, 2)])
    assert {r.election: r.seq for r in result.receipts} == {a.election.id: 3, b.election.id: 2}
    assert votes(engine, a.election.id)["ballots"] == sum(x.ballots for x in a.bodies(device, 3))
    assert votes(engine, b.election.id)["ballots"] == sum(x.ballots for x in b.bodies(device, 2))


def test_a_body_of_one_election_signed_by_the_same_device_of_another_is_refused(
    two: tuple[Envelopes, Envelopes], engine: Engine
) -> None:
    a, b = two
    ledger = both(a, b, engine)
    device = a.election.devices[0]
    body = a.bodies(device, 1)[0]
    forged = a.inbound(body, key=b.key(device))  # election A's body, election B's device key
    crossed = b.inbound(b.bodies(device, 1)[0], topic=a.inbound(body).topic)  # B's batch on A's topic
    result = ledger.record([forged, crossed])
    assert [(o.verdict, o.reason) for o in result.outcomes] == [
        (Verdict.REJECTED, RejectReason.WRONG_KEY),
        (Verdict.REJECTED, RejectReason.TOPIC_MISMATCH),
    ]
    assert "arrived on a topic of election" in result.outcomes[1].detail
    with engine.connect() as conn:
        kept = conn.execute(select(models.rejections.c.election, models.rejections.c.reason)).all()
        assert conn.execute(text("SELECT count(*) FROM ledger")).scalar_one() == 0
    assert sorted(kept) == sorted([(a.election.id, "wrong_key"), (b.election.id, "topic_mismatch")])


def test_a_batch_of_an_election_no_worker_serves_is_refused_and_kept(
    two: tuple[Envelopes, Envelopes], engine: Engine
) -> None:
    a, b = two
    ledger = Ledger(engine, Elections([served_from(a.keys_dir)]), max_payload_bytes=MAX)
    ledger.prepare()
    result = ledger.record(b.messages(b.election.devices[:1], 1))
    (outcome,) = result.outcomes
    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, RejectReason.UNKNOWN_ELECTION)
    assert b.election.id in outcome.detail and repr(a.election.id) in outcome.detail
    with engine.connect() as conn:
        assert conn.execute(select(models.rejections.c.reason, models.rejections.c.election)).all() == [
            ("unknown_election", b.election.id)
        ]


def test_an_election_stored_while_a_worker_runs_is_served_from_its_next_batch(
    two: tuple[Envelopes, Envelopes], engine: Engine
) -> None:
    a, b = two
    elections = Elections([served_from(a.keys_dir)], loader=load_served(engine), refresh_s=0)
    ledger = Ledger(engine, elections, max_payload_bytes=MAX)
    ledger.prepare()
    device = b.election.devices[1]
    with engine.begin() as conn:  # what `cloud elections add` does, from another process
        store(conn, served_from(b.keys_dir))
    result = ledger.record(b.messages([device], 2))
    assert [o.verdict for o in result.outcomes] == [Verdict.ACCEPTED] * 2
    assert elections.ids == tuple(sorted((a.election.id, b.election.id)))
    signing = elections.signing_key(b.election.id)
    assert signing is not None and b.registry.cloud_key is not None
    assert signing.public.kid == b.registry.cloud_key.kid  # B's receipts verify on B's devices


def test_lookups_of_unknown_elections_read_the_database_at_most_once_a_refresh(two: tuple[Envelopes, Envelopes]) -> None:
    a, _ = two
    asked: list[frozenset[str]] = []

    def loader(held: frozenset[str]) -> list[Served]:
        asked.append(held)
        return []

    elections = Elections([served_from(a.keys_dir)], loader=loader, refresh_s=3600)
    assert [elections.get(f"flood-{i}") for i in range(100)] == [None] * 100
    assert asked == [frozenset({a.election.id})]
    assert elections.get(a.election.id) is not None and len(asked) == 1  # a hit asks nothing


def test_one_elections_tampered_row_fails_its_audit_and_leaves_the_other_untouched(
    two: tuple[Envelopes, Envelopes], engine: Engine
) -> None:
    a, b = two
    ledger = both(a, b, engine)
    devices = list(a.election.devices)
    ledger.record(a.messages(devices, 2) + b.messages(devices, 2))
    before = votes(engine, b.election.id), run_audit(engine, b.registry, b.election.id).to_mapping()
    assert failures(run_audit(engine, a.registry, a.election.id).to_mapping()) == {}
    with engine.begin() as conn:
        conn.execute(update(models.tallies).where(models.tallies.c.election == a.election.id).values(votes=models.tallies.c.votes + 1))
    assert "tallies" in failures(run_audit(engine, a.registry, a.election.id).to_mapping())
    assert (votes(engine, b.election.id), run_audit(engine, b.registry, b.election.id).to_mapping()) == before


def failures(report: dict[str, Any]) -> dict[str, int]:
    return {c["name"]: c["discrepancies"] for c in report["checks"] if c["discrepancies"]}


def test_storing_a_changed_definition_or_a_changed_device_key_is_refused(
    two: tuple[Envelopes, Envelopes], engine: Engine, tmp_path: Path
) -> None:
    a, _ = two
    with engine.begin() as conn:
        store(conn, served_from(a.keys_dir))
    mapping = a.election.to_mapping()
    mapping["name"] = "Renamed"
    changed = Registry.from_mapping({**a.registry.to_mapping(), "election": mapping})
    with pytest.raises(ElectionMismatch, match="another definition"), engine.begin() as conn:
        store(conn, Served(changed))
    rekeyed = provision(a.election, tmp_path / "rekeyed")  # same election, fresh device keys
    with pytest.raises(ElectionMismatch, match="only add devices"), engine.begin() as conn:
        store(conn, Served(rekeyed))
    with engine.begin() as conn:  # the same registry again changes nothing
        store(conn, served_from(a.keys_dir))


def test_a_keys_directory_whose_cloud_key_is_not_its_registrys_is_refused(
    two: tuple[Envelopes, Envelopes], tmp_path: Path
) -> None:
    a, b = two
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "registry.json").write_bytes((a.keys_dir / "registry.json").read_bytes())
    (mixed / "cloud-signing.key").write_bytes((b.keys_dir / "cloud-signing.key").read_bytes())
    with pytest.raises(ConfigError, match=r"is not the cloud key in registry\.json"):
        served_from(mixed)


def test_cli_adds_an_election_lists_both_and_results_name_the_choices(
    two: tuple[Envelopes, Envelopes], tmp_path: Path
) -> None:
    a, b = two
    db = f"sqlite:///{tmp_path / 'cloud.db'}"
    for keys in (a.keys_dir, b.keys_dir):
        added = run_cli("--log-level", "WARNING", "cloud", "elections", "add", "--db", db, "--keys", str(keys))
        assert "4 devices stored" in added.stdout
    listed = json.loads(run_cli("cloud", "elections", "list", "--db", db, "--json").stdout)
    assert [(e["election"], e["devices"], e["served"]) for e in listed] == sorted(
        [(a.election.id, 4, True), (b.election.id, 4, True)]
    )
    ambiguous = run_cli("cloud", "results", "--db", db, check=False)
    assert ambiguous.returncode == 1
    assert a.election.id in ambiguous.stderr and b.election.id in ambiguous.stderr and "--election" in ambiguous.stderr
    one = json.loads(run_cli("cloud", "results", "--db", db, "--election", b.election.id, "--json").stdout)
    assert one["election"] == b.election.id and one["ballots"] == 0
    unknown = run_cli("cloud", "alerts", "--db", db, "--election", "nope", check=False)
    assert unknown.returncode == 1 and "no election 'nope'" in unknown.stderr and a.election.id in unknown.stderr
    assert json.loads(run_cli("cloud", "alerts", "--db", db, "--election", a.election.id, "--json").stdout) == []


def test_one_elections_failing_rule_output_leaves_the_other_elections_figures_alone(
    two: tuple[Envelopes, Envelopes], engine: Engine
) -> None:
    a, b = two
    ledger = both(a, b, engine)
    # A rule whose output is refused (a wildcard in a republish topic), for election A's batches only.
    config = rules(
        f"""
  - name: a-out
    sql: SELECT device, concat(device, '/#') AS where_to FROM 'edgetally/v1/{a.election.id}/+/batch'
    actions: [{{republish: {{topic: "results/${{where_to}}"}}}}]
"""
    )
    devices = list(a.election.devices)
    result = rules_engine(ledger, ledger.elections, engine, config).record(a.messages(devices, 2) + b.messages(devices, 2))
    assert [o.verdict for o in result.ledger.outcomes] == [Verdict.ACCEPTED] * 2 * len(devices) * 2
    letters = dead_letters(engine)
    assert len(letters) == 2 * len(devices) and {d["election"] for d in letters} == {a.election.id}
    for envelopes in (a, b):  # both elections' figures are what their devices sent
        expected = expected_totals(envelopes.election, SEED, 2).to_mapping()
        shown = votes(engine, envelopes.election.id)
        assert {k: shown[k] for k in expected} == expected
