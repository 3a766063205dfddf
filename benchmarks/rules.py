"""Micro-benchmark of rule evaluation: the cost per message of typical rules.

    .venv/bin/python -m benchmarks.rules [--messages 20000] [--repeat 7] [--json]

Documents are the sample election's real batches (every device, 10 batches each, as
``body.to_mapping()`` plus ``kid`` and ``body_hash``: what the engine hands to rules), cycled.
Each line is the best (and the median) over ``--repeat`` runs of ``--messages`` messages, one
EvalContext built and ``rule.matches(topic)`` checked per message and rule, as the engine will.
Measured in the same run, for scale:

* ``context + 5 matches``  the loop, the EvalContext and the five topic matches, no evaluation;
* ``hand-written``  the per-contest fan-out as a plain Python function: the floor for that work;
* ``orjson.loads``  decoding one batch body, which the engine does for every message anyway.

Nothing is asserted; tests/cloud/rules check correctness.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from cloud.rules import CompiledRule, EvalContext, FieldSchema, compile_rule
from devices.election_file import load_election, sample_election_path
from devices.generator import device_batches
from protocol import body_hash

BATCH = "'edgetally/v1/+/+/batch'"
RULES = {
    "foreach per contest": (
        "FOREACH counts AS c DO topic(4) AS device, c.key AS contest, "
        f"sum_values(c.value) AS votes FROM {BATCH}"
    ),
    "where with engine function": (
        f"SELECT device, precinct, seq, ballots FROM {BATCH} WHERE ballots > registered(precinct)"
    ),
    "where with built-in": (
        f"SELECT device, seq FROM {BATCH} "
        "WHERE sum_values(counts['governor']) > ballots OR (final AND totals IS NULL)"
    ),
    "foreach + incase (anomaly)": (
        "FOREACH counts AS c DO device, seq, c.key AS contest, sum_values(c.value) AS votes "
        f"INCASE sum_values(c.value) > ballots FROM {BATCH}"
    ),
    "select *": f"SELECT * FROM {BATCH}",
}


def _documents(
    batches: int,
) -> tuple[list[tuple[str, dict[str, Any]]], list[bytes], dict[str, int]]:
    election = load_election(sample_election_path())
    docs: list[tuple[str, dict[str, Any]]] = []
    bodies: list[bytes] = []
    for device in election.devices:
        for body in device_batches(election, 1, device, batches):
            raw = body.to_bytes()
            doc = {**body.to_mapping(), "kid": "0" * 16, "body_hash": body_hash(raw)}
            docs.append((f"edgetally/v1/{body.election}/{body.device}/batch", doc))
            bodies.append(raw)
    registered = {u.id: u.registered for u in election.units.values() if u.is_precinct}
    return docs, bodies, registered


def _time(work: Callable[[], int], repeat: int, messages: int) -> tuple[float, float, int]:
    """Best and median microseconds per message, and rows produced per run."""
    runs = []
    produced = 0
    for _ in range(repeat):
        start = time.perf_counter()
        produced = work()
        runs.append((time.perf_counter() - start) / messages * 1e6)
    return min(runs), statistics.median(runs), produced


def _rule_loop(
    rules: list[CompiledRule],
    docs: list[tuple[str, dict[str, Any]]],
    functions: dict[str, Callable[..., Any]],
    messages: int,
    evaluate: bool = True,
) -> Callable[[], int]:
    def work() -> int:
        rows = 0
        count = len(docs)
        for n in range(messages):
            topic, doc = docs[n % count]
            ctx = EvalContext(topic=topic, timestamp_ms=n, clientid="gw1", functions=functions)
            for rule in rules:
                if rule.matches(topic) and evaluate:
                    rows += len(rule.evaluate(doc, ctx))
        return rows

    return work


def _hand_written(docs: list[tuple[str, dict[str, Any]]], messages: int) -> Callable[[], int]:
    def per_contest(topic: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
        device = topic.split("/")[3]
        return [
            {"device": device, "contest": contest, "votes": sum(choices.values())}
            for contest, choices in doc["counts"].items()
        ]

    def work() -> int:
        rows = 0
        count = len(docs)
        for n in range(messages):
            topic, doc = docs[n % count]
            rows += len(per_contest(topic, doc))
        return rows

    return work


def _decode(bodies: list[bytes], messages: int) -> Callable[[], int]:
    def work() -> int:
        count = len(bodies)
        for n in range(messages):
            orjson.loads(bodies[n % count])
        return 0

    return work


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()

    docs, bodies, registered = _documents(10)
    functions: dict[str, Callable[..., Any]] = {"registered": registered.get}
    schema = FieldSchema.batch()
    start = time.perf_counter()
    compile_rule("warm-up", "SELECT device FROM '#'")  # builds the parser, once per process
    parser_ms = (time.perf_counter() - start) * 1e3
    compiled = {}
    compile_ms = {}
    for name, sql in RULES.items():
        start = time.perf_counter()
        for _ in range(20):
            compiled[name] = compile_rule(name, sql, schema=schema, functions={"registered": 1})
        compile_ms[name] = round((time.perf_counter() - start) / 20 * 1e3, 3)

    results: dict[str, dict[str, float]] = {}

    def record(name: str, work: Callable[[], int]) -> None:
        work()  # warm up
        best, median, rows = _time(work, args.repeat, args.messages)
        results[name] = {
            "us_per_message": round(best, 3),
            "us_per_message_median": round(median, 3),
            "messages_per_s": round(1e6 / best),
            "rows_per_message": round(rows / args.messages, 2),
        }

    for name, rule in compiled.items():
        record(name, _rule_loop([rule], docs, functions, args.messages))
    record(
        "all five rules together",
        _rule_loop(list(compiled.values()), docs, functions, args.messages),
    )
    record(
        "context + 5 matches, no eval",
        _rule_loop(list(compiled.values()), docs, functions, args.messages, evaluate=False),
    )
    record("hand-written per contest", _hand_written(docs, args.messages))
    record("orjson.loads(body)", _decode(bodies, args.messages))

    machine = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "messages": args.messages,
                    "results": results,
                    "compile_ms": compile_ms,
                    "parser_build_ms": round(parser_ms, 1),
                },
                indent=2,
            )
        )
        return
    print(
        f"rule evaluation per message ({len(docs)} distinct batches of the sample election; "
        f"best and median of {args.repeat} x {args.messages:,}; msgs/s from the best; {machine})"
    )
    print(f"{'':30} {'us/msg':>8} {'median':>8} {'msgs/s':>10} {'rows/msg':>9}")
    for name, r in results.items():
        print(
            f"{name:30} {r['us_per_message']:8.2f} {r['us_per_message_median']:8.2f} "
            f"{r['messages_per_s']:10,.0f} {r['rows_per_message']:9.2f}"
        )
    print(
        f"compile: {min(compile_ms.values()):.2f} to {max(compile_ms.values()):.2f} ms per rule, "
        f"after building the parser once per process ({parser_ms:.0f} ms)"
    )


if __name__ == "__main__":
    main()
