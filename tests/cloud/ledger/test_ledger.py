"""The ledger on a real database: every test runs on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from cloud import models
from cloud._exceptions import CloudError, ElectionMismatch
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import Inbound, Ledger
from cloud.results.results import load_results
from devices.generator import expected_totals
from protocol import (
    GENESIS_HASH,
    BatchBody,
    Envelope,
    Receipt,
    Registry,
    RejectReason,
    SigningKey,
    Totals,
    batch_topic,
    canonical,
)
from tests.cloud.support import SEED, Envelopes, hash_of, ledger_rows, raw_inbound


def _rejections(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(select(models.rejections).order_by(models.rejections.c.id))
        ]


def _device(engine: Engine, device: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(select(models.devices).where(models.devices.c.device == device)).one()
    return dict(row._mapping)


def _totals(engine: Engine) -> dict[str, object]:
    return load_results(engine).to_mapping()


def test_ledger_totals_are_exact(ledger: Ledger, engine: Engine, envelopes: Envelopes) -> None:
    devices = envelopes.devices(6)
    messages = envelopes.messages(devices, 5)
    for start, size in ((0, 1), (1, 7), (8, 13), (21, 9)):  # groups of several sizes
        ledger.record(messages[start : start + size])
    result = ledger.record(messages[30:])
    assert result.count(Verdict.ACCEPTED) == len(messages) - 30

    expected = expected_totals(envelopes.election, SEED, 5, devices).to_mapping()
    got = _totals(engine)
    assert got["contests"] == expected["contests"]
    assert got["ballots"] == expected["ballots"]
    assert got["ballots_by_precinct"] == expected["ballots_by_precinct"]
    assert got["batches"] == expected["batches"] == len(messages)
    assert (got["duplicates"], got["rejections"], got["devices_final"]) == (0, 0, len(devices))


def test_ledger_row_keeps_the_envelope_exactly(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    body = envelopes.bodies("harbor-p02-b", 3)[1]
    payload = envelopes.payload(body)
    envelope = canonical.loads(payload)
    ledger.record([raw_inbound(payload, batch_topic(body.election, body.device))])

    with engine.connect() as conn:
        row = conn.execute(select(models.ledger)).one()
    assert row.body.encode("utf-8") == body.to_bytes() == envelope["body"].encode("utf-8")
    assert (row.sig, row.kid) == (envelope["sig"], envelope["kid"])
    assert (row.body_hash, row.prev) == (hash_of(body), body.prev)
    assert (row.election, row.device, row.seq, row.precinct) == (
        body.election,
        body.device,
        2,
        body.precinct,
    )
    assert (row.ballots, row.final, row.duplicates) == (body.ballots, False, 0)
    assert row.issued_at.isoformat().replace("+00:00", "Z") == body.issued_at
    assert row.received_at.tzinfo is not None


def test_redelivered_batch_is_a_duplicate_and_changes_no_total(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    devices = envelopes.devices(3)
    messages = envelopes.messages(devices, 4)
    ledger.record(messages)
    before = _totals(engine)

    again = ledger.record(messages[:5])
    twice_in_one_group = ledger.record([messages[6], messages[6]])

    assert [o.verdict for o in again.outcomes] == [Verdict.DUPLICATE] * 5
    assert [o.verdict for o in twice_in_one_group.outcomes] == [Verdict.DUPLICATE] * 2
    after = _totals(engine)
    assert after["duplicates"] == 7
    assert {k: v for k, v in after.items() if k != "duplicates"} == {
        k: v for k, v in before.items() if k != "duplicates"
    }
    with engine.connect() as conn:
        dups = dict(
            conn.execute(
                select(models.ledger.c.seq, models.ledger.c.duplicates).where(
                    models.ledger.c.device == devices[1]
                )
            ).all()
        )
    assert dups == {1: 1, 2: 0, 3: 2, 4: 0}
    assert _device(engine, devices[1])["duplicates"] == 3


def test_duplicate_inside_the_group_that_first_brings_the_batch(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    [first, *_] = envelopes.messages(["mesa-p01-a"], 2)
    result = ledger.record([first, first, first])
    assert [o.verdict for o in result.outcomes] == [
        Verdict.ACCEPTED,
        Verdict.DUPLICATE,
        Verdict.DUPLICATE,
    ]
    assert _totals(engine)["batches"] == 1
    assert _totals(engine)["duplicates"] == 2


def test_same_key_with_another_body_is_rejected_as_conflict(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "harbor-p03-a"
    ledger.record(envelopes.messages([device], 3))
    before = _totals(engine)
    other = dataclasses.replace(envelopes.bodies(device, 3)[1], ballots=0, counts={})
    message = envelopes.inbound(other)

    [outcome] = ledger.record([message]).outcomes

    assert (outcome.verdict, outcome.reason, outcome.seq) == (
        Verdict.REJECTED,
        RejectReason.CONFLICT,
        2,
    )
    assert _totals(engine)["contests"] == before["contests"]
    assert _totals(engine)["batches"] == 3
    [row] = _rejections(engine)
    assert row["reason"] == "conflict"
    assert (row["device"], row["seq"], row["topic"]) == (device, 2, message.topic)
    assert row["payload"] == message.payload
    assert "seq=2" in str(row["detail"]) and hash_of(other) in str(row["detail"])
    assert row["received_at"] == message.received_at


def test_prev_that_is_not_the_hash_of_the_held_seq_below_is_a_broken_chain(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "harbor-p06-a"
    ledger.record([envelopes.inbound(envelopes.bodies(device, 4)[0])])
    foreign_seq2 = envelopes.bodies(device, 4, seed=SEED + 1)[1]  # its prev is another seq 1

    [outcome] = ledger.record([envelopes.inbound(foreign_seq2)]).outcomes

    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, RejectReason.BROKEN_CHAIN)
    assert _totals(engine)["batches"] == 1
    assert [r["reason"] for r in _rejections(engine)] == ["broken_chain"]


def test_batch_whose_hash_is_not_the_prev_of_the_held_seq_above_is_a_broken_chain(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "harbor-p06-b"
    ledger.record([envelopes.inbound(envelopes.bodies(device, 4)[2])])  # seq 3 first
    foreign_seq2 = dataclasses.replace(envelopes.bodies(device, 4)[1], ballots=0)

    [outcome] = ledger.record([envelopes.inbound(foreign_seq2)]).outcomes

    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, RejectReason.BROKEN_CHAIN)
    assert "seq 3" in outcome.detail


def test_batch_above_the_final_seq_is_rejected(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "harbor-p05-a"
    bodies = envelopes.bodies(device, 3)
    ledger.record([envelopes.inbound(b) for b in bodies])
    after_final = dataclasses.replace(bodies[1], seq=4, prev=hash_of(bodies[2]))

    [outcome] = ledger.record([envelopes.inbound(after_final)]).outcomes

    assert (outcome.verdict, outcome.reason, outcome.seq) == (
        Verdict.REJECTED,
        RejectReason.AFTER_FINAL,
        4,
    )
    assert _device(engine, device)["final_seq"] == 3
    assert _totals(engine)["batches"] == 3


def test_final_batch_below_a_held_seq_is_rejected(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "harbor-p05-b"
    bodies = envelopes.bodies(device, 5)
    ledger.record([envelopes.inbound(bodies[i]) for i in (0, 1, 3)])
    early_final = dataclasses.replace(bodies[2], final=True, totals=Totals(0, {}))

    [outcome] = ledger.record([envelopes.inbound(early_final)]).outcomes

    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, RejectReason.AFTER_FINAL)
    assert _device(engine, device)["final_seq"] is None


def _unknown_device_payload(envelopes: Envelopes) -> tuple[bytes, str]:
    body = dataclasses.replace(envelopes.bodies("harbor-p01-a", 1)[0], device="nobody-z")
    return envelopes.payload(body, SigningKey.from_seed(bytes(32))), batch_topic(
        body.election, "nobody-z"
    )


def _bad_signature_payload(envelopes: Envelopes) -> tuple[bytes, str]:
    body = envelopes.bodies("harbor-p01-a", 2)[0]
    key = envelopes.key(body.device)
    forged = Envelope(body=body.to_bytes(), sig=key.sign(b"something else"), kid=key.kid)
    return forged.to_bytes(), batch_topic(body.election, body.device)


def _tampered_payload(envelopes: Envelopes) -> tuple[bytes, str]:
    body = envelopes.bodies("harbor-p01-a", 2)[0]
    sealed = envelopes.payload(body)
    field = f'\\"ballots\\":{body.ballots},'.encode()  # escaped: the body is a JSON string
    assert sealed.count(field) == 1
    tampered = sealed.replace(field, f'\\"ballots\\":{body.ballots + 1},'.encode())
    return tampered, batch_topic(body.election, body.device)


def _wrong_topic_payload(envelopes: Envelopes) -> tuple[bytes, str]:
    body = envelopes.bodies("harbor-p01-a", 2)[0]
    return envelopes.payload(body), batch_topic(body.election, "harbor-p02-a")


def _wrong_election_topic_payload(envelopes: Envelopes) -> tuple[bytes, str]:
    body = envelopes.bodies("harbor-p01-a", 2)[0]
    return envelopes.payload(body), batch_topic("other-2026", body.device)


BAD_MESSAGES = {
    "bad signature": (_bad_signature_payload, RejectReason.BAD_SIGNATURE, "harbor-p01-a"),
    "counts changed after signing": (_tampered_payload, RejectReason.BAD_SIGNATURE, "harbor-p01-a"),
    "unknown device": (_unknown_device_payload, RejectReason.UNKNOWN_DEVICE, "nobody-z"),
    "malformed JSON": (
        lambda e: (b'{"body": "not closed', batch_topic("sample-2026", "harbor-p01-a")),
        RejectReason.MALFORMED_JSON,
        None,
    ),
    "oversize": (
        lambda e: (b" " * (64 * 1024 + 1), batch_topic("sample-2026", "harbor-p01-a")),
        RejectReason.OVERSIZE,
        None,
    ),
    "batch on another device's topic": (
        _wrong_topic_payload,
        RejectReason.TOPIC_MISMATCH,
        "harbor-p01-a",
    ),
    "batch on another election's topic": (
        _wrong_election_topic_payload,
        RejectReason.TOPIC_MISMATCH,
        "harbor-p01-a",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_bad_message_is_rejected_with_its_reason_and_stored(
    case: str, ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    make, reason, device = BAD_MESSAGES[case]
    payload, topic = make(envelopes)
    message = raw_inbound(payload, topic)

    [outcome] = ledger.record([message]).outcomes

    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, reason)
    [row] = _rejections(engine)
    assert row["reason"] == str(reason)
    assert row["detail"] and row["detail"] == outcome.detail
    assert (row["topic"], row["payload"], row["device"]) == (topic, payload, device)
    assert row["received_at"] == message.received_at
    assert ledger_rows(engine) == 0
    assert _totals(engine)["rejections"] == 1


def test_out_of_order_arrival_is_accepted_and_receipts_follow_contiguity(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "river-p01-a"
    b1, b2, b3 = envelopes.bodies(device, 3)
    election = envelopes.election.id

    seen = [ledger.record([envelopes.inbound(b)]) for b in (b3, b1, b2)]

    assert [r.outcomes[0].verdict for r in seen] == [Verdict.ACCEPTED] * 3
    assert [r.receipts for r in seen] == [
        (Receipt(election, device, 0, GENESIS_HASH),),
        (Receipt(election, device, 1, hash_of(b1)),),
        (Receipt(election, device, 3, hash_of(b3)),),
    ]
    state = _device(engine, device)
    assert (
        state["contiguous_seq"],
        state["contiguous_hash"],
        state["final_seq"],
        state["max_seq"],
    ) == (
        3,
        hash_of(b3),
        3,
        3,
    )


def test_out_of_order_inside_one_group_gives_one_receipt_per_device_the_latest(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    a, b = "river-p02-a", "river-p02-b"
    a_bodies, b_bodies = envelopes.bodies(a, 4), envelopes.bodies(b, 4)
    group = [
        envelopes.inbound(x)
        for x in (a_bodies[2], b_bodies[0], a_bodies[0], a_bodies[1], b_bodies[2])
    ]

    result = ledger.record(group)

    election = envelopes.election.id
    assert result.receipts == (
        Receipt(election, a, 3, hash_of(a_bodies[2])),
        Receipt(election, b, 1, hash_of(b_bodies[0])),
    )


def test_receipt_stops_at_a_gap(ledger: Ledger, engine: Engine, envelopes: Envelopes) -> None:
    device = "pine-p01-a"
    bodies = envelopes.bodies(device, 5)
    ledger.record([envelopes.inbound(bodies[i]) for i in (0, 1, 3, 4)])
    assert _device(engine, device)["contiguous_seq"] == 2

    result = ledger.record([envelopes.inbound(bodies[2])])

    assert result.receipts == (Receipt(envelopes.election.id, device, 5, hash_of(bodies[4])),)
    assert _device(engine, device)["contiguous_hash"] == hash_of(bodies[4])


def test_duplicate_alone_still_gets_a_receipt(ledger: Ledger, envelopes: Envelopes) -> None:
    bodies = envelopes.bodies("pine-p02-a", 2)
    ledger.record([envelopes.inbound(b) for b in bodies])
    result = ledger.record([envelopes.inbound(bodies[0])])
    assert result.receipts == (Receipt(envelopes.election.id, "pine-p02-a", 2, hash_of(bodies[1])),)


def test_a_bad_message_in_a_group_does_not_lose_the_good_ones(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "mesa-p02-a"
    bodies = envelopes.bodies(device, 4)
    conflicting = dataclasses.replace(bodies[0], ballots=bodies[0].ballots + 1)
    group = [
        envelopes.inbound(bodies[0]),
        raw_inbound(b"not json at all", batch_topic(envelopes.election.id, device)),
        envelopes.inbound(bodies[1]),
        envelopes.inbound(conflicting),
        envelopes.inbound(bodies[2]),
        raw_inbound(b"{}", "edgetally/v1/_gateway/gw1/batch"),
        envelopes.inbound(bodies[3]),
    ]

    result = ledger.record(group)

    assert [o.verdict for o in result.outcomes] == [
        Verdict.ACCEPTED,
        Verdict.REJECTED,
        Verdict.ACCEPTED,
        Verdict.REJECTED,
        Verdict.ACCEPTED,
        Verdict.REJECTED,
        Verdict.ACCEPTED,
    ]
    assert [o.reason for o in result.outcomes if o.reason] == [
        RejectReason.MALFORMED_JSON,
        RejectReason.CONFLICT,
        RejectReason.BAD_TOPIC,
    ]
    expected = expected_totals(envelopes.election, SEED, 4, [device]).to_mapping()
    got = _totals(engine)
    assert (got["contests"], got["ballots"], got["batches"]) == (
        expected["contests"],
        expected["ballots"],
        4,
    )
    assert len(_rejections(engine)) == 3


def test_zero_vote_final_batch_still_counts_its_precinct(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    body = BatchBody(
        election=envelopes.election.id,
        device="pine-p03-c",
        precinct="pine-p03",
        seq=1,
        prev=GENESIS_HASH,
        issued_at="2026-11-03T20:01:00Z",
        ballots=0,
        counts={},
        final=True,
        totals=Totals(0, {}),
    )
    ledger.record([envelopes.inbound(body)])
    results = load_results(engine)
    assert results.ballots_by_precinct == {"pine-p03": 0}
    assert results.devices_final == 1
    assert all(n == 0 for choices in results.contests.values() for n in choices.values())


def test_prepare_stores_the_election_so_results_need_only_the_database(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    ledger.prepare()  # a restart prepares again: harmless
    results = load_results(engine)
    assert results.election == envelopes.election
    assert results.devices_total == len(envelopes.election.devices)
    assert results.to_mapping()["contests"] == {
        c.id: dict.fromkeys(c.choice_ids, 0) for c in envelopes.election.contests
    }


def test_prepare_refuses_another_definition_of_the_same_election(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    renamed = dataclasses.replace(envelopes.election, name="Another Name")
    other = Registry(election=renamed, devices=envelopes.registry.devices)
    with pytest.raises(ElectionMismatch, match="another definition of election 'sample-2026'"):
        Ledger(engine, other, max_payload_bytes=1024).prepare()


def test_two_writers_recording_the_same_batches_count_each_once(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, registry: Registry
) -> None:
    devices = envelopes.devices(12)
    messages = envelopes.messages(devices, 5)
    other = Ledger(engine, registry, max_payload_bytes=64 * 1024)
    errors: list[CloudError] = []

    def record(writer: Ledger, ordered: list[Inbound], size: int) -> None:
        try:
            for start in range(0, len(ordered), size):
                writer.record(ordered[start : start + size])
        except CloudError as err:  # reported by the main thread (others: pytest's thread hook)
            errors.append(err)

    threads = [
        threading.Thread(target=record, args=(ledger, messages, 7)),
        threading.Thread(target=record, args=(other, messages[::-1], 11)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    got = _totals(engine)
    expected = expected_totals(envelopes.election, SEED, 5, devices).to_mapping()
    assert (got["contests"], got["ballots"], got["batches"]) == (
        expected["contests"],
        expected["ballots"],
        len(messages),
    )
    assert got["duplicates"] == len(messages)
    assert got["devices_final"] == len(devices)
    for device in devices:
        assert _device(engine, device)["contiguous_seq"] == 5


def _repair_rows(engine: Engine, device: str) -> list[tuple[int, int, bool]]:
    table = models.repairs
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.first_seq, table.c.last_seq, table.c.repaired_at.is_not(None))
            .where(table.c.device == device)
            .order_by(table.c.first_seq)
        ).all()
    return [(int(a), int(b), bool(done)) for a, b, done in rows]


def test_a_gap_filled_over_two_commits_keeps_one_row_until_all_of_it_arrived(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = "pine-p01-b"
    key = (envelopes.election.id, device)
    bodies = envelopes.bodies(device, 7)
    result = ledger.record([envelopes.inbound(bodies[i]) for i in (0, 1, 4)])  # 3-4 missing
    assert dict(result.gaps) == {key: ((3, 4),)}
    assert _repair_rows(engine, device) == [(3, 4, False)]

    result = ledger.record([envelopes.inbound(bodies[2])])  # 3 arrives: the gap narrows to 4
    assert dict(result.gaps) == {key: ((4, 4),)}
    assert _repair_rows(engine, device) == [(3, 4, False)]  # the same row, still open

    result = ledger.record([envelopes.inbound(bodies[6])])  # 7 arrives: 6 is a new gap
    assert dict(result.gaps) == {key: ((4, 4), (6, 6))}
    assert _repair_rows(engine, device) == [(3, 4, False), (6, 6, False)]

    result = ledger.record([envelopes.inbound(bodies[3]), envelopes.inbound(bodies[5])])
    assert dict(result.gaps) == {key: ()}
    assert _repair_rows(engine, device) == [(3, 4, True), (6, 6, True)]


def test_current_gaps_see_what_another_worker_committed(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, registry: Registry
) -> None:
    """A worker re-reads a gap before asking for it: another worker (``--share``) may have
    filled it, and then no repair request may go out."""
    device, other = "pine-p02-b", "pine-p03-a"
    key, other_key = (envelopes.election.id, device), (envelopes.election.id, other)
    bodies = envelopes.bodies(device, 6)
    ledger.record([envelopes.inbound(bodies[i]) for i in (0, 3, 5)])  # 2-3 and 5 missing
    assert ledger.current_gaps([key, other_key]) == {key: ((2, 3), (5, 5)), other_key: ()}

    second_worker = Ledger(engine, registry, max_payload_bytes=64 * 1024)
    second_worker.record([envelopes.inbound(bodies[1])])
    assert ledger.current_gaps([key]) == {key: ((3, 3), (5, 5))}
    second_worker.record([envelopes.inbound(bodies[2]), envelopes.inbound(bodies[4])])
    assert ledger.current_gaps([key]) == {key: ()}


def test_gaps_of_many_devices_in_one_group_are_each_their_own(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    """One group touching several devices with gaps (as every group of a --share worker does):
    each device gets its own ranges and repairs rows, read in one query for all of them."""
    election = envelopes.election.id
    withheld = {"pine-p01-a": (2,), "pine-p01-b": (2, 3, 5), "pine-p02-a": (), "pine-p02-b": (4,)}
    bodies = {device: envelopes.bodies(device, 6) for device in withheld}
    result = ledger.record(
        [
            envelopes.inbound(bodies[device][seq - 1])
            for device, missing in withheld.items()
            for seq in range(1, 7)
            if seq not in missing
        ]
    )
    assert dict(result.gaps) == {
        (election, "pine-p01-a"): ((2, 2),),
        (election, "pine-p01-b"): ((2, 3), (5, 5)),
        (election, "pine-p02-b"): ((4, 4),),
    }
    assert _repair_rows(engine, "pine-p01-b") == [(2, 3, False), (5, 5, False)]
    assert _repair_rows(engine, "pine-p02-a") == []

    result = ledger.record(
        [envelopes.inbound(bodies["pine-p01-a"][1]), envelopes.inbound(bodies["pine-p01-b"][2])]
    )
    assert dict(result.gaps) == {(election, "pine-p01-a"): (), (election, "pine-p01-b"): ((2, 2), (5, 5))}
    assert _repair_rows(engine, "pine-p01-a") == [(2, 2, True)]
    assert _repair_rows(engine, "pine-p01-b") == [(2, 3, False), (5, 5, False)]
    assert _repair_rows(engine, "pine-p02-b") == [(4, 4, False)]
