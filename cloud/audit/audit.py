"""The audit: re-check everything the cloud stored against the ledger and the registry.

`edgetally cloud audit --db URL --keys DIR [--json]` reads the database in one snapshot and
runs these checks (:data:`CHECKS`); it passes only if every one holds:

    signatures        each ledger row's envelope, rebuilt from body, sig and kid, passes
                      protocol.verify against the registry (on the row's own device topic)
    columns           each row's columns (election, device, seq, precinct, prev, ballots, final,
                      issued_at) are the fields of its signed body
    hash chain        body_hash = SHA-256 of the body; prev of seq n = hash of body n-1 (seq 1:
                      64 zeros)
    seq gaps          no seq is missing below a device's highest held seq ("d: 11-12")
    final batches     every device of the election sent exactly one final batch, none after it
    final totals      each device's deltas (ballots, every contest and choice) add up to the
                      cumulative totals of its final batch
    tallies           stored votes per (precinct, contest, choice) = the ledger's sum
    precinct ballots  stored ballots and batches per precinct = the ledger's sum
    windows           stored windows (cloud/results/windows.py) = the ledger's rows by issued_at
    device state      the devices table (contiguous seq and hash, final seq, highest seq,
                      batches, duplicates) = the ledger

Every figure is recomputed from the bodies the ledger holds (``counts``, ``ballots``,
``totals``); a body that fails the signature check is still counted where it parses, so an
altered body shows under ``signatures`` and, as it no longer matches the tallies, there too.

Bounded memory: the ledger is streamed twice (``yield_per``), ordered by (device, seq) for the
per-row checks and by ``issued_at`` for the windows, which are compared window by window with
the stored ones; what is held is per device and per precinct, never per row. Discrepancies are
all counted; the first ``limit`` of each check (1,000 by default; 0: all) are kept for the
report. cloud/audit/checks.py runs the passes; cloud/audit/report.py holds the report.

Exit codes of the command: 0 when every check holds, 1 when one does not, and 1 with one line
on stderr when the audit cannot run (no keys, not a cloud database, another election).
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from cloud._exceptions import ConfigError
from cloud.audit.checks import LedgerAudit
from cloud.audit.report import (
    CHECKS,
    DEFAULT_LIMIT,
    AuditReport,
    CheckResult,
    Discrepancy,
    render_audit,
)
from cloud.results.results import read_snapshot, sa_query, stored_election
from protocol import Registry, canonical

__all__ = [
    "CHECKS",
    "DEFAULT_LIMIT",
    "AuditReport",
    "CheckResult",
    "Discrepancy",
    "render_audit",
    "run_audit",
]


def run_audit(
    engine: Engine,
    registry: Registry,
    election_id: str | None = None,
    *,
    limit: int = DEFAULT_LIMIT,
) -> AuditReport:
    """Audit the election (default: the registry's) against ``registry``, in one snapshot.

    Raises :class:`ConfigError` if the registry is not the stored election's.
    """
    with read_snapshot(engine, "auditing the cloud database") as conn:
        election = stored_election(sa_query(conn), election_id or registry.election.id)
        stored = canonical.dumps(election.to_mapping())
        if stored != canonical.dumps(registry.election.to_mapping()):
            raise ConfigError(
                f"the registry's definition of election {election.id!r} is not the one the"
                " database holds; audit with the keys directory the cloud ran with"
            )
        return LedgerAudit(conn, election, registry, limit).run()
