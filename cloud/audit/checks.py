"""The audit's passes over the database (see cloud/audit/audit.py for what each check holds).

Pass 1 streams the ledger in (device, seq) order: signatures, columns, hash chain, seq gaps,
final batches and totals, and the per-device and per-precinct sums, holding one device's state
at a time. The stored tallies and precinct ballots (per precinct: small) are then compared with
those sums. Pass 2 streams the ledger in ``issued_at`` order (cloud/results/windows.py) alongside the
stored windows, each in window order, and compares them one window at a time.

The module stays whole (some 500 lines): it is one :class:`LedgerAudit` whose passes fill
and then compare the same sums (tallies, precincts, missing seqs, results per check); each pass
reads best beside the state it builds and the comparisons that consume it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from cloud import models
from cloud.audit.report import CHECKS, AuditReport, CheckResult, Discrepancy
from cloud.audit.sources import PrecinctSources
from cloud.results.windows import WindowSums, ledger_windows, stored_width
from protocol import (
    DEFAULT_MAX_BYTES,
    GENESIS_HASH,
    BatchBody,
    Election,
    ProtocolError,
    Registry,
    canonical,
    parse_body,
    sha256_hex,
    verify,
)
from protocol.election import format_timestamp, parse_timestamp

_YIELD_PER = 1000


@dataclass
class _Device:
    """One device's ledger rows, as they stream past in seq order."""

    device: str
    rows: int = 0
    duplicates: int = 0
    max_seq: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    contiguous_seq: int = 0
    contiguous_hash: str = GENESIS_HASH
    final_seq: int | None = None
    final_body: BatchBody | None = None
    ballots: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


class LedgerAudit:
    """One audit of one election, inside the caller's read transaction. Use :meth:`run` once."""

    def __init__(
        self, conn: Connection, election: Election, registry: Registry, limit: int
    ) -> None:
        self.conn = conn
        self.election = election
        self.registry = registry
        self.limit = limit
        self.results = {name: CheckResult(name) for name in CHECKS}
        self.tallies: dict[tuple[str, str, str], int] = {}
        self.precincts: dict[str, list[int]] = {}  # precinct -> [ballots, batches]
        self.missing: dict[str, list[str]] = {}
        self.no_final: list[str] = []
        self.rows = 0
        self.sources = PrecinctSources()

    def fail(self, check: str, detail: str, **where: Any) -> None:
        result = self.results[check]
        result.failures += 1
        if self.limit <= 0 or len(result.listed) < self.limit:
            result.listed.append(Discrepancy(check, detail, **where))

    def run(self) -> AuditReport:
        width = stored_width(self.conn)
        devices = self._stored_devices()
        seen = self._ledger_pass(devices)
        for name in self.election.devices:
            if name not in seen:
                self._close(_Device(name), devices.pop(name, None))
        for name, row in sorted(devices.items()):  # in the devices table, not the election
            if name not in seen:
                self._close(_Device(name), row)
        self._compare_tallies()
        self._compare_precincts()
        self.results["sources"].checked += len({p for p, _ in self.sources.sums})
        for precinct, detail in self.sources.both():
            self.fail("sources", detail, precinct=precinct)
        self._compare_windows(width)
        return AuditReport(
            election=self.election.id,
            ledger_rows=self.rows,
            window_seconds=width,
            checks=tuple(self.results.values()),
            missing_seqs=dict(sorted(self.missing.items())),
            devices_without_final=sorted(self.no_final),
            repairs=self._repairs(),
        )

    def _repairs(self) -> list[dict[str, Any]]:
        """The gaps recorded in ``repairs`` (at most ``limit``, 0: all), repaired or open."""
        r = models.repairs.c
        query = (
            select(r.device, r.first_seq, r.last_seq, r.detected_at, r.requested_at, r.requests, r.repaired_at)
            .where(r.election == self.election.id)
            .order_by(r.device, r.first_seq, r.last_seq)
        )
        if self.limit > 0:
            query = query.limit(self.limit)

        def stamp(value: datetime | None) -> str | None:
            return None if value is None else format_timestamp(value)

        return [
            {
                "device": device,
                "seqs": f"{first}-{last}" if first != last else str(first),
                "state": "open" if repaired_at is None else "repaired",
                "detected_at": stamp(detected_at),
                "requested_at": stamp(requested_at),
                "requests": requests,
                "repaired_at": stamp(repaired_at),
            }
            for device, first, last, detected_at, requested_at, requests, repaired_at in self.conn.execute(query)
        ]

    def _stored_devices(self) -> dict[str, Any]:
        d = models.devices.c
        rows = self.conn.execute(select(models.devices).where(d.election == self.election.id))
        return {row.device: row for row in rows}

    # -- pass 1: the ledger in (device, seq) order ---------------------------------------
    def _ledger_pass(self, devices: dict[str, Any]) -> set[str]:
        lc = models.ledger.c
        query = (
            select(
                lc.election,
                lc.device,
                lc.seq,
                lc.precinct,
                lc.body,
                lc.sig,
                lc.kid,
                lc.body_hash,
                lc.prev,
                lc.ballots,
                lc.final,
                lc.issued_at,
                lc.duplicates,
            )
            .where(lc.election == self.election.id)
            .order_by(lc.device, lc.seq)
        )
        seen: set[str] = set()
        current: _Device | None = None
        for row in self.conn.execute(query.execution_options(yield_per=_YIELD_PER)):
            if current is None or row.device != current.device:
                if current is not None:
                    self._close(current, devices.pop(current.device, None))
                current = _Device(row.device)
                seen.add(row.device)
            self._row(current, row)
        if current is not None:
            self._close(current, devices.pop(current.device, None))
        return seen

    def _row(self, dev: _Device, row: Any) -> None:
        self.rows += 1
        device, seq = row.device, row.seq
        raw = row.body.encode("utf-8")
        actual = sha256_hex(raw)
        body = self._verify(row, raw)
        self._columns(row, body)
        # hash chain
        chain = self.results["hash chain"]
        chain.checked += 1
        if row.body_hash != actual:
            self.fail(
                "hash chain",
                f"body_hash column {row.body_hash} is not the SHA-256 of the body ({actual})",
                device=device,
                seq=seq,
            )
        prev = body.prev if body is not None else row.prev
        if seq == 1 and prev != GENESIS_HASH:
            self.fail("hash chain", f"seq 1 has prev {prev}, not 64 zeros", device=device, seq=seq)
        elif seq > 1 and dev.last_seq == seq - 1 and prev != dev.last_hash:
            self.fail(
                "hash chain",
                f"prev {prev} is not the hash {dev.last_hash} of seq {seq - 1}",
                device=device,
                seq=seq,
            )
        # seq gaps
        if seq > dev.last_seq + 1:
            first, last = dev.last_seq + 1, seq - 1
            span = str(first) if first == last else f"{first}-{last}"
            dev.missing.append(span)
            self.fail("seq gaps", f"missing seq {span}", device=device, seq=first)
        # final batches
        final = body.final if body is not None else bool(row.final)
        if dev.final_seq is not None:
            self.fail(
                "final batches",
                f"seq {seq} is held after the final batch (seq {dev.final_seq})",
                device=device,
                seq=seq,
            )
        elif final:
            dev.final_seq, dev.final_body = seq, body
        # the device's state and sums
        dev.rows += 1
        dev.duplicates += int(row.duplicates)
        dev.max_seq = max(dev.max_seq, seq)
        if seq == dev.contiguous_seq + 1:
            dev.contiguous_seq, dev.contiguous_hash = seq, actual
        dev.last_seq, dev.last_hash = seq, actual
        precinct = body.precinct if body is not None else row.precinct
        ballots = body.ballots if body is not None else int(row.ballots)
        dev.ballots += ballots
        entry = self.precincts.setdefault(precinct, [0, 0])
        entry[0] += ballots
        entry[1] += 1
        if body is not None:
            known = self.registry.devices.get(device)
            self.sources.add(known.source if known is not None else "tabulator", body)
            for contest, choices in body.counts.items():
                for choice, n in choices.items():
                    dev.counts[(contest, choice)] = dev.counts.get((contest, choice), 0) + n
                    key = (precinct, contest, choice)
                    self.tallies[key] = self.tallies.get(key, 0) + n

    def _verify(self, row: Any, raw: bytes) -> BatchBody | None:
        """The row's body after the signature check; parsed anyway if only the check fails."""
        self.results["signatures"].checked += 1
        payload = canonical.dumps({"body": row.body, "kid": row.kid, "sig": row.sig})
        try:
            return verify(
                payload,
                self.registry,
                max_bytes=max(len(payload), DEFAULT_MAX_BYTES),
                topic_device=row.device,
                topic_election=row.election,
            ).body
        except ProtocolError as err:
            self.fail("signatures", f"{err.reason}: {err}", device=row.device, seq=row.seq)
        try:
            return parse_body(raw)
        except ProtocolError:
            return None

    def _columns(self, row: Any, body: BatchBody | None) -> None:
        self.results["columns"].checked += 1
        if body is None:
            self.fail(
                "columns",
                "the body does not parse: its columns cannot be checked",
                device=row.device,
                seq=row.seq,
            )
            return
        expected = {
            "election": body.election,
            "device": body.device,
            "seq": body.seq,
            "precinct": body.precinct,
            "prev": body.prev,
            "ballots": body.ballots,
            "final": body.final,
            "issued_at": parse_timestamp(body.issued_at, "issued_at"),
        }
        wrong = [
            f"{name} {_shown(getattr(row, name))} (body: {_shown(value)})"
            for name, value in expected.items()
            if getattr(row, name) != value
        ]
        if wrong:
            self.fail(
                "columns",
                "columns differ from the signed body: " + ", ".join(wrong),
                device=row.device,
                seq=row.seq,
            )

    def _close(self, dev: _Device, stored: Any | None) -> None:
        """Checks that need all of a device's rows."""
        name = dev.device
        if dev.missing:
            self.missing[name] = dev.missing
        self.results["seq gaps"].checked += 1
        self.results["final batches"].checked += 1
        known = self.registry.devices.get(name)
        if known is not None and known.source == "manual":
            pass  # a manual source sends sheets and corrections: no final batch (protocol.md 16)
        elif dev.final_seq is None:
            self.no_final.append(name)
            what = f"highest seq held: {dev.max_seq}" if dev.rows else "it never sent a batch"
            self.fail("final batches", f"no final batch ({what})", device=name)
        elif dev.final_body is not None and dev.final_body.totals is not None:
            self._totals(dev, dev.final_body)
        self._device_state(dev, stored)

    def _totals(self, dev: _Device, final: BatchBody) -> None:
        assert final.totals is not None
        result = self.results["final totals"]
        result.checked += 1
        gaps = f" (seq {', '.join(dev.missing)} missing)" if dev.missing else ""
        seq = final.seq
        if dev.ballots != final.totals.ballots:
            self.fail(
                "final totals",
                f"totals say {final.totals.ballots} ballots, the deltas of seq 1..{dev.max_seq}"
                f" add up to {dev.ballots}{gaps}",
                device=dev.device,
                seq=seq,
            )
        totals = {
            (contest, choice): n
            for contest, choices in final.totals.counts.items()
            for choice, n in choices.items()
        }
        for key in sorted({*totals, *dev.counts}):
            said, summed = totals.get(key, 0), dev.counts.get(key, 0)
            if said != summed:
                self.fail(
                    "final totals",
                    f"totals say {said} votes, the deltas add up to {summed}{gaps}",
                    device=dev.device,
                    seq=seq,
                    contest=key[0],
                    choice=key[1],
                )

    def _device_state(self, dev: _Device, stored: Any | None) -> None:
        self.results["device state"].checked += 1
        expected = {
            "contiguous_seq": dev.contiguous_seq,
            "contiguous_hash": dev.contiguous_hash,
            "final_seq": dev.final_seq,
            "max_seq": dev.max_seq,
            "batches": dev.rows,
            "duplicates": dev.duplicates,
        }
        if stored is None:
            if dev.rows:
                self.fail("device state", "the devices table has no row", device=dev.device)
            return
        wrong = [
            f"{name} {_shown(getattr(stored, name))} (ledger: {_shown(value)})"
            for name, value in expected.items()
            if getattr(stored, name) != value
        ]
        if wrong:
            self.fail("device state", "stored " + ", ".join(wrong), device=dev.device)

    # -- the stored per-precinct figures --------------------------------------------------
    def _compare_tallies(self) -> None:
        t = models.tallies.c
        stored = {
            (row.precinct, row.contest, row.choice): int(row.votes)
            for row in self.conn.execute(
                select(t.precinct, t.contest, t.choice, t.votes).where(
                    t.election == self.election.id
                )
            )
        }
        result = self.results["tallies"]
        for key in sorted({*stored, *self.tallies}):
            result.checked += 1
            have, want = stored.get(key, 0), self.tallies.get(key, 0)
            if have != want:
                precinct, contest, choice = key
                self.fail(
                    "tallies",
                    f"stored {have:,} votes, the ledger adds up to {want:,}",
                    precinct=precinct,
                    contest=contest,
                    choice=choice,
                )

    def _compare_precincts(self) -> None:
        p = models.precinct_ballots.c
        stored = {
            row.precinct: (int(row.ballots), int(row.batches))
            for row in self.conn.execute(
                select(p.precinct, p.ballots, p.batches).where(p.election == self.election.id)
            )
        }
        result = self.results["precinct ballots"]
        for precinct in sorted({*stored, *self.precincts}):
            result.checked += 1
            have = stored.get(precinct, (0, 0))
            want = tuple(self.precincts.get(precinct, (0, 0)))
            if have != want:
                self.fail(
                    "precinct ballots",
                    f"stored {have[0]:,} ballots in {have[1]:,} batches, the ledger has"
                    f" {want[0]:,} in {want[1]:,}",
                    precinct=precinct,
                )

    # -- pass 2: windows, merged window by window ----------------------------------------
    def _compare_windows(self, width: int) -> None:
        result = self.results["windows"]
        recomputed = (
            (s.start, s)
            for s in ledger_windows(self.conn, self.election.id, width, skip_unreadable=True)
        )
        for start, sums, votes, ballots in _merge(
            recomputed, self._stored_window_votes(), self._stored_window_ballots()
        ):
            result.checked += 1
            window = format_timestamp(start)
            want_votes = sums.votes if sums is not None else {}
            want_ballots = sums.ballots if sums is not None else {}
            have_votes = votes or {}
            have_ballots = ballots or {}
            if start.timestamp() % width:
                self.fail(
                    "windows", f"window does not start on a multiple of {width} s", window=window
                )
            for key in sorted({*have_votes, *want_votes}):
                have, want = have_votes.get(key, 0), want_votes.get(key, 0)
                if have != want:
                    self.fail(
                        "windows",
                        f"stored {have:,} votes, the ledger adds up to {want:,}",
                        window=window,
                        precinct=key[0],
                        contest=key[1],
                        choice=key[2],
                    )
            for precinct in sorted({*have_ballots, *want_ballots}):
                have_b = tuple(have_ballots.get(precinct, (0, 0)))
                want_b = tuple(want_ballots.get(precinct, (0, 0)))
                if have_b != want_b:
                    self.fail(
                        "windows",
                        f"stored {have_b[0]:,} ballots in {have_b[1]:,} batches, the ledger"
                        f" has {want_b[0]:,} in {want_b[1]:,}",
                        window=window,
                        precinct=precinct,
                    )

    def _stored_window_votes(self) -> Iterator[tuple[datetime, dict[tuple[str, str, str], int]]]:
        t = models.window_tallies.c
        query = (
            select(t.window_start, t.precinct, t.contest, t.choice, t.votes)
            .where(t.election == self.election.id)
            .order_by(t.window_start)
        )
        rows = self.conn.execute(query.execution_options(yield_per=_YIELD_PER))
        return _grouped(rows, lambda r: ((r.precinct, r.contest, r.choice), int(r.votes)))

    def _stored_window_ballots(self) -> Iterator[tuple[datetime, dict[str, tuple[int, int]]]]:
        b = models.window_ballots.c
        query = (
            select(b.window_start, b.precinct, b.ballots, b.batches)
            .where(b.election == self.election.id)
            .order_by(b.window_start)
        )
        rows = self.conn.execute(query.execution_options(yield_per=_YIELD_PER))
        return _grouped(rows, lambda r: (r.precinct, (int(r.ballots), int(r.batches))))


def _grouped(rows: Iterator[Any], item: Any) -> Iterator[tuple[datetime, dict[Any, Any]]]:
    """(window_start, {key: value}) per window from rows ordered by window_start."""
    start: datetime | None = None
    group: dict[Any, Any] = {}
    for row in rows:
        if row.window_start != start:
            if start is not None:
                yield start, group
            start, group = row.window_start, {}
        key, value = item(row)
        group[key] = value
    if start is not None:
        yield start, group


def _merge(
    recomputed: Iterator[tuple[datetime, WindowSums]],
    votes: Iterator[tuple[datetime, dict[Any, Any]]],
    ballots: Iterator[tuple[datetime, dict[Any, Any]]],
) -> Iterator[tuple[datetime, WindowSums | None, dict[Any, Any] | None, dict[Any, Any] | None]]:
    """Align three streams ordered by window start: one tuple per start in any of them."""
    streams = [recomputed, votes, ballots]
    heads: list[tuple[datetime, Any] | None] = [next(s, None) for s in streams]
    while any(h is not None for h in heads):
        start = min(h[0] for h in heads if h is not None)
        out: list[Any] = [None, None, None]
        for i, head in enumerate(heads):
            if head is not None and head[0] == start:
                out[i] = head[1]
                heads[i] = next(streams[i], None)
        yield start, out[0], out[1], out[2]


def _shown(value: object) -> str:
    if isinstance(value, datetime):
        return format_timestamp(value)
    return repr(value) if isinstance(value, str) else str(value)
