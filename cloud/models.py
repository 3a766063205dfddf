"""The cloud's tables (SQLAlchemy Core). The schema itself is made only by the Alembic
migrations in cloud/migrations; these definitions are what the code reads and writes, and a
test checks that they agree with what the migrations build.

    elections         the election definition (registry.election.to_mapping()), so that
                      `results` needs only the database
    ledger            every accepted batch, once: key (election, device, seq)
    tallies           votes per (election, contest, choice, precinct)
    precinct_ballots  ballots and accepted batches per (election, precinct)
    devices           per device: contiguous seq and hash (what receipts say), final seq,
                      accepted ballots (what the rules' device_ballots() reads)
    rejections        every refused message, with reason, detail, topic and exact payload
    gateway_status    the latest status of each gateway (protocol/gateway_status.py), upserted
    settings          named settings stored with the data (the trend window width)
    window_tallies    votes per (election, window start, precinct, contest, choice), on issued_at
    window_ballots    ballots and accepted batches per (election, window start, precinct)
    alerts            rows of the rules' alert actions (cloud/engine/actions.py), exactly-once per message
    stored_rows       rows of the rules' store actions, one physical table keyed by table_name
    dead_letters      rows whose action failed, and their error action too (or had none)
    repairs           seq gaps seen in a device's chain: detected, requested, repaired (or open)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

ID = String(64)  # protocol ids are 1-64 characters
HASH = String(64)  # lower-case hex SHA-256

# An autoincrement key that is BIGINT on PostgreSQL and the rowid alias on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect.

    Stored as a naive UTC timestamp (SQLite has no time zones; PostgreSQL's ``timestamp``).
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC datetime is required")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


elections = Table(
    "elections",
    metadata,
    Column("election", ID, primary_key=True),
    Column("name", Text, nullable=False),
    Column("definition", Text, nullable=False),  # canonical JSON of Election.to_mapping()
    Column("stored_at", UTCDateTime, nullable=False),
    Column("registry", Text, nullable=True),  # canonical JSON of the registry (cloud/elections.py)
    Column("keys_dir", Text, nullable=True),  # where the workers find its cloud-signing.key
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("election", ID, nullable=False),
    Column("device", ID, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("precinct", ID, nullable=False),
    Column("body", Text, nullable=False),  # the exact signed body string
    Column("sig", String(128), nullable=False),  # base64, as in the envelope
    Column("kid", String(64), nullable=False),
    Column("body_hash", HASH, nullable=False),
    Column("prev", HASH, nullable=False),
    Column("ballots", Integer, nullable=False),
    Column("final", Boolean, nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("duplicates", Integer, nullable=False, server_default="0"),
    Column("last_duplicate_at", UTCDateTime, nullable=True),
    UniqueConstraint("election", "device", "seq"),
)

tallies = Table(
    "tallies",
    metadata,
    Column("election", ID, primary_key=True),
    Column("contest", ID, primary_key=True),
    Column("choice", ID, primary_key=True),
    Column("precinct", ID, primary_key=True),
    Column("votes", BigInteger, nullable=False),
)

precinct_ballots = Table(
    "precinct_ballots",
    metadata,
    Column("election", ID, primary_key=True),
    Column("precinct", ID, primary_key=True),
    Column("ballots", BigInteger, nullable=False),
    Column("batches", Integer, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("election", ID, primary_key=True),
    Column("device", ID, primary_key=True),
    Column("precinct", ID, nullable=False),
    Column("contiguous_seq", Integer, nullable=False, server_default="0"),
    Column("contiguous_hash", HASH, nullable=False),
    Column("final_seq", Integer, nullable=True),
    Column("max_seq", Integer, nullable=False, server_default="0"),  # highest seq held
    Column("batches", Integer, nullable=False, server_default="0"),  # accepted batches
    Column("duplicates", Integer, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=True),
    Column("ballots", BigInteger, nullable=False, server_default="0"),  # accepted, cumulative
    Column("source", String(16), nullable=False, server_default="tabulator"),  # or manual (0006)
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # Filled when the body could be parsed far enough to name them.
    Column("election", ID, nullable=True),
    Column("device", ID, nullable=True),
    Column("seq", Integer, nullable=True),
    Column("topic", Text, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("payload_hash", HASH, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Index(None, "reason"),
    Index(None, "election", "device", "seq"),
)

gateway_status = Table(
    "gateway_status",
    metadata,
    Column("gateway", ID, primary_key=True),
    Column("state", String(16), nullable=False),  # online / offline
    Column("uplink", String(8), nullable=True),  # up / down; null: never reported
    Column("edge", String(8), nullable=True),
    Column("pending", BigInteger, nullable=True),
    Column("inflight", BigInteger, nullable=True),
    Column("delivered", BigInteger, nullable=True),
    Column("quarantined", BigInteger, nullable=True),
    Column("oldest_pending_age_s", Float, nullable=True),
    Column("ingress_rate", Float, nullable=True),  # batches/s over rate_interval_s
    Column("egress_rate", Float, nullable=True),
    Column("rate_interval_s", Float, nullable=True),
    Column("status_at", UTCDateTime, nullable=True),  # the gateway's "at" (null in a last will)
    Column("started_at", UTCDateTime, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(32), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),  # when the cloud stored it
    Column("status", Text, nullable=False),  # the status message exactly as received
)

settings = Table(
    "settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Tumbling windows of the signed ``issued_at`` (cloud/results/windows.py); the width is the setting
# ``window_seconds``, so every row of these tables has the same width.
window_tallies = Table(
    "window_tallies",
    metadata,
    Column("election", ID, primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True),
    Column("precinct", ID, primary_key=True),
    Column("contest", ID, primary_key=True),
    Column("choice", ID, primary_key=True),
    Column("votes", BigInteger, nullable=False),
)

window_ballots = Table(
    "window_ballots",
    metadata,
    Column("election", ID, primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True),
    Column("precinct", ID, primary_key=True),
    Column("ballots", BigInteger, nullable=False),
    Column("batches", Integer, nullable=False),
)

# The rules engine's output (cloud/engine/actions.py). ``dedup_key`` (SHA-256 of rule, action, the
# message's body hash, its ledger outcome and the row's index) makes a redelivered message add
# nothing; ``row`` is the rule's row as JSON.
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("rule", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("election", ID, nullable=True),
    Column("device", ID, nullable=True),
    Column("seq", Integer, nullable=True),
    Column("topic", Text, nullable=False),
    Column("row", Text, nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
    Column("dedup_key", HASH, nullable=False),
    UniqueConstraint("dedup_key"),
    Index(None, "election", "device", "seq"),
)

stored_rows = Table(
    "stored_rows",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("table_name", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("election", ID, nullable=True),
    Column("device", ID, nullable=True),
    Column("seq", Integer, nullable=True),
    Column("topic", Text, nullable=False),
    Column("row", Text, nullable=False),
    Column("stored_at", UTCDateTime, nullable=False),
    Column("dedup_key", HASH, nullable=False),
    UniqueConstraint("dedup_key"),
    Index(None, "table_name", "id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("rule", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("election", ID, nullable=True),
    Column("device", ID, nullable=True),
    Column("seq", Integer, nullable=True),
    Column("topic", Text, nullable=False),
    Column("row", Text, nullable=False),
    Column("failed_at", UTCDateTime, nullable=False),
    Column("dedup_key", HASH, nullable=False),
    UniqueConstraint("dedup_key"),
)

repairs = Table(
    "repairs",
    metadata,
    Column("election", ID, primary_key=True),
    Column("device", ID, primary_key=True),
    Column("first_seq", Integer, primary_key=True),
    Column("last_seq", Integer, primary_key=True),
    Column("detected_at", UTCDateTime, nullable=False),
    Column("requested_at", UTCDateTime, nullable=True),  # first repair request published
    Column("requests", Integer, nullable=False, server_default="0"),
    Column("repaired_at", UTCDateTime, nullable=True),  # NULL: still open
)
