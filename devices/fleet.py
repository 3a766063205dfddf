"""A fleet of simulated tabulators, each with its own MQTT connection, in one asyncio loop.

Every device: its own client id (``edgetally-dev-{device}``) and persistent session, a retained
status message and a last will, QoS 1 publishes awaited until the broker's PUBACK, its ``final``
batch last. With ``confirm`` on (the default) a device also keeps every batch until the cloud's
receipt covers it and resends what stays unreceipted, with capped exponential backoff; it is
*confirmed* when its final batch is receipted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import orjson

from devices._exceptions import FleetError
from devices.tabulator import SignedBatch, Tabulator
from protocol import BrokerAddress, ProtocolError, Receipt, Registry, receipt_topic, status_topic

log = logging.getLogger(__name__)


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


@dataclass
class FleetStats:
    devices: int = 0
    batches: int = 0
    publishes: int = 0
    resends: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


@dataclass(frozen=True)
class FleetSummary:
    devices: int
    batches: int
    acked: int
    receipted: int
    confirmed_devices: int
    unconfirmed_devices: tuple[str, ...]
    publishes: int
    resends: int
    reconnects: int
    elapsed_s: float
    confirm: bool

    @property
    def ok(self) -> bool:
        if self.confirm:
            return not self.unconfirmed_devices
        return self.acked == self.batches

    def to_mapping(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "devices": self.devices,
            "batches": self.batches,
            "acked": self.acked,
            "receipted": self.receipted,
            "confirmed_devices": self.confirmed_devices,
            "unconfirmed_devices": list(self.unconfirmed_devices),
            "publishes": self.publishes,
            "resends": self.resends,
            "reconnects": self.reconnects,
            "elapsed_s": round(self.elapsed_s, 3),
            "acked_per_s": round(self.acked / self.elapsed_s, 1) if self.elapsed_s else None,
        }


class RateLimiter:
    """Paces publishes fleet-wide: at most ``rate`` per second (0 = no pacing)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def acquire(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        at = max(now, self._next)
        self._next = at + self._interval
        if at > now:
            await asyncio.sleep(at - now)


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, first: float, cap: float, rng: random.Random) -> None:
        self.first, self.cap, self._rng = first, cap, rng
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * (2**self._attempt))
        self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)


def _status(device: str, state: str, seq: int) -> bytes:
    return orjson.dumps(
        {"device": device, "state": state, "seq": seq, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    )


class DeviceRunner:
    """Drives one tabulator over MQTT until it is done (confirmed, or all acked)."""

    def __init__(self, tab: Tabulator, config: FleetConfig, limiter: RateLimiter, stats: FleetStats) -> None:
        self.tab = tab
        self.config = config
        self.limiter = limiter
        self.stats = stats
        self._progress = asyncio.Event()
        self._rng = random.Random(tab.device)
        election = tab.election.id
        self._receipt_topic = receipt_topic(election, tab.device)
        self._status_topic = status_topic(election, tab.device)

    def done(self) -> bool:
        return self.tab.confirmed if self.config.confirm else self.tab.all_acked

    async def run(self) -> None:
        backoff = Backoff(0.2, 5.0, self._rng)
        connected_once = False
        while not self.done():
            client = aiomqtt.Client(
                self.config.broker.host,
                self.config.broker.port,
                identifier=f"{self.config.client_prefix}{self.tab.device}",
                clean_session=False,
                protocol=aiomqtt.ProtocolVersion.V311,
                keepalive=self.config.keepalive,
                will=aiomqtt.Will(self._status_topic, _status(self.tab.device, "lost", 0), qos=1, retain=True),
                timeout=10,
                logger=logging.getLogger(f"{__name__}.mqtt"),
            )
            failure: BaseException | None = None
            try:
                async with client:
                    if connected_once:
                        self.stats.reconnects += 1
                    connected_once = True
                    backoff.reset()
                    await self._session(client)
            except* aiomqtt.MqttError as group:
                failure = group.exceptions[0]
            if failure is not None:
                if not connected_once:
                    self.stats.connect_failures += 1
                delay = backoff.next()
                log.info("device=%s connection lost (%s); retrying in %.1fs", self.tab.device, failure, delay)
                await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self._receipt_topic, qos=1)
        await client.publish(
            self._status_topic, _status(self.tab.device, "online", self.tab.receipted), qos=1, retain=True
        )
        async with asyncio.TaskGroup() as tasks:
            receiver = tasks.create_task(self._receive(client), name=f"receipts-{self.tab.device}")
            try:
                await self._send_until_done(client)
            finally:
                receiver.cancel()
        state = "confirmed" if self.tab.confirmed else "sent"
        await client.publish(
            self._status_topic, _status(self.tab.device, state, self.tab.receipted), qos=1, retain=True
        )

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            try:
                receipt = Receipt.parse(bytes(payload))
            except ProtocolError as exc:
                log.warning("device=%s ignoring bad receipt: %s", self.tab.device, exc)
                continue
            if self.tab.apply_receipt(receipt):
                log.debug("device=%s receipted up to seq=%d", self.tab.device, receipt.seq)
                self._progress.set()

    async def _publish(self, client: aiomqtt.Client, batches: list[SignedBatch], *, resend: bool) -> None:
        for batch in batches:
            if batch.seq <= self.tab.receipted:
                continue
            await self.limiter.acquire()
            await client.publish(self.tab.topic, batch.payload, qos=1, timeout=30)
            self.tab.mark_acked(batch.seq)
            self.tab.publishes += 1
            self.stats.publishes += 1
            if resend:
                self.tab.resends += 1
                self.stats.resends += 1
            log.debug("device=%s seq=%d acked by broker", self.tab.device, batch.seq)

    async def _send_until_done(self, client: aiomqtt.Client) -> None:
        await self._publish(client, self.tab.unacked(), resend=False)
        delay = self.config.resend_after
        while not self.done():
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), timeout=delay)
                delay = self.config.resend_after
            except TimeoutError:
                missing = self.tab.unreceipted()
                log.info(
                    "device=%s no receipt progress in %.1fs: resending %d batch(es) from seq=%d",
                    self.tab.device,
                    delay,
                    len(missing),
                    missing[0].seq if missing else 0,
                )
                await self._publish(client, missing, resend=True)
                delay = min(delay * 2, self.config.resend_cap)


class Fleet:
    """Builds the tabulators (signing every batch up front) and runs them."""

    def __init__(self, config: FleetConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.stats = FleetStats()
        self.tabulators: list[Tabulator] = []

    def prepare(self) -> None:
        election = self.registry.election
        wanted = self.config.devices or election.devices
        unknown = [d for d in wanted if election.precinct_of(d) is None]
        if unknown:
            raise FleetError(f"devices not in election {election.id!r}: {', '.join(unknown)}")
        self.tabulators = [
            Tabulator.load(election, self.config.keys, device, self.config.seed, self.config.batches_per_device)
            for device in wanted
        ]
        self.stats.devices = len(self.tabulators)
        self.stats.batches = sum(len(t.batches) for t in self.tabulators)

    async def run(self, on_tick: Callable[[Fleet], None] | None = None) -> FleetSummary:
        if not self.tabulators:
            self.prepare()
        limiter = RateLimiter(self.config.rate)
        runners = [DeviceRunner(t, self.config, limiter, self.stats) for t in self.tabulators]
        self.stats.started = time.monotonic()
        ticker: asyncio.Task[None] | None = None
        if on_tick is not None:
            ticker = asyncio.create_task(self._tick(on_tick), name="fleet-progress")
        try:
            async with asyncio.timeout(self.config.timeout):
                async with asyncio.TaskGroup() as tasks:
                    for runner in runners:
                        tasks.create_task(runner.run(), name=f"device-{runner.tab.device}")
        except TimeoutError:
            log.error("fleet timed out after %.0fs", self.config.timeout)
        finally:
            self.stats.finished = time.monotonic()
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                on_tick(self)  # type: ignore[misc]
        return self.summary()

    async def _tick(self, on_tick: Callable[[Fleet], None]) -> None:
        while True:
            on_tick(self)
            await asyncio.sleep(0.2)

    @property
    def acked(self) -> int:
        return sum(len(t.acked) for t in self.tabulators)

    @property
    def receipted(self) -> int:
        return sum(t.receipted for t in self.tabulators)

    def summary(self) -> FleetSummary:
        unconfirmed = tuple(t.device for t in self.tabulators if not t.confirmed) if self.config.confirm else ()
        return FleetSummary(
            devices=self.stats.devices,
            batches=self.stats.batches,
            acked=self.acked,
            receipted=self.receipted,
            confirmed_devices=sum(1 for t in self.tabulators if t.confirmed),
            unconfirmed_devices=unconfirmed,
            publishes=self.stats.publishes,
            resends=self.stats.resends,
            reconnects=self.stats.reconnects,
            elapsed_s=self.stats.elapsed,
            confirm=self.config.confirm,
        )
