"""``edgetally rogue``: the attack of issue 14 as a tool, to prove a locked-down broker holds.

A rogue client holds one device's TLS certificate and key (stolen from its keys directory; not
its Ed25519 signing key) and tries, against one broker, what the attacker of the issue did:

    hijack      connect under the gateway's client id with a persistent session, subscribe to
                ``#`` and to every device's batches, and watch: anything it receives that is
                not on its own receipt or command topic is a leak; a session handed over is a
                take-over
    receipts    a forged, retained receipt for every other device (its final seq, a made-up
                hash): a device that took it would forget batches the cloud never counted
    repairs     a forged repair request for every other device
    batches     a batch published on every other device's topic
    flood       ``flood`` rejects on its own, allowed, topic: garbage and envelopes signed with
                a key that is not the device's (the gateway must quarantine them, up to its caps,
                and count the rest)

Each forgery goes on a connection of its own, followed by a probe (a subscription to its own
receipt topic): Mosquitto 2.0 acknowledges a publish its ACL refuses and closes the connection,
so a forgery is refused when the connection closes before the probe's SUBACK. The report
(:meth:`Rogue.run`, ``--report FILE``) says what got through; ``edgetally.scenarios.contained``
judges it. Every wait is bounded by ``timeout_s``; the watch lasts ``watch_s``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from protocol import BatchBody, ProtocolError, Receipt, Registry, SigningKey, seal, sha256_hex
from protocol.repair import RepairRequest
from protocol.tls import Role, client_context, client_tls
from protocol.topics import (
    BrokerAddress,
    batch_topic,
    command_topic,
    parse_broker_url,
    receipt_topic,
)

log = logging.getLogger(__name__)

FORGERIES = ("receipts", "repairs", "batches")


class RogueError(Exception):
    """The rogue could not attack at all (no certificate, broker unreachable)."""


@dataclass(frozen=True, slots=True)
class RogueConfig:
    broker: BrokerAddress
    keys: Path  # the stolen device's keys directory (its certificate, the CA, the registry)
    device: str  # whose certificate the rogue holds
    flood: int = 200
    seq: int = 5  # the seq the forged receipts and repair requests name
    watch_s: float = 2.0
    gateway_client_id: str = "edgetally-gw-gw1"
    timeout_s: float = 10.0


class _Connection:
    """One paho connection, driven by its caller (``client.loop``), not by a thread: a closed
    connection is simply closed (paho's thread would reconnect, a second later)."""

    def __init__(self, config: RogueConfig, client_id: str, *, clean: bool = True) -> None:
        self.connected = False
        self.closed = False
        self.subacked = False
        self.session_present = False
        self.received: list[str] = []
        self._config = config
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311)
        if config.broker.tls:
            self.client.tls_set_context(client_context(client_tls(config.keys, Role.DEVICE, config.device)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)

    def _on_connect(self, _c: object, _u: object, flags: mqtt.ConnectFlags, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            self.closed = True
        else:
            self.session_present = bool(flags.session_present)
            self.connected = True

    def _on_disconnect(self, *_: object) -> None:
        self.closed = True

    def _on_subscribe(self, *_: object) -> None:
        self.subacked = True

    def until(self, condition: Callable[[], bool], seconds: float) -> bool:
        """Run the network loop until ``condition`` holds (True) or the connection closed or
        ``seconds`` passed (False)."""
        deadline = time.monotonic() + seconds
        while not condition():
            if self.closed or time.monotonic() > deadline:
                return condition()
            self.client.loop(0.02)
        return True

    def __enter__(self) -> _Connection:
        try:
            self.client.connect(self._config.broker.host, self._config.broker.port)
        except OSError as exc:
            raise RogueError(f"cannot connect to {self._config.broker.url}: {exc}") from exc
        if not self.until(lambda: self.connected, self._config.timeout_s):
            self.__exit__()
            raise RogueError(f"{self._config.broker.url} did not accept the rogue's connection within {self._config.timeout_s:g}s")
        return self

    def __exit__(self, *_: object) -> None:
        if not self.closed:
            self.client.disconnect()
            self.client.loop(0.02)

    def wait_suback(self) -> bool:
        """Until a SUBACK arrived (True) or the broker closed the connection (False), bounded."""
        return self.until(lambda: self.subacked, self._config.timeout_s)


class Rogue:
    """The attack; constructing it does no I/O, :meth:`run` does it all and returns the report."""

    def __init__(self, config: RogueConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.election = registry.election.id
        self.own = {receipt_topic(self.election, config.device), command_topic(self.election, config.device)}

    def run(self) -> dict[str, Any]:
        report: dict[str, Any] = {"device": self.config.device, "broker": self.config.broker.url, "election": self.election}
        report["hijack"] = self.hijack()
        victims = sorted(d for d in self.registry.devices if d != self.config.device)
        for kind in FORGERIES:
            refused = sum(self.forge(self._forgery(kind, victim)) for victim in victims)
            report[kind] = {"attempted": len(victims), "refused_by_broker": refused}
            log.info("rogue %s: %d/%d forged %s refused by the broker", self.config.device, refused, len(victims), kind)
        report["flood"] = self.flood()
        return report

    def hijack(self) -> dict[str, Any]:
        with _Connection(self.config, self.config.gateway_client_id, clean=False) as conn:
            conn.client.subscribe([("#", 1), (f"edgetally/v1/{self.election}/+/batch", 1)])
            conn.wait_suback()
            conn.until(lambda: False, self.config.watch_s)  # a watch of bounded length: what leaks in it
            foreign = [t for t in conn.received if t not in self.own]
        return {
            "client_id": self.config.gateway_client_id,
            "session_present": conn.session_present,
            "received": len(conn.received),
            "foreign": len(foreign),
            "foreign_topics": sorted(set(foreign))[:20],
        }

    def _forgery(self, kind: str, victim: str) -> tuple[str, bytes, bool]:
        seq = self.config.seq
        if kind == "receipts":
            return receipt_topic(self.election, victim), Receipt(self.election, victim, seq, "0" * 64).to_bytes(), True
        if kind == "repairs":
            return command_topic(self.election, victim), RepairRequest(self.election, victim, ((1, seq),)).to_bytes(), False
        return batch_topic(self.election, victim), self._envelope(victim, seq), False

    def forge(self, message: tuple[str, bytes, bool]) -> bool:
        """Publish one forgery on a fresh connection; True when the broker refused it."""
        topic, payload, retain = message
        with _Connection(self.config, self.config.device) as conn:
            conn.client.publish(topic, payload, qos=1, retain=retain)
            conn.client.subscribe(receipt_topic(self.election, self.config.device), qos=1)  # the probe
            if conn.wait_suback():
                return False
            if not conn.closed:  # neither answered nor closed: no verdict, not a refusal
                raise RogueError(f"{self.config.broker.url} neither answered nor closed within {self.config.timeout_s:g}s")
            return True

    def _envelope(self, device: str, seq: int) -> bytes:
        """A well-formed batch signed with a key that is not ``device``'s."""
        entry = self.registry.devices.get(device)
        precinct = entry.precinct if entry is not None else "unknown"
        issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = BatchBody(self.election, device, precinct, seq, "0" * 64, issued, 1, {})
        return seal(body, SigningKey.generate()).to_bytes()

    def flood(self) -> dict[str, Any]:
        payloads = [
            self._envelope(self.config.device, n + 1) if n % 2 else b"rogue flood %d: not an envelope" % n
            for n in range(self.config.flood)
        ]
        with _Connection(self.config, self.config.device) as conn:
            infos = [conn.client.publish(batch_topic(self.election, self.config.device), p, qos=1) for p in payloads]
            conn.until(lambda: all(info.is_published() for info in infos), self.config.timeout_s + len(payloads) / 100)
            acknowledged = sum(info.is_published() for info in infos)
        log.info("rogue %s: flood of %d rejects, %d acknowledged", self.config.device, len(payloads), acknowledged)
        return {
            "published": len(payloads),
            "acknowledged": acknowledged,
            "closed": conn.closed and acknowledged < len(payloads),
            "payload_hashes": [sha256_hex(p) for p in payloads],
        }


def rogue_cmd(
    broker: str = typer.Option(..., "--broker", help="the broker to attack: mqtts://HOST:PORT (or mqtt:// for a plain one)"),
    keys: Path = typer.Option(..., "--keys", help="the keys directory the stolen device certificate is in (with registry.json)"),
    device: str = typer.Option(..., "--device", help="the device whose certificate the rogue holds"),
    flood: int = typer.Option(200, "--flood", min=0, max=1_000_000, help="rejects to publish on its own topic"),
    seq: int = typer.Option(5, "--seq", min=1, help="the seq forged receipts and repair requests name"),
    watch: float = typer.Option(2.0, "--watch", min=0, max=600, help="seconds to watch what the subscriptions receive"),
    gateway_client_id: str = typer.Option("edgetally-gw-gw1", "--gateway-client-id", help="the client id whose session it tries to take"),
    report: Path | None = typer.Option(None, "--report", help="write the report (JSON) here"),
) -> None:
    """Attack a broker as a rogue client holding a stolen device certificate; report what got through."""
    try:
        address = parse_broker_url(broker)
        registry = Registry.load(keys)
        if device not in registry.devices:
            raise RogueError(f"device {device!r} is not in {keys / 'registry.json'}")
        config = RogueConfig(address, keys, device, flood=flood, seq=seq, watch_s=watch, gateway_client_id=gateway_client_id)
        result = Rogue(config, registry).run()
    except (RogueError, ProtocolError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if report is not None:
        report.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    hijack = result["hijack"]
    typer.echo(f"hijack: session handed over: {hijack['session_present']}; foreign messages seen: {hijack['foreign']}")
    for kind in FORGERIES:
        typer.echo(f"forged {kind}: {result[kind]['refused_by_broker']}/{result[kind]['attempted']} refused by the broker")
    typer.echo(f"flood: {result['flood']['acknowledged']}/{result['flood']['published']} rejects acknowledged")
