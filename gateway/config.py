"""The gateway's configuration: one frozen value, built once by the CLI, read by everything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway._exceptions import ConfigError
from protocol import (
    DEFAULT_MAX_BYTES,
    BrokerAddress,
    ProtocolError,
    parse_broker_url,
    parse_broker_urls,
)
from protocol.election import ID_PATTERN
from protocol.tls import ClientTls, Role, client_tls

# Mosquitto (edgetally/brokers.py) sends at most this many unacknowledged QoS 1 messages
# to one client; the ingress queue holds at least twice that (one connection's worth plus
# what an earlier connection left queued), so in practice it never fills.
BROKER_MAX_INFLIGHT = 1000
MAX_WINDOW = 20_000  # well below paho's 65,535 message ids
# Uplink bundling (gateway/uplink.py, protocol/bundle.py): envelopes per uplink message.
DEFAULT_BUNDLE_MAX = 64  # chosen from benchmarks/gateway.py (docs/gateway.md, "Uplink")
MAX_BUNDLE = 4096  # protocol.bundle.MAX_ENTRIES
DEFAULT_KEEPALIVE_S = 15
DEFAULT_STATUS_INTERVAL_S = 5.0
DEFAULT_RETENTION_S = 3600.0  # delivered batches kept in the buffer (for `buffer show` and audits)
# Quarantine flood control (gateway/buffer/quarantine.py): rejects stored at most this much,
# per device (0 = no per-device cap) and in total (always capped); beyond, counted only.
DEFAULT_MAX_QUARANTINE_ROWS_PER_DEVICE = 1000
DEFAULT_MAX_QUARANTINE_BYTES_PER_DEVICE = 8 * 1024 * 1024
DEFAULT_MAX_QUARANTINE_ROWS = 20_000
DEFAULT_MAX_QUARANTINE_BYTES = 128 * 1024 * 1024


class SyncMode(StrEnum):
    """SQLite ``PRAGMA synchronous`` for the buffer: FULL survives power loss, NORMAL a crash."""

    FULL = "full"
    NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything ``edgetally gateway run`` needs. Constructing it checks values, does no I/O."""

    gateway_id: str
    edge: BrokerAddress
    cloud: BrokerAddress
    buffer_path: Path
    keys_dir: Path  # the first election's; recorded in the buffer for the inspection commands
    window: int = 256
    max_payload_bytes: int = DEFAULT_MAX_BYTES
    sync: SyncMode = SyncMode.FULL
    ready_file: Path | None = None
    # Keys directories of the other elections whose devices this gateway carries (--keys again).
    more_keys_dirs: tuple[Path, ...] = ()
    delivered_retention_s: float = 3600.0  # delivered rows kept this long, then purged
    max_buffer_batches: int = 0  # outbound rows (pending+inflight) quota; 0 = none
    max_buffer_bytes: int = 0  # outbound payload bytes quota; 0 = none
    max_quarantine_rows_per_device: int = DEFAULT_MAX_QUARANTINE_ROWS_PER_DEVICE  # 0 = no per-device cap
    max_quarantine_bytes_per_device: int = DEFAULT_MAX_QUARANTINE_BYTES_PER_DEVICE  # 0 = no per-device cap
    max_quarantine_rows: int = DEFAULT_MAX_QUARANTINE_ROWS  # total; at least 1
    max_quarantine_bytes: int = DEFAULT_MAX_QUARANTINE_BYTES  # total; at least 1
    keepalive_s: int = DEFAULT_KEEPALIVE_S  # MQTT keepalive of both links; a dead link is noticed in ~2x
    bundle_max: int = DEFAULT_BUNDLE_MAX  # envelopes per uplink message; 1 = no bundling
    compress: bool = False  # zlib-compress uplink bundles
    status_interval_s: float = DEFAULT_STATUS_INTERVAL_S  # gateway status every this many seconds
    tls: ClientTls | None = None  # the gateway's certificate, for the links that are mqtts://
    # Other nodes of the cloud broker's cluster (--cloud A,B,C): a failed connection tries the next.
    cloud_alternates: tuple[BrokerAddress, ...] = ()
    # Tuning without a command-line option (tests and issue 3 may set them).
    ingress_queue_size: int = 2 * BROKER_MAX_INFLIGHT + 48
    group_max: int = 500  # messages per buffer transaction (group commit)
    verify_threads: int = 2  # Ed25519 verification releases the GIL: use both cores
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 5.0
    drain_grace_s: float = 2.0  # at stop: how long to wait for outstanding cloud PUBACKs

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.gateway_id):
            raise ConfigError(
                f"gateway id {self.gateway_id!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
            )
        tls_links = [name for name, a in (("--edge", self.edge), ("--cloud", self.cloud)) if a.tls]
        if tls_links and self.tls is None:
            raise ConfigError(f"{' and '.join(tls_links)} mqtts:// needs --pki DIR (the gateway's TLS certificate)")
        if self.tls is not None and not tls_links:
            raise ConfigError("--pki given but both brokers are plain mqtt://; use mqtts:// URLs")
        if not 1 <= self.window <= MAX_WINDOW:
            raise ConfigError(f"--window must be between 1 and {MAX_WINDOW}, got {self.window}")
        if self.delivered_retention_s < 0:
            raise ConfigError(
                f"--keep-delivered must be 0 or more seconds, got {self.delivered_retention_s}"
            )
        if self.max_payload_bytes < 1:
            raise ConfigError(f"--max-payload-bytes must be positive, got {self.max_payload_bytes}")
        if self.max_buffer_batches < 0 or self.max_buffer_bytes < 0:
            raise ConfigError("--max-buffer-batches and --max-buffer-bytes must be 0 (no limit) or more")
        if self.max_quarantine_rows_per_device < 0 or self.max_quarantine_bytes_per_device < 0:
            raise ConfigError(
                "--max-quarantine-rows-per-device and --max-quarantine-bytes-per-device must be"
                " 0 (no per-device cap) or more"
            )
        if self.max_quarantine_rows < 1 or self.max_quarantine_bytes < 1:
            raise ConfigError(
                "--max-quarantine-rows and --max-quarantine-bytes must be at least 1: the"
                " quarantine as a whole is always capped"
            )
        if self.ingress_queue_size < 2 * BROKER_MAX_INFLIGHT:
            raise ConfigError(
                f"ingress queue size must be at least {2 * BROKER_MAX_INFLIGHT}, got {self.ingress_queue_size}"
            )
        if self.group_max < 1 or self.keepalive_s < 1 or self.verify_threads < 1:
            raise ConfigError("group size and keepalive must be positive")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ConfigError("backoff must satisfy 0 < initial <= max")
        if not 1 <= self.bundle_max <= MAX_BUNDLE:
            raise ConfigError(f"--bundle-max must be between 1 and {MAX_BUNDLE}, got {self.bundle_max}")
        if not 0.1 <= self.status_interval_s <= 3600:
            raise ConfigError(
                f"--status-interval must be between 0.1 and 3600 seconds, got {self.status_interval_s}"
            )

    @classmethod
    def from_options(
        cls,
        *,
        edge: str,
        cloud: str,
        buffer: Path,
        keys: Path | Sequence[Path],
        gateway_id: str = "gw1",
        window: int = 256,
        max_payload_bytes: int = DEFAULT_MAX_BYTES,
        sync: SyncMode = SyncMode.FULL,
        ready_file: Path | None = None,
        delivered_retention_s: float = 3600.0,
        max_buffer_batches: int = 0,
        max_buffer_bytes: int = 0,
        max_quarantine_rows_per_device: int = DEFAULT_MAX_QUARANTINE_ROWS_PER_DEVICE,
        max_quarantine_bytes_per_device: int = DEFAULT_MAX_QUARANTINE_BYTES_PER_DEVICE,
        max_quarantine_rows: int = DEFAULT_MAX_QUARANTINE_ROWS,
        max_quarantine_bytes: int = DEFAULT_MAX_QUARANTINE_BYTES,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        bundle_max: int = DEFAULT_BUNDLE_MAX,
        compress: bool = False,
        status_interval_s: float = DEFAULT_STATUS_INTERVAL_S,
        pki: Path | None = None,
    ) -> GatewayConfig:
        """Build from command-line strings; bad values raise :class:`ConfigError`."""
        return cls(
            gateway_id=gateway_id,
            edge=_broker(edge, "--edge"),
            cloud=_brokers(cloud, "--cloud")[0],
            buffer_path=buffer,
            keys_dir=keys if isinstance(keys, Path) else _first(keys),
            more_keys_dirs=() if isinstance(keys, Path) else tuple(keys[1:]),
            window=window,
            max_payload_bytes=max_payload_bytes,
            sync=sync,
            cloud_alternates=_brokers(cloud, "--cloud")[1:],
            ready_file=ready_file,
            delivered_retention_s=delivered_retention_s,
            max_buffer_batches=max_buffer_batches,
            max_buffer_bytes=max_buffer_bytes,
            max_quarantine_rows_per_device=max_quarantine_rows_per_device,
            max_quarantine_bytes_per_device=max_quarantine_bytes_per_device,
            max_quarantine_rows=max_quarantine_rows,
            max_quarantine_bytes=max_quarantine_bytes,
            keepalive_s=keepalive_s,
            bundle_max=bundle_max,
            compress=compress,
            status_interval_s=status_interval_s,
            tls=None if pki is None else client_tls(pki, Role.GATEWAY, gateway_id),
        )

    @property
    def keys_dirs(self) -> tuple[Path, ...]:
        """Every election's keys directory, the recorded one first."""
        return (self.keys_dir, *self.more_keys_dirs)

    @property
    def edge_client_id(self) -> str:
        return f"edgetally-gw-{self.gateway_id}"

    @property
    def cloud_client_id(self) -> str:
        return f"edgetally-gw-{self.gateway_id}-uplink"


def _brokers(urls: str, option: str) -> tuple[BrokerAddress, ...]:
    try:
        return parse_broker_urls(urls)
    except ProtocolError as exc:
        raise ConfigError(f"{option}: {exc}") from exc


def _broker(url: str, option: str) -> BrokerAddress:
    try:
        return parse_broker_url(url)
    except ProtocolError as exc:
        raise ConfigError(f"{option}: {exc}") from exc


def _first(keys: Sequence[Path]) -> Path:
    if not keys:
        raise ConfigError("--keys: give the keys directory of at least one election")
    return keys[0]
