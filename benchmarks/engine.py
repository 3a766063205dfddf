"""The rules engine's own cost per message: the default rules (and a ledger-only rules file, for
the difference), without the database and the ledger, on the sample election's real batches.

    .venv/bin/python -m benchmarks.engine [--messages 20000] [--repeat 7]

What is timed per message is everything the engine adds around the ledger for a group: topic
matching (cached per topic), the document and EvalContext, evaluating the ledger rule before
the ledger, then every other rule with the engine's functions (ledger_outcome(), device_ballots(),
registered(), device_rate()), and the bookkeeping after the commit (rate windows, counters).
The ledger's outcome for each message is set as the ledger would (accepted, with the device's
running ballots); an honest fleet's batches raise no alert, so no SQL runs: the database's share
is measured by ``benchmarks/cloud.py`` (ingest with and without the default rules).
Verification is not counted (it happens with or without rules). Groups of 500, as the worker's.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import yaml

from benchmarks._json import ratio as _ratio
from benchmarks._json import write_json
from cloud.engine.dispatch import _Attempt
from cloud.engine.engine import RulesEngine
from cloud.engine.rulefile import RulesConfig, load_rules, parse_rules
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import Inbound, Ledger, Outcome
from devices.election_file import load_election, sample_election_path
from devices.generator import device_batches
from protocol import Registry, batch_topic, load_signing_key, provision, seal, verify

GROUP = 500
LEDGER_ONLY = """
rules:
  - name: ledger
    sql: SELECT seq FROM 'edgetally/v1/+/+/batch'
    actions: [{ledger: {}}]
"""


def _messages(keys: Path, registry: Registry, total: int) -> list[tuple[Inbound, object]]:
    election = registry.election
    per_device = -(-total // len(election.devices))
    start = datetime(2026, 11, 3, 20, 0, tzinfo=UTC)
    out: list[tuple[Inbound, object]] = []
    devices = len(election.devices)
    for index, device in enumerate(election.devices):
        key = load_signing_key(keys, device)
        for body in device_batches(election, 1, device, per_device):
            payload = seal(body, key).to_bytes()
            # devices interleaved, arrivals spread over 60 s: each device stays under the
            # rate-spike rule's 100 batches in 10 s (a drain at full speed trips it, as it should)
            position = (body.seq - 1) * devices + index
            arrival = start + timedelta(seconds=60 * position / (per_device * devices))
            inbound = Inbound(batch_topic(election.id, device), payload, arrival)
            out.append((inbound, verify(payload, registry)))
    out.sort(key=lambda m: m[0].received_at)
    return out[:total]


def _outcomes(messages: list[tuple[Inbound, object]]) -> list[Outcome]:
    """What the ledger decides for each (honest, first delivery): accepted, running ballots."""
    running: dict[str, int] = {}
    out = []
    for _inbound, checked in messages:
        body = checked.body  # type: ignore[attr-defined]
        running[body.device] = running.get(body.device, 0) + body.ballots
        total = running[body.device]
        out.append(
            Outcome(Verdict.ACCEPTED, body.election, body.device, body.seq, device_ballots=total)
        )
    return out


def _run(
    engine: RulesEngine, messages: list[tuple[Inbound, object]], outcomes: list[Outcome]
) -> None:
    """What RulesEngine.record does around the ledger, minus the ledger and the SQL."""
    for start in range(0, len(messages), GROUP):
        chunk = messages[start : start + GROUP]
        group = engine._prepare([m for m, _ in chunk], [c for _, c in chunk])  # type: ignore[misc]
        for message, outcome in zip(group, outcomes[start : start + GROUP], strict=True):
            message.outcome = outcome  # as the ledger's result is handed over
        attempt = _Attempt()
        engine._outputs(None, group, attempt)  # type: ignore[arg-type]  # no rows: no SQL
        assert not attempt.alerts and not attempt.dead, "an honest fleet raised an alert"
        engine._committed(group, attempt, len(group))


def _measure(
    name: str,
    config: RulesConfig,
    registry: Registry,
    messages: list[tuple[Inbound, object]],
    repeat: int,
) -> tuple[str, float, float]:
    runs = []
    outcomes = _outcomes(messages)
    for _ in range(repeat):
        engine = RulesEngine(Ledger(None, registry, max_payload_bytes=1), registry, config, None)  # type: ignore[arg-type]
        begin = time.perf_counter()
        _run(engine, messages, outcomes)
        runs.append((time.perf_counter() - begin) / len(messages) * 1e6)
    return name, min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the ratios (same-run baselines) to this file")
    args = parser.parse_args()
    with TemporaryDirectory() as work:
        keys = Path(work) / "keys"
        registry = provision(load_election(sample_election_path()), keys)
        messages = _messages(keys, registry, args.messages)
    # The 20,000 verified inputs are held for the whole run (a worker holds one group): keep
    # the garbage collector from walking them again and again, which would be timed otherwise.
    gc.collect()
    gc.freeze()
    default = load_rules()
    ledger_only = parse_rules(yaml.safe_load(LEDGER_ONLY), "ledger only")
    print(
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()};"
        f" {len(messages):,} messages in groups of {GROUP}, best (median) of {args.repeat}"
    )
    results = [
        _measure("ledger rule only", ledger_only, registry, messages, args.repeat),
        _measure(f"default rules ({len(default.rules)})", default, registry, messages, args.repeat),
    ]
    for name, best, median in results:
        print(f"  {name:28} {best:6.2f} us/message ({median:.2f})")
    print(f"  {'the anomaly rules add':28} {results[1][1] - results[0][1]:6.2f} us/message")
    write_json(args.json, {"engine.default_ledger_only_ratio": _ratio(results[1][1], results[0][1])},
               {name: best for name, best, _median in results})  # fmt: skip


if __name__ == "__main__":
    main()
