"""The fleet's configuration, and what it decides for each device before the first connection.

:class:`FleetConfig` is one run's settings (broker, keys, pacing, timeouts, behaviours);
:func:`last_seq` and :func:`withheld_seqs` say what a device publishes of its own batches: the
device runner (devices/fleet/runner.py), the fleet and the truth file (devices/truth.py) all
read them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devices import behaviours as bh
from devices.behaviours import Behaviour
from devices.tabulator import Tabulator
from protocol import BrokerAddress


@dataclass(frozen=True)
class FleetConfig:
    broker: BrokerAddress
    keys: Path
    seed: int
    batches_per_device: int = 5
    rate: float = 0.0  # batches per second over the whole fleet; 0 = as fast as acks allow
    confirm: bool = True
    resend_after: float = 5.0  # seconds without receipt progress before resending
    resend_cap: float = 60.0
    timeout: float = 600.0
    keepalive: int = 30
    devices: tuple[str, ...] | None = None  # a subset; None = every device of the election
    client_prefix: str = "edgetally-dev-"
    connect_rate: float = 200.0  # new connections per second, fleet-wide (0 = unpaced)
    connect_burst: int = 0  # token bucket size; 0 = a tenth of a second's worth
    reconnect_min: float = 0.5  # first reconnect backoff ceiling (full jitter below it)
    reconnect_max: float = 30.0  # backoff cap
    connect_timeout: float = 10.0
    # Connects in progress at once (TCP + TLS + CONNACK), fleet-wide; 0 = no cap. Past it a device
    # waits for a slot before its connect timeout starts: on a loaded box handshakes slow down,
    # and without a cap they pile up until they all miss the timeout and start again.
    connect_concurrency: int = 256
    # Local addresses the devices connect from, device i from the (i mod n)th; empty: the
    # kernel's choice. One address has only the ephemeral port range (devices/limits.py).
    source_addresses: tuple[str, ...] = ()
    hold: bool = False  # publish only once every device is connected; stay connected until all are done
    behaviours: Mapping[str, Behaviour] = field(default_factory=dict)  # device -> misbehaviour (devices/behaviours.py)
    # Tests only (no CLI flag): seqs every device skips on their first publish, as if lost on the
    # way, so the cloud sees a gap and asks for them (repair requests). The lossy behaviour does
    # the same per device (devices/behaviours.py lost_seqs); both go through withheld_seqs.
    withhold_first: frozenset[int] = frozenset()


def last_seq(tab: Tabulator, behaviour: Behaviour | None) -> int:
    """The highest seq a device with ``behaviour`` publishes of its own batches."""
    return tab.final_seq - 1 if behaviour is Behaviour.SILENT else tab.final_seq


def withheld_seqs(
    config: FleetConfig, tab: Tabulator, behaviour: Behaviour | None
) -> frozenset[int]:
    """The seqs whose first publish the device skips, as if lost on the way (it sends them again
    on a repair request, a resend timeout or a reconnect): the lossy behaviour's
    (:func:`devices.behaviours.lost_seqs`) and ``config.withhold_first`` (tests), within what the
    device publishes. The fleet and the truth file (devices/truth.py) both read them from here."""
    lost = set(config.withhold_first)
    if behaviour is Behaviour.LOSSY:
        lost |= bh.lost_seqs(config.seed, tab.device, tab.final_seq)
    if not lost:
        return _NO_SEQS
    last = last_seq(tab, behaviour)
    return frozenset(s for s in lost if 1 <= s <= last)


_NO_SEQS: frozenset[int] = frozenset()  # one for every device that withholds nothing
