"""docs/rules.md cannot drift from the code: its SQL examples compile and its error table
quotes the messages the compiler gives."""

from __future__ import annotations

import re
from pathlib import Path

from cloud.rules import FieldSchema, compile_rule
from devices.generator import device_batches
from protocol import Election
from tests.cloud.rules.support import context
from tests.cloud.rules.test_errors import CASES

DOC = Path(__file__).resolve().parents[3] / "docs" / "rules.md"


def _sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_every_sql_example_compiles_and_runs_on_real_batches(sample_election: Election) -> None:
    blocks = _sql_blocks()
    assert len(blocks) >= 8
    bodies = [
        body
        for device in ("harbor-p01-a", "harbor-p02-a", "harbor-p02-b")
        for body in device_batches(sample_election, 3, device, 3)
    ]
    produced = 0
    for number, sql in enumerate(blocks, start=1):
        rule = compile_rule(
            f"example {number}", sql, schema=FieldSchema.batch(), functions={"registered": 1}
        )
        for body in bodies:
            topic = f"edgetally/v1/{body.election}/{body.device}/batch"
            ctx = context(topic=topic, functions={"registered": lambda _p: 1000})
            if rule.matches(topic):
                produced += len(rule.evaluate(body.to_mapping(), ctx))
    assert produced > 0


def test_the_error_table_quotes_the_compilers_messages() -> None:
    text = DOC.read_text()
    section = text[text.index("## Errors") : text.index("## How rules are compiled")]
    quoted = re.findall(r"^\| .*? \| `(.*)` \|$", section, flags=re.MULTILINE)
    assert len(quoted) >= 40
    details = {detail for _sql, _cls, _pos, detail in CASES}
    missing = [message for message in quoted if message not in details]
    assert missing == []


def test_the_first_example_gives_the_rows_the_page_shows() -> None:
    from tests.cloud.rules.support import DOC as BATCH

    rule = compile_rule("intro", _sql_blocks()[0])
    assert rule.evaluate(BATCH, context()) == [
        {"device": "town-p1-a", "contest": "mayor", "votes": 3},
        {"device": "town-p1-a", "contest": "measure-1", "votes": 3},
    ]


def test_every_builtin_function_is_documented() -> None:
    from cloud.rules.functions import BUILTINS

    text = DOC.read_text()
    section = text[text.index("## Functions") : text.index("## Topic filters")]
    assert [name for name in BUILTINS if f"`{name}(" not in section] == []
