"""Behaviour selection (deterministic per seed) and the ground-truth file, without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices._exceptions import FleetError
from devices.behaviours import (
    Behaviour,
    Profile,
    assign,
    load_profile,
    parse_share,
    profile_from_specs,
    tampered,
    wrong_key,
)
from devices.fleet import Fleet, FleetConfig
from devices.truth import build_truth, load_truth, write_truth
from protocol import BrokerAddress, Registry, RejectReason, verify

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


def _fleet(keys_dir: Path, behaviours: dict[str, Behaviour], devices: int = 12) -> Fleet:
    registry = Registry.load(keys_dir)
    config = FleetConfig(
        broker=BrokerAddress("127.0.0.1", 1),
        keys=keys_dir,
        seed=4,
        batches_per_device=4,
        devices=tuple(registry.election.devices[:devices]),
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
