"""Several writers on one database, as several `cloud run --share` workers are: correctness rests
on the ledger's unique key and the device-row locks, never on which writer got a message.

Each writer has an engine (a connection pool) of its own, as a separate process would. The
race tests drive PostgreSQL into the exact situations concurrency produces (a unique-key race
lost, a deadlock victim) with a second connection that does not follow the ledger's locking.
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection, Engine

from cloud import models
from cloud._exceptions import CloudError
from cloud.db import insert_rows, make_engine
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import GroupResult, Inbound, Ledger
from cloud.ledger.store import ledger_row
from cloud.results.results import load_results
from devices.generator import expected_totals
from protocol import Registry, canonical, parse_batch_topic, verify
from tests.cloud.support import SEED, Envelopes
from tests.helpers import wait_until

WRITERS = 3


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_three_writers_sharing_a_fleet_count_every_batch_once(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, registry: Registry
) -> None:
    devices = envelopes.devices(15)
    batches = 6
    messages = envelopes.messages(devices, batches)
    # Interleave devices as a fleet publishes, then hand out round robin as a shared
    # subscription does: each device's batches land on every writer, out of order for each.
    fleet = [messages[d * batches + s] for s in range(batches) for d in range(len(devices))]
    shares: list[list[Inbound]] = [fleet[i::WRITERS] for i in range(WRITERS)]
    redelivered = fleet[::4]  # a worker died before acking these: another gets them again
    for i, message in enumerate(redelivered):
        shares[(i + 1) % WRITERS].append(message)
    errors: list[CloudError] = []

    def work(share: list[Inbound], seed: int) -> None:
        own = make_engine(_url(engine))
        writer = Ledger(own, registry, max_payload_bytes=64 * 1024)
        rng = random.Random(seed)
        try:
            start = 0
            while start < len(share):
                size = rng.randint(1, 9)
                writer.record(share[start : start + size])
                start += size
        except CloudError as err:  # reported by the main thread
            errors.append(err)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work, args=(s, i)) for i, s in enumerate(shares)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    got = load_results(engine).to_mapping()
    expected = expected_totals(envelopes.election, SEED, batches, devices).to_mapping()
    assert (got["contests"], got["ballots"], got["ballots_by_precinct"]) == (
        expected["contests"],
        expected["ballots"],
        expected["ballots_by_precinct"],
    )
    assert (got["batches"], got["duplicates"], got["rejections"]) == (
        len(messages),
        len(redelivered),
        0,
    )
    assert got["devices_final"] == len(devices)
    d = models.devices.c
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(models.ledger)).scalar_one()
        states = conn.execute(
            select(d.device, d.contiguous_seq, d.batches).where(d.device.in_(devices))
        ).all()
        per_key = conn.execute(
            select(func.count())
            .select_from(models.ledger)
            .group_by(models.ledger.c.device, models.ledger.c.seq)
            .having(func.count() > 1)
        ).all()
    assert rows == len(messages)
    assert per_key == []
    assert {(name, seq, n) for name, seq, n in states} == {(dev, batches, batches) for dev in devices}


# -- PostgreSQL: the races, made to happen --------------------------------------------------


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
            ).scalar_one()
        )


def _record_in_thread(
    ledger: Ledger, messages: list[Inbound]
) -> tuple[threading.Thread, list[GroupResult | BaseException]]:
    out: list[GroupResult | BaseException] = []

    def run() -> None:
        try:
            out.append(ledger.record(messages))
        except CloudError as err:
            out.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_group_that_loses_a_unique_key_race_is_decided_again(
    backend: str,
    ledger: Ledger,
    engine: Engine,
    envelopes: Envelopes,
    registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = envelopes.bodies(envelopes.devices(1)[0], 1)[0]
    message = envelopes.inbound(body)
    topic = parse_batch_topic(message.topic)
    batch = verify(
        message.payload, registry, topic_device=topic.device, topic_election=topic.election
    )
    caplog.set_level(logging.WARNING, logger="cloud.ledger.ledger")
    with engine.connect() as rogue:  # inserts the same key without taking the device lock
        transaction = rogue.begin()
        now = datetime.now(UTC)
        insert_rows(rogue, models.ledger, [ledger_row(batch, 0, now, now)])
        thread, out = _record_in_thread(ledger, [message])
        wait_until(lambda: _waiting_on_a_lock(engine), 20, "the group's insert to wait on the key")
        transaction.commit()
    thread.join(30)

    [result] = out
    assert isinstance(result, GroupResult), result
    assert [o.verdict for o in result.outcomes] == [Verdict.DUPLICATE]
    with engine.connect() as conn:  # the key once, with the duplicate on it
        assert conn.execute(select(models.ledger.c.seq, models.ledger.c.duplicates)).all() == [
            (1, 1)
        ]
    assert "lost a race with a concurrent writer (attempt 1)" in caplog.text
    assert "duplicate key" in caplog.text


def _lock_device(conn: Connection, device: str) -> None:
    conn.execute(
        select(models.devices.c.device).where(models.devices.c.device == device).with_for_update()
    ).all()


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_deadlock_victim_group_is_run_again(
    backend: str,
    ledger: Ledger,
    engine: Engine,
    envelopes: Envelopes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = sorted(envelopes.devices(2))  # the ledger locks them in this order
    messages = [envelopes.inbound(envelopes.bodies(d, 1)[0]) for d in (second, first)]
    caplog.set_level(logging.WARNING, logger="cloud.ledger.ledger")
    with engine.connect() as rogue:  # takes the two device rows in the opposite order
        transaction = rogue.begin()
        rogue.execute(text("SET LOCAL deadlock_timeout = '10s'"))  # so the group is the victim
        _lock_device(rogue, second)
        thread, out = _record_in_thread(ledger, messages)
        wait_until(lambda: _waiting_on_a_lock(engine), 20, "the group to wait on the second row")
        _lock_device(rogue, first)  # returns once PostgreSQL aborted the group (deadlock)
        transaction.rollback()
    thread.join(30)

    [result] = out
    assert isinstance(result, GroupResult), result
    assert [o.verdict for o in result.outcomes] == [Verdict.ACCEPTED, Verdict.ACCEPTED]
    assert "lost a race with a concurrent writer (attempt 1): deadlock detected" in caplog.text
    assert load_results(engine).batches == 2


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_worker_starting_while_another_stores_the_election_finds_it_and_goes_on(
    backend: str, engine: Engine, registry: Registry
) -> None:
    """Workers started together on an empty database all run prepare(): the second one's
    insert of the election waits for the first's commit, then finds the same definition."""
    first = Ledger(engine, registry, max_payload_bytes=64 * 1024)
    with engine.connect() as rogue:  # the first worker, mid-prepare: election row not committed
        transaction = rogue.begin()
        election = registry.election
        insert_rows(
            rogue,
            models.elections,
            [
                {
                    "election": election.id,
                    "name": election.name,
                    "definition": canonical.dumps(election.to_mapping()).decode("utf-8"),
                    "stored_at": datetime.now(UTC),
                }
            ],
        )
        second = threading.Thread(target=lambda: out.append(_prepare(first)))
        out: list[BaseException | None] = []
        second.start()
        wait_until(lambda: _waiting_on_a_lock(engine), 20, "the second insert to wait")
        transaction.commit()
    second.join(30)
    assert out == [None]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(models.devices)).scalar_one() == len(
            registry.devices
        )


def _prepare(ledger: Ledger) -> BaseException | None:
    try:
        ledger.prepare()
    except CloudError as err:
        return err
    return None
