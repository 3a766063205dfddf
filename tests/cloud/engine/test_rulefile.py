"""Loading the rules file: the default rules, YAML and TOML, and every refusal (each names the
file, the rule and the problem)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud._exceptions import RulesFileError
from cloud.engine.actions import AlertAction, LedgerAction, RepublishAction, StoreAction
from cloud.engine.rulefile import (
    MAX_RATE_WINDOW_S,
    default_rules_path,
    filters_overlap,
    load_rules,
    parse_rules,
)
from tests.helpers import REPO

BATCH = "'edgetally/v1/+/+/batch'"


def _rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "name": "r1",
        "sql": f"SELECT device, seq FROM {BATCH}",
        "actions": [{"alert": {"message": "device ${device} seq ${seq}"}}],
    }
    rule.update(overrides)
    return rule


def _refused(data: Any) -> str:
    with pytest.raises(RulesFileError) as caught:
        parse_rules(data, "rules.yaml")
    message = str(caught.value)
    assert message.startswith("rules file rules.yaml: "), message
    assert "\n" not in message
    return message


def test_default_rules_load_with_the_ledger_rule_first() -> None:
    config = load_rules()
    assert config.source == str(default_rules_path())
    names = [r.name for r in config.rules]
    assert names == [
        "ledger",
        "ledger-bad-bundles",
        "ballots-above-registered",
        "contest-above-ballots",
        "precinct-two-sources",
        "after-final",
        "rate-spike",
    ]
    assert config.rules[0].actions == (LedgerAction(),)
    assert all(isinstance(a, AlertAction) for r in config.rules[2:] for a in r.actions)
    assert config.rate_window_s == 10


def test_yaml_and_toml_files_give_the_same_rules(tmp_path: Path) -> None:
    yaml_file = tmp_path / "rules.yaml"
    yaml_file.write_text(
        "rules:\n"
        "  - name: tally\n"
        f"    sql: SELECT * FROM {BATCH}\n"
        "    actions:\n"
        "      - ledger:\n"
        "      - store: {table: everything}\n"
        "    error_action: {alert: {severity: info, message: '${rule} failed: ${error}'}}\n"
        "  - name: spare\n"
        f"    sql: SELECT device FROM {BATCH}\n"
        "    enabled: false\n"
        "    actions: [{republish: {topic: 'out/${device}', qos: 0}}]\n"
    )
    toml_file = tmp_path / "rules.toml"
    toml_file.write_text(
        "[[rules]]\n"
        'name = "tally"\n'
        f'sql = "SELECT * FROM {BATCH}"\n'
        'actions = [{ledger = {}}, {store = {table = "everything"}}]\n'
        'error_action = {alert = {severity = "info", message = "${rule} failed: ${error}"}}\n'
        "[[rules]]\n"
        'name = "spare"\n'
        f'sql = "SELECT device FROM {BATCH}"\n'
        "enabled = false\n"
        'actions = [{republish = {topic = "out/${device}", qos = 0}}]\n'
    )
    from_yaml, from_toml = load_rules(yaml_file), load_rules(toml_file)
    for config in (from_yaml, from_toml):
        tally, spare = config.rules
        assert tally.actions == (LedgerAction(), StoreAction("everything"))
        assert isinstance(tally.error_action, AlertAction)
        assert tally.error_action.severity == "info"
        assert not spare.enabled
        assert config.enabled == (tally,)
        [republish] = spare.actions
        assert isinstance(republish, RepublishAction)
        assert (republish.topic.text, republish.qos) == ("out/${device}", 0)
    assert [r.rule.sql for r in from_yaml.rules] == [r.rule.sql for r in from_toml.rules]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], "expected a mapping with a 'rules' list at the top"),
        ({"rules": []}, "'rules' must be a non-empty list of rules"),
        ({"rules": [_rule()], "rulez": 1}, "unknown key 'rulez' (did you mean 'rules'?)"),
        ({"rules": ["SELECT 1"]}, "rule 1: expected a mapping with name, sql and actions"),
        ({"rules": [_rule(name="bad name")]}, "rule 1: 'name' must be 1-64 characters"),
        ({"rules": [_rule(), _rule()]}, "rule 'r1': the name is used twice"),
        (
            {"rules": [_rule(actoins=[])]},
            "rule 'r1': unknown key 'actoins' (did you mean 'actions'?)",
        ),
        ({"rules": [_rule(sql=None)]}, "rule 'r1': 'sql' must be the rule's SQL text"),
        ({"rules": [_rule(enabled="yes")]}, "rule 'r1': 'enabled' must be true or false"),
        ({"rules": [_rule(actions=[])]}, "rule 'r1': 'actions' must be a non-empty list"),
        (
            {"rules": [_rule(actions=[{"email": {}}])]},
            "rule 'r1': action 1: unknown action 'email'; actions: ledger, alert, republish, store",
        ),
        (
            {"rules": [_rule(actions=[{"alrt": {"message": "x"}}])]},
            "rule 'r1': action 1: unknown action 'alrt' (did you mean 'alert'?)",
        ),
        (
            {"rules": [_rule(actions=[{"ledger": {}, "alert": {"message": "x"}}])]},
            "rule 'r1': action 1: expected one of ledger, alert, republish, store as the only key",
        ),
        (
            {"rules": [_rule(actions=[{"alert": {"message": "x", "sevrity": "info"}}])]},
            "rule 'r1': action 1 (alert): unknown option 'sevrity' (did you mean 'severity'?);"
            " options: message, severity",
        ),
        (
            {"rules": [_rule(actions=[{"ledger": {"fast": True}}])]},
            "rule 'r1': action 1 (ledger): unknown option 'fast'; options: none",
        ),
        (
            {"rules": [_rule(actions=[{"alert": {"severity": "info"}}])]},
            "rule 'r1': action 1 (alert): option 'message' is required",
        ),
        (
            {"rules": [_rule(actions=[{"alert": {"message": "x", "severity": "panic"}}])]},
            "severity must be one of info, warning, critical, got 'panic'",
        ),
        (
            {"rules": [_rule(actions=[{"republish": {"topic": "out", "qos": 2}}])]},
            "rule 'r1': action 1 (republish): qos must be 0 or 1, got 2",
        ),
        (
            {"rules": [_rule(actions=[{"republish": {"topic": "out", "qos": True}}])]},
            "qos must be 0 or 1, got True",
        ),
        (
            {"rules": [_rule(actions=[{"store": {"table": "no spaces"}}])]},
            "rule 'r1': action 1 (store): table must be 1-64 characters",
        ),
        (
            {"rules": [_rule(actions=[{"ledger": {}}, {"ledger": {}}])]},
            "rule 'r1': 'ledger' is listed twice",
        ),
        (
            {"rules": [_rule(error_action={"ledger": {}})]},
            "rule 'r1': error_action (ledger): the ledger cannot be an error action",
        ),
    ],
)
def test_a_badly_shaped_file_is_refused_naming_the_rule_and_the_problem(
    data: Any, words: str
) -> None:
    assert words in _refused(data)


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        (
            f"SELECT devcie FROM {BATCH}",
            "rule 'r1' at 1:8: unknown field 'devcie' (did you mean 'device'?)",
        ),
        (
            f"SELECT device FORM {BATCH}",
            "rule 'r1' at 1:15: expected ',', AS, FROM or an operator, got name 'FORM'",
        ),
        ("SELECT device FROM 'edgetally/#/batch'", "rule 'r1' at 1:20: topic filter"),
        (f"SELECT registerd(precinct) AS r FROM {BATCH}", "unknown function 'registerd'"),
        (f"SELECT device_rate() AS r FROM {BATCH}", "device_rate() takes 1 argument, got 0"),
        (f"SELECT totals.ballotz AS t FROM {BATCH}", "unknown field 'ballotz' in 'totals'"),
    ],
)
def test_sql_errors_are_refused_with_their_position(sql: str, words: str) -> None:
    assert words in _refused({"rules": [_rule(sql=sql, actions=[{"ledger": {}}])]})


@pytest.mark.parametrize(
    "topic_filter", ["edgetaly/v1/+/+/batch", "edgetally/v1/+/+/receipt", "edgetally/v1/+/batch"]
)
def test_a_topic_filter_that_can_never_see_a_message_is_refused(topic_filter: str) -> None:
    message = _refused({"rules": [_rule(sql=f"SELECT device FROM '{topic_filter}'")]})
    assert f"topic filter {topic_filter!r} can never match a message the engine receives" in message


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "edgetally/#",
        "edgetally/v1/sample-2026/#",
        "+/+/+/+/batch",
        "edgetally/v1/_gateway/+/bundle",
    ],
)
def test_a_topic_filter_that_can_see_messages_is_accepted(topic_filter: str) -> None:
    parse_rules(
        {"rules": [_rule(sql=f"SELECT * FROM '{topic_filter}'", actions=[{"ledger": {}}])]}, "f"
    )


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/#", "a", True),
        ("a", "a/#", True),
        ("a/b", "a", False),
        ("a/+/c", "a/b/d", False),
        ("+/+", "a/+/c", False),
        ("#", "x/y/z", True),
        ("a/+/#", "a", False),
        ("a/+/#", "a/b", True),
    ],
)
def test_filters_overlap_as_mqtt_matching_does(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


@pytest.mark.parametrize(
    ("action", "words"),
    [
        (
            {"alert": {"message": "device ${devcie}"}},
            "action 1 (alert): message template uses ${devcie}, which the rule's rows do not have"
            " (did you mean 'device'?); they have: device, seq",
        ),
        (
            {"alert": {"message": "ballots ${ballots}"}},
            "message template uses ${ballots}, which the rule's rows do not have",
        ),
        (
            {"alert": {"message": "open ${device"}},
            "message template 'open ${device': '${' at 6 is not closed",
        ),
        ({"alert": {"message": "empty ${}"}}, "empty field name in '${}'"),
        ({"republish": {"topic": "out/${sq}"}}, "topic template uses ${sq}"),
        ({"republish": {"topic": "out/#"}}, "topic 'out/#' contains a wildcard"),
        (
            {"republish": {"topic": "edgetally/v1/${device}/${device}/receipt"}},
            "is one of EdgeTally's own topics (edgetally/v1/+/+/receipt)",
        ),
        (
            {"republish": {"topic": "edgetally/v1/x/${device}/batch"}},
            "is one of EdgeTally's own topics (edgetally/v1/+/+/batch)",
        ),
    ],
)
def test_a_template_field_the_rule_does_not_produce_and_bad_topics_are_refused(
    action: dict[str, Any], words: str
) -> None:
    assert words in _refused({"rules": [_rule(actions=[action])]})


def test_templates_are_checked_against_star_rows_and_error_fields() -> None:
    config = parse_rules(
        {
            "rules": [
                _rule(
                    sql=f"SELECT *, topic(2) AS version FROM {BATCH}",
                    actions=[{"store": {"table": "t"}}],
                    error_action={
                        "alert": {"message": "${rule} ${action} ${error} ${version} ${kid}"}
                    },
                )
            ]
        },
        "f",
    )
    assert config.rules[0].error_action is not None
    message = _refused(
        {
            "rules": [
                _rule(
                    sql=f"SELECT *, topic(2) AS version FROM {BATCH}",
                    actions=[{"alert": {"message": "${error}"}}],
                )
            ]
        }
    )
    assert "uses ${error}" in message  # error fields exist only for the error action


def test_foreach_without_do_rows_are_not_checked() -> None:
    parse_rules(
        {
            "rules": [
                _rule(
                    sql=f"FOREACH counts AS c FROM {BATCH}",
                    actions=[{"alert": {"message": "${key}: ${value}"}}],
                )
            ]
        },
        "f",
    )


@pytest.mark.parametrize("function", ["ledger_outcome()", "ledger_reason()", "device_ballots()"])
def test_a_ledger_rule_that_reads_the_ledgers_outcome_is_refused(function: str) -> None:
    message = _refused(
        {
            "rules": [
                _rule(
                    sql=f"SELECT device FROM {BATCH} WHERE {function} IS NULL",
                    actions=[{"ledger": {}}],
                )
            ]
        }
    )
    assert f"a rule with a ledger action runs before the ledger decides, so {function}" in message


def test_a_device_rate_window_beyond_the_maximum_is_refused() -> None:
    message = _refused(
        {
            "rules": [
                _rule(
                    sql=f"SELECT device, seq FROM {BATCH} WHERE device_rate({MAX_RATE_WINDOW_S + 1}) > 1"
                )
            ]
        }
    )
    assert f"device_rate({MAX_RATE_WINDOW_S + 1}) at 1:" in message
    computed = parse_rules(
        {"rules": [_rule(sql=f"SELECT device, seq FROM {BATCH} WHERE device_rate(seq) > 1")]}, "f"
    )
    assert computed.rate_window_s == MAX_RATE_WINDOW_S


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("rules.json", "{}", "use a .yaml, .yml or .toml file, not '.json'"),
        ("rules.yaml", "rules: [\n", "not valid YAML"),
        ("rules.toml", "rules = [", "not valid TOML"),
    ],
)
def test_an_unreadable_file_is_refused_naming_it(
    tmp_path: Path, name: str, text: str, words: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RulesFileError, match=f"rules file {path}: ") as caught:
        load_rules(path)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RulesFileError, match="cannot read it"):
        load_rules(tmp_path / "nope.yaml")


def test_the_rules_file_examples_in_the_docs_load_and_agree() -> None:
    import re
    import tomllib

    import yaml

    text = (REPO / "docs" / "rules.md").read_text()
    section = text[text.index("## The rules file") :]
    [from_yaml] = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    [from_toml] = re.findall(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    a = parse_rules(yaml.safe_load(from_yaml), "docs yaml")
    b = parse_rules(tomllib.loads(from_toml), "docs toml")
    assert [(r.name, r.rule.sql.split(), r.actions, r.error_action) for r in a.rules] == [
        (r.name, r.rule.sql.split(), r.actions, r.error_action) for r in b.rules
    ]
