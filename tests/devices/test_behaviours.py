"""Behaviour selection (deterministic per seed) and the ground-truth file, without a broker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from devices._exceptions import FleetError
from devices.behaviours import (
    Behaviour,
    Profile,
    assign,
    load_profile,
    lost_seqs,
    parse_share,
    profile_from_specs,
    tampered,
    wrong_key,
)
from devices.fleet.config import FleetConfig, withheld_seqs
from devices.fleet.fleet import Fleet
from devices.shards import pick
from devices.truth import build_truth, gap_rows, load_truth, write_truth
from protocol import BrokerAddress, Registry, RejectReason, verify
from tests.helpers import run_cli

DEVICES = [f"dev-{i:03d}" for i in range(100)]


def test_selection_is_deterministic_per_seed_and_ignores_spec_order() -> None:
    one = assign(DEVICES, profile_from_specs(["flap=5%", "silent=3"]), seed=7)
    again = assign(list(reversed(DEVICES)), profile_from_specs(["silent=3", "flap=5%"]), seed=7)
    other = assign(DEVICES, profile_from_specs(["flap=5%", "silent=3"]), seed=8)
    assert one == again
    assert one != other
    assert sorted(one.values()).count(Behaviour.FLAP) == 5
    assert sorted(one.values()).count(Behaviour.SILENT) == 3


def test_a_device_gets_at_most_one_behaviour_and_shares_cannot_exceed_the_fleet() -> None:
    chosen = assign(DEVICES[:10], profile_from_specs(["flap=50%", "burst=5"]), seed=1)
    assert len(chosen) == 10
    with pytest.raises(FleetError, match="wants 6 devices, only 5 are left"):
        assign(DEVICES[:10], profile_from_specs(["flap=50%", "burst=6"]), seed=1)


def test_share_parsing_rounds_and_rejects_nonsense() -> None:
    assert parse_share("5%").of(30) == 2
    assert parse_share("0.1%").of(30) == 1  # above zero: at least one device
    assert parse_share("0%").of(30) == 0
    assert parse_share("3").of(30) == 3
    for bad in ("x", "-1", "101%", "5 %%"):
        with pytest.raises(FleetError):
            parse_share(bad)
    with pytest.raises(FleetError, match="unknown behaviour"):
        profile_from_specs(["teleport=1"])


def test_profile_places_named_devices_first_then_shares(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text("devices:\n  dev-004: silent\nshare:\n  power-loss: 2\n")
    profile = load_profile(path)
    assert profile == Profile({"dev-004": Behaviour.SILENT}, {Behaviour.POWER_LOSS: parse_share("2")})
    chosen = assign(DEVICES, profile, seed=3)
    assert chosen["dev-004"] is Behaviour.SILENT
    assert list(chosen.values()).count(Behaviour.POWER_LOSS) == 2
    path.write_text("devices:\n  dev-004: levitate\n")
    with pytest.raises(FleetError, match=r"profile.yaml: devices.dev-004: unknown behaviour"):
        load_profile(path)


def test_lossy_loses_one_or_two_seqs_between_the_first_and_the_final_deterministically() -> None:
    sizes: set[int] = set()
    for final in range(3, 12):
        for device in DEVICES:
            lost = lost_seqs(7, device, final)
            assert lost == lost_seqs(7, device, final)  # the same every time (and in every process)
            assert 1 <= len(lost) <= 2
            assert lost <= set(range(2, final)), (device, final, lost)  # never 1, never the final
            sizes.add(len(lost))
    assert sizes == {1, 2}
    assert lost_seqs(7, "dev-001", 3) == {2}  # the only seq in between
    assert any(lost_seqs(7, d, 10) != lost_seqs(8, d, 10) for d in DEVICES)  # from the seed
    assert lost_seqs(7, "dev-001", 2) == frozenset()  # nothing in between


def test_lossy_is_drawn_like_the_others_and_leaves_their_assignment_as_it_was() -> None:
    specs = ["flap=5%", "silent=3", "lossy=10%"]
    whole = assign(DEVICES, profile_from_specs(specs), seed=7)
    assert whole == assign(list(reversed(DEVICES)), profile_from_specs(specs[::-1]), seed=7)
    assert list(whole.values()).count(Behaviour.LOSSY) == 10
    others = {d: b for d, b in whole.items() if b is not Behaviour.LOSSY}
    assert others == assign(DEVICES, profile_from_specs(specs[:2]), seed=7)


def test_what_a_lossy_device_withholds_does_not_depend_on_sharding(keys_dir: Path) -> None:
    registry = Registry.load(keys_dir)
    everyone = registry.election.devices[:12]
    assigned = assign(everyone, profile_from_specs(["lossy=6", "silent=2"]), seed=4)

    def withheld(devices: tuple[str, ...]) -> dict[str, frozenset[int]]:
        config = FleetConfig(
            broker=BrokerAddress("127.0.0.1", 1),
            keys=keys_dir,
            seed=4,
            batches_per_device=6,
            devices=devices,
            behaviours={d: b for d, b in assigned.items() if d in devices},  # as devices run does
        )
        fleet = Fleet(config, registry)
        fleet.prepare()
        tabs = fleet.tabulators
        return {t.device: withheld_seqs(config, t, assigned.get(t.device)) for t in tabs}

    whole = withheld(tuple(everyone))
    sharded: dict[str, frozenset[int]] = {}
    for k in range(3):  # devices run --processes 3: shard k of 3
        sharded.update(withheld(pick(everyone, (k, 3))))
    assert sharded == whole
    assert {d for d, lost in whole.items() if lost} == {
        d for d, b in assigned.items() if b is Behaviour.LOSSY
    }


def _fleet(
    keys_dir: Path,
    behaviours: dict[str, Behaviour],
    devices: int = 12,
    batches: int = 4,
    first: int = 0,
) -> Fleet:
    registry = Registry.load(keys_dir)
    config = FleetConfig(
        broker=BrokerAddress("127.0.0.1", 1),
        keys=keys_dir,
        seed=4,
        batches_per_device=batches,
        devices=tuple(registry.election.devices[first : first + devices]),
        behaviours=behaviours,
    )
    fleet = Fleet(config, registry)
    fleet.prepare()
    return fleet


def test_truth_file_states_accepts_rejects_and_totals(keys_dir: Path, tmp_path: Path) -> None:
    registry = Registry.load(keys_dir)
    d = registry.election.devices
    behaviours = {
        d[0]: Behaviour.SILENT,
        d[1]: Behaviour.WRONG_KEY,
        d[2]: Behaviour.TAMPERED,
        d[3]: Behaviour.AFTER_FINAL,
        d[4]: Behaviour.DUPLICATE,
    }
    honest = _fleet(keys_dir, {})
    truth = build_truth(_fleet(keys_dir, behaviours))
    path = tmp_path / "truth.json"
    write_truth(path, truth)
    assert load_truth(path) == truth
    devices = truth["devices"]
    assert [a["seq"] for a in devices[d[0]]["accept"]] == [1, 2, 3]  # silent: no final
    assert devices[d[0]]["confirmed"] is False
    assert devices[d[1]]["accept"] == [] and {r["reason"] for r in devices[d[1]]["reject"]} == {"wrong_key"}
    assert [(r["reason"], r["where"]) for r in devices[d[2]]["reject"]] == [("bad_signature", "gateway")]
    assert [(r["seq"], r["reason"], r["where"]) for r in devices[d[3]]["reject"]] == [(5, "after_final", "cloud")]
    assert len(devices[d[4]]["duplicates"]) == 4
    honest_truth = build_truth(honest)
    lost = honest_truth["devices"][d[0]]["ballots"] - devices[d[0]]["ballots"]
    lost += honest_truth["devices"][d[1]]["ballots"]
    assert truth["expected"]["ballots"] == honest_truth["expected"]["ballots"] - lost
    assert truth["expected"]["batches"] == 12 * 4 - 1 - 4
    assert truth["expected"]["rejected"] == {"cloud:after_final": 1, "gateway:bad_signature": 1, "gateway:wrong_key": 4}


def test_misbehaving_payloads_fail_verification_with_the_reason_the_truth_gives(keys_dir: Path) -> None:
    registry = Registry.load(keys_dir)
    d = registry.election.devices
    fleet = _fleet(keys_dir, {d[1]: Behaviour.WRONG_KEY, d[5]: Behaviour.CLOCK_SKEW}, devices=6)
    by_device = {t.device: t for t in fleet.tabulators}
    with pytest.raises(Exception) as wrong:
        verify(by_device[d[1]].batches[0].payload, registry)
    assert getattr(wrong.value, "reason", None) is RejectReason.WRONG_KEY
    assert by_device[d[1]].key.kid == wrong_key(4, d[1]).kid
    with pytest.raises(Exception) as forged:
        verify(tampered(by_device[d[2]].batches[1].payload), registry)
    assert getattr(forged.value, "reason", None) is RejectReason.BAD_SIGNATURE
    skewed = [verify(b.payload, registry).body for b in by_device[d[5]].batches]
    assert skewed[0].issued_at < "2026" and all(b.prev == verify(a.payload, registry).body_hash for a, b in zip(by_device[d[5]].batches, skewed[1:], strict=False))


def test_truth_file_states_what_a_lossy_device_withholds_and_that_the_gap_ends_repaired(
    keys_dir: Path,
) -> None:
    registry = Registry.load(keys_dir)
    d = registry.election.devices
    lossy = {d[0]: Behaviour.LOSSY, d[1]: Behaviour.LOSSY, d[2]: Behaviour.LOSSY}
    fleet = _fleet(keys_dir, lossy, devices=4, batches=6)
    truth = build_truth(fleet)
    honest = build_truth(_fleet(keys_dir, {}, devices=4, batches=6))
    assert truth["version"] == 2
    total = 0
    for tab in fleet.tabulators:
        entry = truth["devices"][tab.device]
        if tab.device not in lossy:
            assert (entry["withheld"], entry["repairs"]) == ([], [])
            continue
        lost = lost_seqs(4, tab.device, 6)
        assert lost == withheld_seqs(fleet.config, tab, Behaviour.LOSSY)
        assert entry["withheld"] == sorted(lost)
        assert lost <= {a["seq"] for a in entry["accept"]}  # must end accepted: in the ledger
        assert [a["seq"] for a in entry["accept"]] == [1, 2, 3, 4, 5, 6]
        assert entry["repairs"] == gap_rows(lost)
        assert {r["state"] for r in entry["repairs"]} == {"repaired"}
        assert entry["confirmed"] is True and entry["reject"] == [] and entry["duplicates"] == []
        total += len(lost)
    assert truth["expected"]["withheld"] == total >= 3
    assert honest["expected"]["withheld"] == 0
    # Losing a first publish changes no total: the resend brings the same batch.
    assert {k: v for k, v in truth["expected"].items() if k != "withheld"} == {
        k: v for k, v in honest["expected"].items() if k != "withheld"
    }


def test_gap_rows_are_runs_of_consecutive_seqs_written_as_the_audit_writes_them() -> None:
    assert gap_rows(frozenset()) == []
    assert gap_rows({3}) == [{"seqs": "3", "state": "repaired"}]
    assert gap_rows({5, 2, 3}) == [
        {"seqs": "2-3", "state": "repaired"},
        {"seqs": "5", "state": "repaired"},
    ]


def test_withhold_first_and_lossy_share_one_choice_of_what_is_skipped(keys_dir: Path) -> None:
    registry = Registry.load(keys_dir)
    d = registry.election.devices
    fleet = _fleet(keys_dir, {d[0]: Behaviour.LOSSY, d[1]: Behaviour.SILENT}, devices=3, batches=5)
    tabs = {t.device: t for t in fleet.tabulators}
    config = replace(fleet.config, withhold_first=frozenset({1, 5, 9}))
    assert withheld_seqs(fleet.config, tabs[d[0]], Behaviour.LOSSY) == lost_seqs(4, d[0], 5)
    assert withheld_seqs(config, tabs[d[0]], Behaviour.LOSSY) == lost_seqs(4, d[0], 5) | {1, 5}
    assert withheld_seqs(config, tabs[d[1]], Behaviour.SILENT) == {1}  # silent never publishes 5
    assert withheld_seqs(config, tabs[d[2]], None) == {1, 5}  # 9: beyond the device's final
    withholding = Fleet(config, registry)
    withholding.prepare()
    truth = build_truth(withholding)
    # A withheld final (5) leaves no gap the cloud could see: only seq 1 is listed as a gap.
    assert truth["devices"][d[2]]["repairs"] == [{"seqs": "1", "state": "repaired"}]


def test_lossy_needs_a_seq_between_the_first_and_the_final(keys_dir: Path) -> None:
    d = Registry.load(keys_dir).election.devices
    with pytest.raises(FleetError, match="lossy needs --batches-per-device 3 or more"):
        _fleet(keys_dir, {d[0]: Behaviour.LOSSY}, devices=2, batches=2)


def test_devices_run_help_and_readme_name_every_behaviour() -> None:
    help_text = run_cli("devices", "run", "--help").stdout
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = next(line for line in readme.splitlines() if "--behaviour NAME=SHARE" in line)
    for behaviour in Behaviour:
        assert behaviour.value in help_text, behaviour
        assert behaviour.value in listed, behaviour


def test_devices_run_refuses_lossy_without_a_seq_between_first_and_final(keys_dir: Path) -> None:
    result = run_cli(
        "devices", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(keys_dir), "--seed", "1",
        "--batches-per-device", "2", "--behaviour", "lossy=1", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "lossy needs --batches-per-device 3 or more" in result.stderr, result.stderr
