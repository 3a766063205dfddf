"""The cloud worker's configuration: built once by the CLI, frozen, passed to everything."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cloud._exceptions import ConfigError
from protocol import (
    BATCH_FILTER,
    DEFAULT_MAX_BYTES,
    GATEWAY_BUNDLE_FILTER,
    GATEWAY_STATUS_FILTER,
    BrokerAddress,
)
from protocol.election import ID_PATTERN
from protocol.tls import ClientTls

DEFAULT_DB_URL = "sqlite:///edgetally.db"
DEFAULT_CLOUD_ID = "cloud1"
DEFAULT_RECEIPT_INTERVAL_S = 0.25  # the longest a device waits for a receipt once its batch is committed
SQLITE_BUSY_TIMEOUT_MS = 5_000  # then DatabaseUnavailable: the worker retries with backoff
DEFAULT_OUTPUT_LIMIT = 100  # rows `cloud alerts`, `stored` and `dead-letters` show by default


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """Everything ``edgetally cloud run`` needs. Validates values; does no I/O."""

    broker: BrokerAddress
    db_url: str
    # Keys directories of the elections served from the start (more may be stored in the
    # database, cloud/elections.py); empty: only what the database holds.
    keys_dirs: tuple[Path, ...]
    cloud_id: str = DEFAULT_CLOUD_ID
    max_payload_bytes: int = DEFAULT_MAX_BYTES
    ready_file: Path | None = None
    # Shared subscription group (``$share/GROUP/...``): several workers split the batches and
    # bundles between them. None: this worker subscribes alone.
    share_group: str | None = None
    # clean_session=True: the broker forgets this worker's session when it disconnects (what
    # it held unacknowledged is dropped, device resends bring it back) and, with a share
    # group, stops routing a share of the traffic to it at once. False: a persistent session
    # that keeps queueing this worker's share until a worker with the same --id returns.
    # See docs/cloud-scaleout.md for what Mosquitto 2.0 does in each case.
    clean_session: bool = False
    # Messages received and not yet committed. Mosquitto sends at most max_inflight_messages
    # (1000) unacknowledged QoS 1 messages to one client, so this holds every one of them plus
    # the redeliveries of a reconnect. When full, the MQTT thread blocks (backpressure to the
    # broker, which keeps the messages); nothing is dropped while the worker runs.
    queue_size: int = 4096
    # Messages per database transaction (group commit).
    group_max: int = 500
    # Threads verifying the next group while the current one commits (Ed25519 verification
    # releases the GIL, so they use the other cores).
    verify_threads: int = 2
    keepalive_s: int = 30
    # Reconnect and database-retry backoff: capped exponential with full jitter.
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    # How long a graceful stop waits for the broker to acknowledge receipts already sent,
    # and, with a clean session, for what was already routed to this worker to be committed.
    drain_timeout_s: float = 5.0
    # Repair requests (cloud/ledger/repairs.py): a seq gap is first requested once it has stayed open
    # repair_grace_s, then at most once per repair_interval_s per device (doubling, capped).
    repair_interval_s: float = 2.0
    repair_grace_s: float = 0.5
    # Receipts (cloud/worker/receipts.py): at most one per device per receipt_interval_s, always the
    # latest; 0 publishes every receipt right after the commit that produced it.
    receipt_interval_s: float = DEFAULT_RECEIPT_INTERVAL_S
    # The worker's TLS certificate (its common name cloud-{id} is its MQTT identity); required
    # for an mqtts:// broker, refused for a plain one.
    tls: ClientTls | None = None
    # A NATS JetStream cloud broker (edgetally/nats.py): batches and bundles come from its shared
    # durable consumers at these nats:// (or tls://) addresses instead of MQTT subscriptions;
    # the MQTT connection keeps gateway statuses, receipts, repairs and republishes.
    jetstream: tuple[str, ...] = ()
    # Other MQTT nodes of the same cluster (--broker A,B,C): a failed connection tries the next.
    broker_alternates: tuple[BrokerAddress, ...] = ()
    # How long a pulled message may stay unacknowledged before JetStream gives it to another
    # worker. None: an existing consumer keeps its own (10 s where this worker creates it); a value
    # is set on the shared consumers, existing or not (the whole group's, so say it once).
    ack_wait_s: float | None = None

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.cloud_id):
            raise ConfigError(
                f"--id {self.cloud_id!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
            )
        if self.broker.tls and self.tls is None:
            raise ConfigError("--broker mqtts:// needs --pki DIR (the worker's TLS certificate)")
        if self.tls is not None and not self.broker.tls:
            raise ConfigError("--pki given but the broker is plain mqtt://; use an mqtts:// URL")
        if self.max_payload_bytes < 1:
            raise ConfigError(f"--max-payload-bytes must be positive, got {self.max_payload_bytes}")
        if self.queue_size < 1 or self.group_max < 1 or self.verify_threads < 1:
            raise ConfigError("queue size, group size and verify threads must be positive")
        if self.share_group is not None and not ID_PATTERN.match(self.share_group):
            raise ConfigError(
                f"--share {self.share_group!r} must be 1-64 characters of A-Z a-z 0-9 _ . -"
            )
        if self.repair_interval_s <= 0 or self.repair_grace_s < 0:
            raise ConfigError("repair interval must be positive and repair grace not negative")
        if not 0 <= self.receipt_interval_s < math.inf:
            raise ConfigError(
                f"--receipt-interval must be a number of seconds >= 0, got {self.receipt_interval_s}"
            )
        if self.jetstream and self.share_group is not None:
            raise ConfigError("--jetstream and --share are two ways to share the load: give one")
        for url in self.jetstream:
            scheme = url.split("://", 1)[0]
            if scheme not in ("nats", "tls") or "://" not in url:
                raise ConfigError(f"--jetstream {url!r} must be a nats:// or tls:// address")
            if (scheme == "tls") != (self.tls is not None):
                raise ConfigError(f"--jetstream {url!r}: tls:// goes with --pki, nats:// without")
        if self.ack_wait_s is not None and self.ack_wait_s <= 0:
            raise ConfigError(f"--ack-wait must be positive, got {self.ack_wait_s}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ConfigError("backoff must satisfy 0 < initial <= max")

    @property
    def client_id(self) -> str:
        return f"edgetally-cloud-{self.cloud_id}"

    @property
    def shared_filters(self) -> list[str]:
        """Batches and gateway bundles: shared with the group's other workers, if any."""
        if self.jetstream:
            return []  # from JetStream (cloud/worker/jetstream.py)
        prefix = f"$share/{self.share_group}/" if self.share_group is not None else ""
        return [prefix + BATCH_FILTER, prefix + GATEWAY_BUNDLE_FILTER]

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """Every subscription, QoS 1. Gateway statuses are not shared: every worker upserts
        each one (a few per gateway per minute; cloud/worker/status.py keeps the latest)."""
        return [(topic, 1) for topic in (*self.shared_filters, GATEWAY_STATUS_FILTER)]
