"""Where a batch is verified at the gateway: one message in, one buffer row out.

:func:`classify` checks a message as it arrived (its topic, then the envelope's size, JSON,
Ed25519 signature against the registry's key for that device, and the body against the
election and the topic's device and election) and returns the row to store: ``pending`` if it
is a good batch, else ``quarantined`` with the reason and a detail naming the problem, and the
seq and body hash where the payload's structure allows (for ``buffer quarantine`` / ``show``).
Nothing is dropped: a rejected message is kept with its reason. No I/O, no MQTT: the ingress
writer calls it from its verification threads, and ``buffer retry`` / ``buffer recover``
re-verify stored rows with it.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.buffer.rows import NewMessage
from gateway.buffer.schema import State
from protocol import (
    BadTopic,
    ProtocolError,
    Registry,
    RejectReason,
    body_hash,
    parse_batch_topic,
    parse_body,
    parse_envelope,
    verify,
)


def classify(
    topic: str, payload: bytes, received_at: float, registry: Registry | Mapping[str, Registry], max_bytes: int
) -> NewMessage:
    """Verify one message: a pending row if it is a good batch, else a quarantined one.

    ``registry``: the election's, or each carried election's by id (chosen by the topic's
    election segment; the body and that registry must then agree with it)."""
    try:
        where = parse_batch_topic(topic)
    except BadTopic as err:
        return NewMessage(
            topic=topic,
            payload=payload,
            state=State.QUARANTINED,
            received_at=received_at,
            reason=err.reason.value,
            detail=str(err),
        )
    chosen = registry if isinstance(registry, Registry) else registry.get(where.election)
    if chosen is None:
        assert not isinstance(registry, Registry)
        carried = ", ".join(repr(e) for e in sorted(registry)[:5]) + (" ..." if len(registry) > 5 else "")
        seq, digest = _best_effort_identity(payload, max_bytes)
        return NewMessage(
            topic=topic, payload=payload, state=State.QUARANTINED, received_at=received_at,
            election=where.election, device=where.device, seq=seq, body_hash=digest,
            reason=RejectReason.UNKNOWN_ELECTION.value,
            detail=f"election {where.election!r} is not one this gateway carries ({carried}; give its --keys)",
        )  # fmt: skip
    try:
        batch = verify(
            payload,
            chosen,
            max_bytes=max_bytes,
            topic_device=where.device,
            topic_election=where.election,
        )
    except ProtocolError as err:
        seq, digest = _best_effort_identity(payload, max_bytes)
        return NewMessage(
            topic=topic,
            payload=payload,
            state=State.QUARANTINED,
            received_at=received_at,
            election=where.election,
            device=where.device,
            seq=seq,
            body_hash=digest,
            reason=err.reason.value,
            detail=str(err),
        )
    return NewMessage(
        topic=topic,
        payload=payload,
        state=State.PENDING,
        received_at=received_at,
        election=batch.body.election,
        device=batch.body.device,
        seq=batch.body.seq,
        body_hash=batch.body_hash,
    )


def _best_effort_identity(payload: bytes, max_bytes: int) -> tuple[int | None, str | None]:
    """The seq and body hash of a rejected message, where its structure allows, for inspection."""
    try:
        envelope = parse_envelope(payload, max_bytes=max_bytes)
    except ProtocolError:
        return None, None
    digest = body_hash(envelope.body)
    try:
        return parse_body(envelope.body).seq, digest
    except ProtocolError:
        return None, digest
