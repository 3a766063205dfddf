"""One device's MQTT lifecycle: :class:`DeviceRunner` drives a tabulator until it is done.

Every device: its own client id (``edgetally-dev-{device}``) and persistent session, a retained
status message and a last will, QoS 1 publishes awaited until the broker's PUBACK, its ``final``
batch last. With ``confirm`` on (the default) a device also keeps every batch until the cloud's
receipt covers it and resends what stays unreceipted, oldest first and at most
:data:`RESEND_WINDOW` at a time, with capped exponential backoff (and at once what a repair
request names); it is *confirmed* when its final batch is receipted. Only
receipts and repair requests the cloud signed for this device count (devices/fleet/words.py);
any other is ignored, counted and logged. A lost
connection is retried after the device's own :class:`~devices.fleet.pacing.Backoff`; a
behaviour (devices/behaviours.py) makes the device misbehave on the way.

The runner reads and reports to its fleet through :class:`Supervisor`, the part of
:class:`devices.fleet.fleet.Fleet` it uses, so this module does not import the fleet. It stays
whole (about 400 lines): the connect loop, the sender and the behaviours' hooks share one
device's state, and read best side by side.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

import orjson

from devices import behaviours as bh
from devices._exceptions import ConnectionFailed
from devices.behaviours import Behaviour
from devices.connection import ConnectOptions, KeepaliveWheel, MqttConnection, Will, connect
from devices.fleet.config import FleetConfig, last_seq, withheld_seqs
from devices.fleet.pacing import Backoff, ConnectSlots, Jitter, TokenBucket
from devices.fleet.stats import FleetStats
from devices.fleet.words import verified_receipt, verified_repair
from devices.tabulator import SignedBatch, Tabulator
from devices.tls import DeviceTls, fleet_tls
from protocol import PublicKey, command_topic, receipt_topic, status_topic
from protocol.tls import Role, ca_cert_path, client_tls

log = logging.getLogger(__name__)

# A resend after a timeout covers the oldest unreceipted batches, at most this many: a lost tail
# comes back a window per timeout (the timer restarts at once when receipts move), and a device
# whose batches are only slow to be receipted (a loaded pipeline) adds a window, not its whole
# backlog, to the queue it waits on. Gaps the cloud sees are asked for by repair requests.
RESEND_WINDOW = 64


class Supervisor(Protocol):
    """What a runner needs of its fleet: shared settings, counters, pacing and gates; events."""

    @property
    def config(self) -> FleetConfig: ...
    @property
    def stats(self) -> FleetStats: ...
    @property
    def limiter(self) -> TokenBucket: ...  # publishes, fleet-wide
    @property
    def connect_limiter(self) -> TokenBucket: ...  # new connections, fleet-wide
    @property
    def connect_slots(self) -> ConnectSlots: ...  # connects in progress at once, fleet-wide
    @property
    def wheel(self) -> KeepaliveWheel: ...
    @property
    def cloud_key(self) -> PublicKey: ...  # verifies receipts and repair requests
    @property
    def all_connected(self) -> asyncio.Future[None]: ...  # the --hold gates
    @property
    def all_done(self) -> asyncio.Future[None]: ...

    def reboot(self, tab: Tabulator) -> Tabulator: ...
    def on_connected(self, runner: DeviceRunner) -> None: ...
    def on_lost(self, runner: DeviceRunner) -> None: ...
    def on_done(self, runner: DeviceRunner) -> None: ...
    def on_exit(self, runner: DeviceRunner) -> None: ...


def _status(device: str, state: str, seq: int) -> bytes:
    """The status message; an exact-size copy, as the will is kept for the connection's life (a
    ``bytes`` from ``orjson.dumps`` keeps its ~4 KiB buffer: devices/fleet/fleet.py _compact)."""
    body = {"device": device, "state": state, "seq": seq, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    return memoryview(orjson.dumps(body)).tobytes()


class DeviceRunner:
    """Drives one tabulator over MQTT until it is done (confirmed, or all acked)."""

    __slots__ = (
        "_command_topic", "_down", "_epilogue_done", "_lose_first", "_progressed", "_receipt_topic",
        "_repair", "_status_topic", "_tripped", "_wake", "_withheld", "behaviour", "config", "fleet", "source",
        "stats", "tab",
    )  # fmt: skip

    def __init__(self, tab: Tabulator, fleet: Supervisor, source: str | None = None) -> None:
        """``source``: the local address this device connects from (None: the kernel's choice)."""
        self.tab = tab
        self.fleet = fleet
        self.source = source
        self.config = fleet.config
        self.stats = fleet.stats
        self._wake: asyncio.Future[None] | None = None  # the sender waits on it (receipt progress, repair)
        self._progressed = False  # a receipt covered something new since the sender last looked
        self._repair: frozenset[int] = _NONE  # seqs the cloud asked for, not yet resent
        election = tab.election.id
        self._receipt_topic = receipt_topic(election, tab.device)
        self._command_topic = command_topic(election, tab.device)
        self._status_topic = status_topic(election, tab.device)
        self._down = False
        self.behaviour: Behaviour | None = self.config.behaviours.get(tab.device)
        self._tripped = False  # the once-only mid-run behaviour (flap, reboot, power loss, tampered) happened
        self._epilogue_done = False  # replay / after_final sent
        self._lose_first = withheld_seqs(self.config, tab, self.behaviour)  # lossy, withhold_first
        self._withheld: frozenset[int] = _NONE  # those of them already skipped (once each)

    @property
    def last_seq(self) -> int:
        """The highest seq this device will ever publish (a silent device keeps its final)."""
        return last_seq(self.tab, self.behaviour)

    def done(self) -> bool:
        if self.behaviour in (Behaviour.REPLAY, Behaviour.AFTER_FINAL):
            return self._epilogue_done and self._own_batches_done()
        return self._own_batches_done()

    def _own_batches_done(self) -> bool:
        tab, behaviour = self.tab, self.behaviour
        if behaviour is None:
            return tab.confirmed if self.config.confirm else tab.all_acked
        if behaviour is Behaviour.WRONG_KEY:  # the cloud never receipts a batch it refuses
            core = all(s in tab.acked for s in range(1, self.last_seq + 1))
        elif self.config.confirm:
            core = tab.receipted >= self.last_seq
        else:
            core = all(s in tab.acked for s in range(1, self.last_seq + 1))
        return core

    def _count_extra(self) -> None:
        """A message a behaviour added (not one of the device's batches) was acknowledged."""
        self.tab.publishes += 1
        self.stats.publishes += 1

    def _inject(self) -> None:
        assert self.behaviour is not None
        name = self.behaviour.value
        self.stats.behaviours[name] = self.stats.behaviours.get(name, 0) + 1
        log.info("device=%s behaviour %s injected", self.tab.device, name)

    def _options(self) -> ConnectOptions:
        return ConnectOptions(
            host=self.config.broker.host,
            port=self.config.broker.port,
            client_id=f"{self.config.client_prefix}{self.tab.device}",
            keepalive=self.config.keepalive,
            clean_session=False,
            will=Will(self._status_topic, _status(self.tab.device, "lost", 0), qos=1, retain=True),
            timeout=self.config.connect_timeout,
            # The device's certificate (preflight checked the files), loaded at each connect into
            # the fleet's one context (devices/tls.py says why).
            tls=DeviceTls(fleet_tls(ca_cert_path(self.config.keys)), client_tls(self.config.keys, Role.DEVICE, self.tab.device))
            if self.config.broker.tls
            else None,
            source=self.source,
        )

    async def run(self) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max, Jitter(self.tab.device))
        connected_once = False
        try:
            while not self.done():
                await self.fleet.connect_limiter.acquire()
                try:
                    async with self.fleet.connect_slots:
                        conn = await connect(self._options(), self.fleet.wheel, self._on_message)
                except ConnectionFailed as exc:
                    self.stats.connect_failures += 1
                    causes = self.stats.connect_failure_causes
                    causes[exc.cause] = causes.get(exc.cause, 0) + 1
                    delay = backoff.next()
                    log.debug("device=%s connect failed (%s); retrying in %.2fs", self.tab.device, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                if connected_once:
                    self.stats.reconnects += 1
                connected_once = True
                backoff.reset()
                self.fleet.on_connected(self)
                lost: ConnectionFailed | None = None
                try:
                    await self._session(conn)
                except _Reboot:
                    self.fleet.on_lost(self)
                    conn.abort()
                    self.tab = self.fleet.reboot(self.tab)
                    log.info("device=%s rebooted from its state store at seq=%d", self.tab.device, self.tab.sent_seq)
                    continue
                except ConnectionFailed as exc:
                    self.fleet.on_lost(self)
                    lost = exc
                finally:
                    self.stats.connected -= 1
                    conn.abort()
                if lost is not None:  # back off only once counted offline
                    delay = backoff.next()
                    log.info("device=%s connection lost (%s); reconnecting in %.2fs", self.tab.device, lost, delay)
                    await asyncio.sleep(delay)
        finally:
            self.fleet.on_exit(self)

    async def _session(self, conn: MqttConnection) -> None:
        await conn.subscribe(self._receipt_topic, qos=1)
        await conn.subscribe(self._command_topic, qos=1)
        await conn.publish(self._status_topic, _status(self.tab.device, "online", self.tab.receipted), retain=True)
        if self.config.hold:
            await self._until(conn, self.fleet.all_connected)
        await self._send_until_done(conn)
        await self._epilogue(conn)
        state = "confirmed" if self.tab.confirmed else "sent"
        await conn.publish(self._status_topic, _status(self.tab.device, state, self.tab.receipted), retain=True)
        if self.config.hold:
            await self._until(conn, self.fleet.all_done)
        await conn.disconnect()

    @staticmethod
    async def _until(conn: MqttConnection, gate: asyncio.Future[None]) -> None:
        """Wait for ``gate``; raise ConnectionFailed if the connection is lost first."""
        if not gate.done():
            await asyncio.wait((gate, conn.lost), return_when=asyncio.FIRST_COMPLETED)
        if conn.lost.done():
            conn.lost.result()  # raises the ConnectionFailed it holds

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._command_topic:
            self._on_command(payload)
            return
        receipt = verified_receipt(payload, self.fleet.cloud_key, self.tab, self.stats)
        if receipt is None:
            return  # counted and logged; the device keeps its batches
        if self.tab.apply_receipt(receipt):
            log.debug("device=%s receipted up to seq=%d", self.tab.device, receipt.seq)
            self._progressed = True
            self._wake_sender()
            if self.done():
                self.fleet.on_done(self)

    def _on_command(self, payload: bytes) -> None:
        """A repair request: remember the asked-for seqs this device holds, sent and unreceipted."""
        tab = self.tab
        request = verified_repair(payload, self.fleet.cloud_key, tab, self.stats)
        if request is None:
            return  # not the cloud's word for this device: counted and logged, nothing resent
        upto = min(self._last_sent, self.last_seq)
        wanted = {seq for seq in request.seqs if tab.receipted < seq <= upto}
        log.info(
            "device=%s repair request for %d seq(s); resending %d from seq=%d",
            tab.device, len(request.seqs), len(wanted), min(wanted, default=0),
        )  # fmt: skip
        if wanted:
            self._repair |= wanted
            self._wake_sender()

    @property
    def _last_sent(self) -> int:
        """The highest seq this device has sent (written ahead, or acked by the broker)."""
        return max(self.tab.sent_seq, max(self.tab.acked, default=0))

    def _wake_sender(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _publish(self, conn: MqttConnection, batches: list[SignedBatch], *, resend: bool) -> None:
        limiter = self.fleet.limiter
        behaviour = self.behaviour
        last = self.last_seq
        if behaviour is Behaviour.BURST and not resend:
            await self._burst(conn, [b for b in batches if self.tab.receipted < b.seq <= last])
            batches = []
        for batch in batches:
            if batch.seq <= self.tab.receipted or batch.seq > last:
                continue
            if not resend and batch.seq in self._lose_first and batch.seq not in self._withheld:
                self._withheld |= {batch.seq}  # lost on the way: never reaches the broker
                log.info("device=%s seq=%d withheld on its first publish", self.tab.device, batch.seq)
                if behaviour is Behaviour.LOSSY:
                    self._inject()
                continue
            if behaviour is not None:
                await self._before(conn, batch)
            await limiter.acquire()
            payload = self.tab.record_sent(batch.seq).payload  # write-ahead when a state store is attached
            await conn.publish(self.tab.topic, payload, qos=1)
            if behaviour is Behaviour.DUPLICATE:
                await conn.publish(self.tab.topic, payload, qos=1)
                self._inject()
                self._count_extra()
            self.tab.mark_acked(batch.seq)
            if behaviour is not None:
                self._after(batch)
            self.tab.publishes += 1
            self.stats.publishes += 1
            if resend:
                self.tab.resends += 1
                self.stats.resends += 1
            log.debug("device=%s seq=%d acked by broker", self.tab.device, batch.seq)
        if self.done():
            self.fleet.on_done(self)

    async def _before(self, conn: MqttConnection, batch: SignedBatch) -> None:
        """Behaviours that act before ``batch`` is published."""
        behaviour = self.behaviour
        if behaviour is Behaviour.SLOW:
            await asyncio.sleep(bh.SLOW_DELAY_S)  # the behaviour itself, not synchronisation
        if self._tripped or batch.seq != bh.mid_seq(self.tab.final_seq):
            return
        if behaviour is Behaviour.TAMPERED:
            self._tripped = True
            await conn.publish(self.tab.topic, bh.tampered(batch.payload), qos=1)
            self._inject()
            self._count_extra()
        elif behaviour is Behaviour.POWER_LOSS:
            self._tripped = True
            payload = self.tab.record_sent(batch.seq).payload  # on disk before the network sees it
            unacked = conn.publish(self.tab.topic, payload, qos=1)
            unacked.add_done_callback(_consume)
            self._inject()
            raise _Reboot  # the power goes before the PUBACK can arrive

    def _after(self, batch: SignedBatch) -> None:
        """Behaviours that act once ``batch`` was acknowledged by the broker."""
        if self._tripped or batch.seq != bh.mid_seq(self.tab.final_seq):
            return
        if self.behaviour is Behaviour.FLAP:
            self._tripped = True
            self._inject()
            raise ConnectionFailed(f"device={self.tab.device}: network flap (behaviour)")
        if self.behaviour is Behaviour.REBOOT:
            self._tripped = True
            self._inject()
            raise _Reboot

    async def _burst(self, conn: MqttConnection, batches: list[SignedBatch]) -> None:
        """Every batch written at once; then wait for all the PUBACKs."""
        if not batches:
            return
        self.tab.record_sent(batches[-1].seq)  # one write-ahead for the whole burst
        futures = [conn.publish(self.tab.topic, b.payload, qos=1) for b in batches]
        self._inject()
        await asyncio.gather(*futures)
        for batch in batches:
            self.tab.mark_acked(batch.seq)
            self.tab.publishes += 1
            self.stats.publishes += 1

    async def _epilogue(self, conn: MqttConnection) -> None:
        """What a device does once its own batches are in: replay an old one, or send after final."""
        if self._epilogue_done or self.behaviour not in (Behaviour.REPLAY, Behaviour.AFTER_FINAL):
            return
        tab = self.tab
        if self.behaviour is Behaviour.REPLAY:
            payload = tab.batches[0].payload
        else:
            assert tab.key is not None  # a misbehaving device keeps its key (Fleet._build)
            payload = bh.after_final_payload(tab.batches[-1].payload, tab.key)
        await conn.publish(tab.topic, payload, qos=1)
        self._inject()
        self._count_extra()
        self._epilogue_done = True
        if self.done():
            self.fleet.on_done(self)

    async def _send_until_done(self, conn: MqttConnection) -> None:
        await self._publish(conn, self.tab.unacked(), resend=False)
        delay = self.config.resend_after
        loop = asyncio.get_running_loop()
        self._progressed = False
        deadline = loop.time() + delay
        while not self._own_batches_done():
            if not self._repair and not self._progressed:
                self._wake = loop.create_future()
                timeout = max(0.0, deadline - loop.time())
                await asyncio.wait((self._wake, conn.lost), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                self._wake = None
            if conn.lost.done():
                conn.lost.result()
            if self._repair:  # the cloud asked: resend now, leaving the backoff as it is
                await self._resend_requested(conn)
            if self._progressed:
                self._progressed = False
                delay = self.config.resend_after
                deadline = loop.time() + delay
                continue
            if loop.time() < deadline:
                continue
            missing = [b for b in self.tab.unreceipted() if b.seq <= self.last_seq][:RESEND_WINDOW]
            log.info(
                "device=%s no receipt progress in %.1fs: resending %d batch(es) from seq=%d",
                self.tab.device,
                delay,
                len(missing),
                missing[0].seq if missing else 0,
            )
            await self._publish(conn, missing, resend=True)
            delay = min(delay * 2, self.config.resend_cap)
            deadline = loop.time() + delay

    async def _resend_requested(self, conn: MqttConnection) -> None:
        """Resend the seqs repair requests named, still unreceipted (taken from ``_repair``)."""
        seqs, self._repair = self._repair, _NONE
        batches = [self.tab.batches[seq - 1] for seq in sorted(seqs) if seq > self.tab.receipted]
        if batches:
            log.info("device=%s resending %d requested batch(es) from seq=%d", self.tab.device, len(batches), batches[0].seq)
            await self._publish(conn, batches, resend=True)


_NONE: frozenset[int] = frozenset()  # shared: an empty set() is 216 B, per device


class _Reboot(Exception):
    """The device loses its memory (reboot, power loss) and reopens from its state store."""


def _consume(future: asyncio.Future[int]) -> None:
    """Retrieve a dropped publish's outcome (power loss): nobody waits for it any more."""
    if not future.cancelled():
        future.exception()
