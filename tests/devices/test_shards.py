"""Adding the shards' fleet summaries up (devices/shards.py ``aggregate``)."""

from __future__ import annotations

from devices.shards import aggregate


def test_failed_connects_are_added_up_by_cause_over_the_shards() -> None:
    parts = [
        {"devices": 2, "connect_failures": 3, "connect_failure_causes": {"timeout": 2, "ECONNREFUSED": 1}},
        {"devices": 2, "connect_failures": 4, "connect_failure_causes": {"timeout": 4}},
        {"devices": 1},  # a shard from before causes were counted
    ]
    summary = aggregate(parts, confirm=False)
    assert summary.connect_failures == 7
    assert summary.to_mapping()["connect_failure_causes"] == {"ECONNREFUSED": 1, "timeout": 6}
