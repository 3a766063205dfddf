"""The fleet: builds the tabulators and runs one device runner each, in one asyncio loop.

:class:`Fleet` signs every batch up front (``prepare``), then runs a
:class:`~devices.fleet.runner.DeviceRunner` per device (devices/fleet/runner.py: one device's
MQTT lifecycle) and counts what they report in its :class:`~devices.fleet.stats.FleetStats`.

Scale (issue 5): connections are :mod:`devices.connection` (a lean MQTT 3.1.1 protocol, one
keepalive timer wheel for the whole fleet), opened at most ``connect_rate`` per second
fleet-wide (a token bucket; reconnects go through it too). A lost connection is retried after
a capped exponential backoff with full jitter, per device, so a broker restart is not met by
a thundering herd; the fleet counts reconnects, connect failures and the time from the first
loss to every device connected again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from devices import behaviours as bh
from devices._exceptions import FleetError, StateError
from devices.behaviours import Behaviour
from devices.connection import KeepaliveWheel
from devices.fleet.config import FleetConfig, last_seq
from devices.fleet.pacing import ConnectSlots, RateLimiter, TokenBucket
from devices.fleet.runner import DeviceRunner
from devices.fleet.stats import FleetStats, FleetSummary, rss_kib
from devices.fleet.words import nested
from devices.snapshot import batch_counts
from devices.state import StateStore
from devices.tabulator import Tabulator
from protocol import PublicKey, Registry, load_signing_key

log = logging.getLogger(__name__)

MAX_RATE_SAMPLES = 20_000  # progress samples kept for the steady-rate window (a bound, not a limit hit in practice)


def _compact(tab: Tabulator) -> None:
    """Copy each signed payload into an exact-size bytes object.

    Measured here: a ``bytes`` returned by ``orjson.dumps`` keeps its ~4 KiB working buffer
    (``sys.getsizeof`` says 557 B, tracemalloc says 4,900 B), so 10,000 devices x 5 batches
    held ~230 MB more than their payloads. ``memoryview(...).tobytes()`` makes a tight copy.
    (Belongs in Tabulator itself; done here until devices/tabulator.py takes it.)
    """
    tab.batches = [
        b if len(b.payload) > 2048 else replace(b, payload=memoryview(b.payload).tobytes()) for b in tab.batches
    ]


class Fleet:
    """Builds the tabulators (signing every batch up front) and runs them."""

    def __init__(self, config: FleetConfig, registry: Registry, store: StateStore | None = None) -> None:
        """``store``: an open device state store (--state-dir); the caller closes it.

        Raises :class:`FleetError` when ``registry`` holds no cloud key: the devices could not
        verify a receipt or a repair request (devices/fleet/words.py).
        """
        if registry.cloud_key is None:
            raise FleetError(
                "the registry holds no cloud key, so the devices could not verify receipts and"
                " repair requests: run `edgetally devices provision` again (it keeps the device keys)"
            )
        self.config = config
        self.registry = registry
        self.cloud_key: PublicKey = registry.cloud_key
        self.store = store
        self.runners: list[DeviceRunner] = []
        self.stats = FleetStats()
        self.tabulators: list[Tabulator] = []
        self._done: set[str] = set()
        # built in run(), inside the loop
        self.wheel = KeepaliveWheel()
        self.limiter = RateLimiter(0)
        self.connect_limiter = TokenBucket(0)
        self.connect_slots = ConnectSlots(0)
        self.all_connected: asyncio.Future[None]
        self.all_done: asyncio.Future[None]

    def prepare(self) -> None:
        election = self.registry.election
        wanted = self.config.devices or election.devices
        unknown = [d for d in wanted if election.precinct_of(d) is None]
        if unknown:
            raise FleetError(f"devices not in election {election.id!r}: {', '.join(unknown[:10])}")
        needs_store = sorted({b.value for b in self.config.behaviours.values()} & {b.value for b in bh.NEEDS_STATE_DIR})
        if needs_store and self.store is None:
            raise FleetError(f"behaviour {', '.join(needs_store)} needs --state-dir (a device reopens from it)")
        if (
            Behaviour.LOSSY in self.config.behaviours.values()
            and self.config.batches_per_device < bh.LOSSY_MIN_BATCHES
        ):
            raise FleetError(
                f"behaviour lossy needs --batches-per-device {bh.LOSSY_MIN_BATCHES} or more"
                " (it loses a seq between a device's first and final batch)"
            )
        self.tabulators = []
        store = self.store
        with store.group() if store is not None else contextlib.nullcontext():  # one fsync for the fleet
            for device in wanted:
                tab = self._build(device)
                if store is not None and (last := last_seq(tab, self.config.behaviours.get(device))) >= 1:
                    tab.record_sent(last)  # write-ahead of everything the device will send
                self.tabulators.append(tab)
        self.stats.devices = len(self.tabulators)
        self.stats.batches = sum(len(t.batches) for t in self.tabulators)

    def _build(self, device: str) -> Tabulator:
        """The device's tabulator, as its behaviour makes it; resumed from the store if any."""
        config, election = self.config, self.registry.election
        behaviour = config.behaviours.get(device)
        if behaviour is Behaviour.WRONG_KEY:
            key = bh.wrong_key(config.seed, device)
        else:
            key = load_signing_key(config.keys, device)
        adjust = bh.skew if behaviour is Behaviour.CLOCK_SKEW else None
        if self.store is not None:
            variant = behaviour.value if behaviour is Behaviour.CLOCK_SKEW else ""
            tab = Tabulator.open(
                election, device, key, config.seed, config.batches_per_device, self.store, adjust, variant
            )
        else:
            tab = Tabulator(election, device, key, config.seed, config.batches_per_device, adjust)
        _compact(tab)
        if behaviour is None:
            tab.forget_key()  # signed already; only a misbehaving device signs anything later
        return tab

    def reboot(self, tab: Tabulator) -> Tabulator:
        """A device lost its memory: a new tabulator reopened from the store replaces ``tab``."""
        fresh = self._build(tab.device)
        fresh.publishes, fresh.resends, fresh.ignored = tab.publishes, tab.resends, tab.ignored
        self.tabulators[self.tabulators.index(tab)] = fresh
        return fresh

    # -- events from the device runners ---------------------------------------------------
    def on_connected(self, runner: DeviceRunner) -> None:
        stats = self.stats
        stats.connected += 1
        if stats.connected > stats.max_connected:
            stats.max_connected = stats.connected
        if runner._down:
            runner._down = False
            self._back(runner)
        if stats.connected >= stats.devices - len(self._done) and not self.all_connected.done():
            stats.all_connected_s = time.monotonic() - stats.started
            stats.rss_connected_kib = rss_kib()
            self.all_connected.set_result(None)
            log.info("all %d devices connected in %.1fs", stats.connected, stats.all_connected_s)

    def on_lost(self, runner: DeviceRunner) -> None:
        stats = self.stats
        stats.connections_lost += 1
        if not runner._down:
            runner._down = True
            stats.down += 1
            if stats.outage_started is None:
                stats.outage_started = time.monotonic()

    def _back(self, runner: DeviceRunner) -> None:
        stats = self.stats
        stats.down -= 1
        if stats.down == 0 and stats.outage_started is not None:
            stats.full_reconnect_s = time.monotonic() - stats.outage_started
            stats.outage_started = None
            log.info("every device reconnected %.1fs after the first loss", stats.full_reconnect_s)

    def on_done(self, runner: DeviceRunner) -> None:
        self._done.add(runner.tab.device)
        if len(self._done) == self.stats.devices and not self.all_done.done():
            self.all_done.set_result(None)

    def on_exit(self, runner: DeviceRunner) -> None:
        self.stats.exited += 1
        if runner._down:  # gave up (timeout) while disconnected
            runner._down = False
            self._back(runner)

    # -- running --------------------------------------------------------------------------
    async def run(self, on_tick: Callable[[Fleet], None] | None = None) -> FleetSummary:
        if not self.tabulators:
            self.prepare()
        loop = asyncio.get_running_loop()
        config = self.config
        self.limiter = RateLimiter(config.rate)
        burst = config.connect_burst or max(1, int(config.connect_rate / 10))
        self.connect_limiter = TokenBucket(config.connect_rate, burst)
        self.connect_slots = ConnectSlots(config.connect_concurrency)
        self.wheel = KeepaliveWheel()
        self.all_connected = loop.create_future()
        self.all_done = loop.create_future()
        sources = config.source_addresses
        runners = self.runners = [
            DeviceRunner(t, self, sources[i % len(sources)] if sources else None) for i, t in enumerate(self.tabulators)
        ]
        for runner in runners:
            if runner.done():
                self.on_done(runner)
        self.stats.rss_prepared_kib = rss_kib()
        self.stats.started = time.monotonic()
        ticker = asyncio.create_task(self._tick(on_tick), name="fleet-progress")
        try:
            async with asyncio.timeout(config.timeout):
                try:
                    async with asyncio.TaskGroup() as tasks:
                        for runner in runners:
                            tasks.create_task(runner.run(), name=f"device-{runner.tab.device}")
                except* StateError as failed:  # --state-dir failed (disk full, I/O error): stop
                    raise failed.exceptions[0] from None
        except TimeoutError:
            log.error("fleet timed out after %.0fs", config.timeout)
        finally:
            self.stats.finished = time.monotonic()
            self._sample()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.wheel.close()
            if on_tick is not None:
                on_tick(self)
        return self.summary()

    def _sample(self) -> None:
        samples = self.stats.samples
        if len(samples) >= MAX_RATE_SAMPLES:
            del samples[::2]  # keep the whole run, at half the resolution
        samples.append((time.monotonic(), self.stats.publishes))

    async def _tick(self, on_tick: Callable[[Fleet], None] | None) -> None:
        while True:
            self._sample()
            if on_tick is not None:
                on_tick(self)
            await asyncio.sleep(0.2)

    @property
    def acked(self) -> int:
        return sum(len(t.acked) for t in self.tabulators)

    @property
    def receipted(self) -> int:
        return sum(t.receipted for t in self.tabulators)

    def summary(self) -> FleetSummary:
        counts = batch_counts(self)
        if self.runners:  # a misbehaving device is done by its behaviour's measure (silent: no final)
            unconfirmed = tuple(r.tab.device for r in self.runners if not r.done()) if self.config.confirm else ()
        else:
            unconfirmed = tuple(t.device for t in self.tabulators if not t.confirmed) if self.config.confirm else ()
        stats = self.stats
        return FleetSummary(
            devices=stats.devices,
            batches=stats.batches,
            acked=self.acked,
            receipted=self.receipted,
            confirmed_devices=sum(1 for t in self.tabulators if t.confirmed),
            unconfirmed_devices=unconfirmed,
            publishes=stats.publishes,
            resends=stats.resends,
            reconnects=stats.reconnects,
            elapsed_s=stats.elapsed,
            confirm=self.config.confirm,
            connected=stats.connected,
            max_connected=stats.max_connected,
            connect_failures=stats.connect_failures,
            connect_failure_causes=dict(stats.connect_failure_causes),
            connections_lost=stats.connections_lost,
            all_connected_s=stats.all_connected_s,
            full_reconnect_s=stats.full_reconnect_s,
            rss_prepared_kib=stats.rss_prepared_kib,
            rss_connected_kib=stats.rss_connected_kib,
            steady_acked_per_s=stats.steady_rate(),
            sent=counts.sent,
            pending=counts.pending,
            behaviours=dict(stats.behaviours),
            ignored=nested(stats.ignored),
        )
