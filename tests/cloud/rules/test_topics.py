"""Topic filters: MQTT 3.1.1 validation and matching, against a table and a reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.rules import RuleSchemaError, compile_rule, topic_matches, validate_topic_filter

BATCH = "edgetally/v1/sample-2026/harbor-p01-a/batch"


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("edgetally/v1/+/+/batch", BATCH, True),
        ("edgetally/v1/+/+/batch", "edgetally/v1/sample-2026/harbor-p01-a/receipt", False),
        ("edgetally/v1/+/+/batch", "edgetally/v1/sample-2026/batch", False),
        ("edgetally/v1/sample-2026/#", BATCH, True),
        ("edgetally/v1/sample-2026/#", "edgetally/v1/sample-2026", True),  # parent level too
        ("edgetally/v1/other/#", BATCH, False),
        ("#", BATCH, True),
        ("+/+/+/+/+", BATCH, True),
        ("+/+/+/+", BATCH, False),
        (BATCH, BATCH, True),
        (BATCH, BATCH + "/", False),
        ("edgetally/v1/+", "edgetally/v1/", True),  # + matches an empty level
        ("+/a", "/a", True),
        ("a//b", "a//b", True),
        ("a/+/b", "a//b", True),
        ("#", "$SYS/broker/load", False),  # wildcards do not reach $ topics
        ("+/broker/load", "$SYS/broker/load", False),
        ("$SYS/#", "$SYS/broker/load", True),
        ("a/#", "a/b/c/d", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a/+", False),  # a topic name cannot contain a wildcard
        ("#", "", False),
    ],
)
def test_topic_matches_follows_mqtt_semantics(
    topic_filter: str, topic: str, expected: bool
) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "message"),
    [
        ("", "the topic filter is empty"),
        ("a/#/b", "'#' must be a whole level and the last one (level 2 is '#')"),
        ("a/b#", "'#' must be a whole level and the last one (level 2 is 'b#')"),
        ("a/+b", "'+' must be a whole level (level 2 is '+b')"),
        ("a+", "'+' must be a whole level (level 1 is 'a+')"),
        ("a/\0", "contains a NUL character"),
        ("$share/g/a/b", "is a shared subscription"),
        ("x" * 65536, "MQTT allows at most 65535"),
    ],
)
def test_validate_topic_filter_refuses_what_mqtt_refuses(topic_filter: str, message: str) -> None:
    with pytest.raises(RuleSchemaError) as caught:
        validate_topic_filter(topic_filter)
    assert message in str(caught.value)
    assert caught.value.rule is None and caught.value.line is None


@pytest.mark.parametrize("topic_filter", ["#", "+", "a/#", "/", "a//b", "+/+/#", "$SYS/#", "é/ü"])
def test_validate_topic_filter_accepts_valid_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)


def test_a_bad_filter_in_a_rule_is_refused_at_the_filter_position() -> None:
    with pytest.raises(RuleSchemaError) as caught:
        compile_rule("tally", "SELECT device\nFROM 'edgetally/#/batch'")
    err = caught.value
    assert (err.rule, err.line, err.column) == ("tally", 2, 6)
    assert str(err).startswith("rule 'tally' at 2:6: topic filter 'edgetally/#/batch'")


def test_rule_matches_uses_its_filter() -> None:
    rule = compile_rule("r", "SELECT device FROM 'edgetally/v1/+/+/batch'")
    assert rule.topic_filter == "edgetally/v1/+/+/batch"
    assert rule.matches(BATCH)
    assert not rule.matches("edgetally/v1/_gateway/gw1/status/x")


# --- property: against a regular-expression reference ------------------------------------


def reference_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7, written as a regular expression."""
    if not topic or "+" in topic or "#" in topic:
        return False
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic_filter.split("/")
    tail = ""
    if levels[-1] == "#":
        levels = levels[:-1]
        tail = "(/.*)?" if levels else ".*"
    body = "/".join("[^/]*" if level == "+" else re.escape(level) for level in levels)
    return re.fullmatch(body + tail, topic, flags=re.DOTALL) is not None


LEVELS = st.sampled_from(["a", "b", "", "$x", "ab", "é"])
# Topics sometimes hold what a topic name must not (a wildcard character): never a match.
TOPIC_LEVELS = st.one_of(LEVELS, LEVELS, st.sampled_from(["+", "#", "a+b", "\n"]))
topics = st.lists(TOPIC_LEVELS, min_size=1, max_size=5).map("/".join).filter(bool)
filters = st.builds(
    lambda levels, hash_tail: "/".join(levels + (["#"] if hash_tail else [])),
    st.lists(st.one_of(LEVELS, st.just("+")), min_size=0, max_size=5),
    st.booleans(),
).filter(bool)


@given(filters, topics)
def test_topic_matches_agrees_with_the_reference(topic_filter: str, topic: str) -> None:
    assert topic_matches(topic_filter, topic) is reference_matches(topic_filter, topic)


@given(st.lists(LEVELS, min_size=1, max_size=5).map("/".join).filter(bool))
def test_a_topic_used_as_a_filter_matches_itself_and_hash_matches_unless_dollar(topic: str) -> None:
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) is (not topic.startswith("$"))
