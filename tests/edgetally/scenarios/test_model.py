"""Scenario files: what they may say, and the errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetally.scenarios.model import (
    ScenarioError,
    load_scenario,
    parse_scenario,
    parse_seconds,
    shipped,
)


def _parse(text_timeline: list[object], **topology: object) -> object:
    return parse_scenario({"topology": topology, "timeline": text_timeline}, source="s.yaml")


def test_times_accept_seconds_milliseconds_minutes_and_numbers() -> None:
    assert [parse_seconds(v, "t") for v in ("5s", "500ms", "2m", 3, 1.5, " 2 s ")] == [5, 0.5, 120, 3, 1.5, 2]
    for bad in ("soon", "-1s", True, None, "5h"):
        with pytest.raises(ScenarioError, match="t: "):
            parse_seconds(bad, "t")


def test_repeats_are_expanded_and_the_timeline_is_sorted() -> None:
    scenario = parse_scenario(
        {
            "topology": {"links": ["uplink"]},
            "timeline": [
                {"at": "10s", "restore": "uplink"},
                {"at": "2s", "crash": "gateway", "every": "3s", "times": 3},
                {"at": "1s", "drop": "uplink", "for": "2s"},
            ],
        },
        source="s.yaml",
    )
    assert [(a.at, a.verb, a.target) for a in scenario.timeline] == [
        (1, "drop", "uplink"),
        (2, "crash", "gateway"),
        (5, "crash", "gateway"),
        (8, "crash", "gateway"),
        (10, "restore", "uplink"),
    ]
    assert scenario.last_fault_at == 10
    fast = scenario.scaled(2)
    assert [a.at for a in fast.timeline] == [0.5, 1, 2.5, 4, 5] and fast.timeline[0].duration == 1


def test_site_and_worker_numbers_address_one_instance() -> None:
    scenario = parse_scenario(
        {
            "topology": {"sites": 2, "cloud_workers": 3, "links": ["uplink"]},
            "timeline": [{"at": 1, "kill": "gateway2"}, {"at": 2, "kill": "cloud3"}, {"at": 3, "cut": "uplink1"}],
        },
        source="s.yaml",
    )
    assert [(a.target, a.site, a.worker) for a in scenario.timeline] == [
        ("gateway", 2, None),
        ("cloud", None, 3),
        ("uplink", 1, None),
    ]


def test_cluster_nodes_are_targets_by_number_by_role_or_all() -> None:
    scenario = parse_scenario(
        {
            "topology": {"cloud_broker": "nats", "nodes": 3},
            "timeline": [
                {"at": "1s", "kill": "cloud-node-leader"},
                {"at": "2s", "kill": "cloud-node-follower"},
                {"at": "3s", "start": "cloud-node2"},
                {"at": "4s", "start": "cloud-node"},
            ],
        },
        source="s.yaml",
    )
    assert [(a.target, a.node, a.worker) for a in scenario.timeline] == [
        ("cloud-node-leader", None, None), ("cloud-node-follower", None, None), ("cloud-node", 2, None), ("cloud-node", None, None),
    ]  # fmt: skip
    assert scenario.timeline[2].describe() == "start cloud-node2"


@pytest.mark.parametrize(
    ("timeline", "topology", "message"),
    [
        ([{"at": "1s", "cut": "uplink"}], {}, r"timeline\[0\]: link 'uplink' has no fault proxy: add it to topology.links"),
        ([{"at": "1s", "explode": "gateway"}], {}, r"timeline\[0\]: expected exactly one action"),
        ([{"cut": "uplink"}], {"links": ["uplink"]}, r"timeline\[0\]: missing 'at'"),
        ([{"at": "1s", "kill": "toaster"}], {}, r"unknown target 'toaster'"),
        ([{"at": "1s", "kill": "gateway3"}], {"sites": 2}, r"site 3 does not exist"),
        ([{"at": "1s", "kill": "cloud2"}], {}, r"cloud2 does not exist"),
        ([{"at": "1s", "kill": "cloud-broker2"}], {}, r"cloud-broker has no per-site instances"),
        ([{"at": "1s", "kill": "gateway", "times": 3}], {}, r"'times' needs 'every'"),
        ([{"at": "1s", "drop": "uplink"}], {"links": ["uplink"]}, r"drop needs 'for'"),
        ([{"at": "1s", "bandwidth": "uplink", "bps": 0}], {"links": ["uplink"]}, r"bandwidth needs bps"),
        ([{"at": "1s", "kill": "gateway", "ms": 5}], {}, r"'ms' does not apply to kill"),
        ([], {"links": ["wormhole"]}, r"topology.links: expected a list of devices, edge, uplink, cloud"),
        ([], {"behaviours": {"sneaky": 1}}, r"unknown behaviour 'sneaky'"),
        ([], {"database": "oracle"}, r"topology.database: expected sqlite or postgresql"),
        ([], {"devices": -3}, r"topology.devices: expected a whole number >= 0"),
        ([], {"colour": "red"}, r"topology: unknown key\(s\) colour"),
        ([], {"devices": 1, "sites": 2}, r"1 devices cannot fill 2 sites"),
        ([{"at": "1s", "wipe": "edge-broker"}], {}, r"timeline\[0\]: wipe applies to gateway only, not edge-broker"),
        ([{"at": "1s", "crash": "rogue"}], {}, r"timeline\[0\]: rogue takes start, kill, stop only, not crash"),
        ([], {"cloud_broker": "rabbitmq"}, r"topology.cloud_broker: expected mosquitto or nats"),
        ([], {"nodes": 3}, r"topology.nodes is for cloud_broker: nats"),
        ([], {"cloud_broker": "nats", "nodes": 0}, r"topology.nodes must be at least 1"),
        ([], {"cloud_broker": "nats", "links": ["uplink"]}, r"no fault proxy in front of a NATS cluster"),
        ([{"at": "1s", "kill": "cloud-node-leader"}], {}, r"cloud-node-leader needs topology.cloud_broker: nats"),
        ([{"at": "1s", "kill": "cloud-node4"}], {"cloud_broker": "nats", "nodes": 3}, r"cloud-node4 does not exist"),
        ([], {"elections": 3, "election": "x.yaml"}, r"with more than 1 the elections are synthetic"),
        ([], {"elections": 0}, r"topology.elections is at least 1"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_entry_and_the_problem(
    timeline: list[object], topology: dict[str, object], message: str
) -> None:
    with pytest.raises(ScenarioError, match=message) as caught:
        _parse(timeline, **topology)
    assert str(caught.value).startswith("s.yaml: ")


def test_a_file_that_is_not_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("topology:\n  devices: [1, 2\ntimeline: []\n")
    with pytest.raises(ScenarioError, match=r"broken.yaml:\d+:\d+: not valid YAML"):
        load_scenario(path)


def test_every_shipped_scenario_loads_and_the_library_covers_the_issue() -> None:
    names = {s.name for s in shipped()}
    assert names >= {
        "uplink-outage", "flapping-uplink", "slow-uplink", "blackholed-uplink", "gateway-crash-loop",
        "edge-broker-restart", "edge-broker-sigkill", "cloud-broker-restart", "cloud-broker-sigkill",
        "cloud-worker-crash", "reconnect-storm", "tampered-and-replaying", "duplicate-flood",
        "gateway-disk-quota", "election-night", "rogue-client", "many-elections",
    }  # fmt: skip
    many = next(s for s in shipped() if s.name == "many-elections")  # issue 18: an outage and a worker crash
    assert many.topology.elections == 20 and {a.verb for a in many.timeline} >= {"cut", "kill"}
    rogue = next(s for s in shipped() if s.name == "rogue-client")  # issue 14: during an outage and a disk loss
    assert [a.verb + " " + a.target for a in rogue.timeline] == ["cut uplink", "wipe gateway", "start rogue", "restore uplink"]
    night = next(s for s in shipped() if s.name == "election-night")
    assert "long" in night.tags and night.topology.sites == 2 and night.topology.database == "postgresql"
