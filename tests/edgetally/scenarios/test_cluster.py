"""The cluster scenarios' CLUSTER check (edgetally/scenarios/cluster.py): a single device resend
fails it, since a replicated cluster must not lose what it acknowledged. (Played end to end by
tests/integration/test_cloud_cluster.py; the scenario files by `edgetally scenario run`.)"""

from __future__ import annotations

from edgetally.scenarios.cluster import CLUSTER, check_cluster


def test_no_resend_in_any_fleet_passes_and_one_resend_anywhere_fails_naming_the_count() -> None:
    held = check_cluster([{"resends": 0}, {}], 60.0)
    assert (held.name, held.ok) == (CLUSTER, True)
    lost = check_cluster([{"resends": 0}, {"resends": 1}], 60.0)
    assert not lost.ok and "devices resent 1 batches (resend after 60s)" in lost.detail
