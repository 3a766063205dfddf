"""Many connections on one box: the open-files limit raised, devices spread over source
addresses (a real fleet against a real Mosquitto), bulk key provisioning, the small jitter RNG."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from devices._exceptions import FleetError
from devices.fleet.pacing import Backoff, ConnectSlots, Jitter
from devices.keygen import provision_many
from devices.limits import raise_nofile, source_addresses, sources_for
from devices.synth import synth_election
from edgetally.brokers import BrokerProcess
from protocol import Registry, load_signing_key, provision
from protocol.registry import load_cloud_key
from tests.helpers import run_cli

CONNECTED_FROM = re.compile(r"New client connected from (127\.\d+\.\d+\.\d+):\d+ as edgetally-dev-")


def _in_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter (rlimits are per process: not this test run's)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout.strip()


def test_raise_nofile_lifts_a_low_soft_limit_to_what_is_wanted() -> None:
    out = _in_child(
        "import resource; from devices.limits import raise_nofile\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = raise_nofile(1000)\n"
        "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    assert out.split() == ["1000", "1000"]


def test_raise_nofile_goes_as_far_as_it_may_and_says_so() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = (hard if hard != resource.RLIM_INFINITY else 1 << 20) + 1000
    got, soft = (int(x) for x in _in_child(
        "import resource; from devices.limits import raise_nofile\n"
        f"got = raise_nofile({wanted})\n"
        "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    ).split())  # fmt: skip
    assert got == soft  # what it returns is the limit in force
    assert got >= min(wanted, hard)  # never below the hard limit; above it only where allowed (root)


def test_raise_nofile_leaves_a_high_enough_limit_alone() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_nofile(min(soft, 64)) == soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft


def test_source_addresses_from_a_count_or_a_list() -> None:
    assert source_addresses("3") == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert source_addresses("127.0.0.5, 127.1.2.3") == ("127.0.0.5", "127.1.2.3")
    for bad in ("0", "251", "10.0.0.1", "localhost", ","):
        with pytest.raises(FleetError):
            source_addresses(bad)


def test_enough_source_addresses_for_the_port_range() -> None:
    assert sources_for(20_000) == ()  # one address (the kernel's choice) is enough
    assert sources_for(20_001) == ("127.0.0.2", "127.0.0.3")
    assert len(sources_for(100_000)) == 5


def test_jitter_is_deterministic_per_device_and_backoff_stays_in_bounds() -> None:
    a, b, c = Jitter("p00001-d01"), Jitter("p00001-d01"), Jitter("p00001-d02")
    first = [a.random() for _ in range(1000)]
    assert first == [b.random() for _ in range(1000)]
    assert first[:10] != [c.random() for _ in range(10)]
    assert all(0.0 <= x < 1.0 for x in first)
    assert 0.4 < sum(first) / len(first) < 0.6
    backoff = Backoff(0.5, 10.0, Jitter("dev"))
    delays = [backoff.next() for _ in range(20)]
    assert all(0.0 <= d <= min(10.0, 0.5 * 2**i) for i, d in enumerate(delays))


def test_provision_many_writes_what_provision_writes(tmp_path: Path) -> None:
    election = synth_election(40, 10, 2)
    fast = provision_many(election, tmp_path / "fast")
    slow = provision(election, tmp_path / "slow")
    assert sorted(fast.devices) == sorted(slow.devices)
    assert {d: e.precinct for d, e in fast.devices.items()} == {d: e.precinct for d, e in slow.devices.items()}
    files = sorted(p.name for p in (tmp_path / "fast").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "slow").iterdir())  # and no temporary file left
    loaded = Registry.load(tmp_path / "fast")
    assert loaded.cloud_key == load_cloud_key(tmp_path / "fast").public
    for device, entry in loaded.devices.items():
        path = tmp_path / "fast" / f"{device}.pem"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert load_signing_key(tmp_path / "fast", device).public == entry.public_key
    again = provision_many(election, tmp_path / "fast")  # existing keys are kept
    assert {d: e.public_key for d, e in again.devices.items()} == {d: e.public_key for d, e in fast.devices.items()}


@pytest.mark.integration
def test_a_fleet_spread_over_two_source_addresses(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    provision_many(synth_election(50, 10, 3), keys)
    broker = BrokerProcess(tmp_path / "broker", name="edge", embedded=False)
    broker.start()
    try:
        result = run_cli(
            "devices", "run", "--broker", broker.url, "--keys", str(keys), "--seed", "1",
            "--batches-per-device", "2", "--no-confirm", "--connect-rate", "0",
            "--source-addresses", "127.0.0.2,127.0.0.3", "--json",
        )  # fmt: skip
    finally:
        broker.stop()
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["acked"] == 100 and summary["connect_failures"] == 0
    sources = Counter(m.group(1) for m in CONNECTED_FROM.finditer(broker.log_path.read_text()))
    assert sources == {"127.0.0.2": 25, "127.0.0.3": 25}


def test_connect_slots_hold_back_connects_past_the_cap_until_one_ends() -> None:
    async def main(slots: ConnectSlots) -> tuple[int, int]:
        inside, most = [0], [0]
        release = asyncio.Event()

        async def connect() -> None:
            async with slots:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                await release.wait()
                inside[0] -= 1

        tasks = [asyncio.create_task(connect()) for _ in range(5)]
        for _ in range(20):  # let every task run as far as it can
            await asyncio.sleep(0)
        held = inside[0]
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return held, most[0]

    assert asyncio.run(main(ConnectSlots(2))) == (2, 2)
    assert asyncio.run(main(ConnectSlots(0))) == (5, 5)  # 0: no cap, all five at once
    with pytest.raises(ValueError, match="connect concurrency"):
        ConnectSlots(-1)
