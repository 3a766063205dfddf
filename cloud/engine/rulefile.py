"""The rules file: YAML or TOML (by extension), loaded once into a typed, frozen config.

    rules:
      - name: tally                      # 1-64 of A-Z a-z 0-9 _ . -, unique in the file
        sql: SELECT * FROM 'edgetally/v1/+/+/batch'
        actions:
          - ledger: {}
          - alert: {severity: warning, message: "device ${device} seq ${seq}"}
          - republish: {topic: "alerts/${device}", qos: 1}
          - store: {table: finals}
        error_action: {store: {table: failures}}   # optional, any action but ledger
        enabled: true                             # optional

Everything is checked here, so that a bad file is refused before the worker connects, with
one line naming the file, the rule and the problem (:class:`cloud._exceptions.RulesFileError`):
the shape of the file, unknown keys, actions and options, duplicate rule names, the SQL (errors
from :mod:`cloud.rules`, with their position), a topic filter that is invalid or can never see a
message the engine receives, a template field the rule's rows cannot have, a republish topic
that would feed the engine its own output, and a ledger rule that reads the ledger's outcome
(it runs before the ledger). docs/rules.md, "The rules file", says the same for people.

The module stays whole (some 440 lines): it is one loader whose checks follow the file's
shape (file, rule, action, template, topic), each refusing with the same one-line message
naming where; they read best in that order, beside the config types they build.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cloud._exceptions import RulesFileError
from cloud.engine.actions import (
    ERROR_FIELDS,
    SEVERITIES,
    Action,
    AlertAction,
    LedgerAction,
    OutputAction,
    RepublishAction,
    StoreAction,
    Template,
)
from cloud.rules import CompiledRule, FieldSchema, RuleError, compile_rule, validate_topic_filter
from cloud.rules import ast as rule_ast
from cloud.rules.parser import parse
from protocol import (
    BATCH_FILTER,
    GATEWAY_BUNDLE_FILTER,
    GATEWAY_STATUS_FILTER,
    RECEIPT_FILTER,
)
from protocol.topics import STATUS_FILTER

DEFAULT_RULES = "default_rules.yaml"  # shipped in the cloud package

# The engine's functions (name -> arity), provided with every message (cloud/engine/engine.py).
ENGINE_FUNCTIONS: Mapping[str, int] = {
    "ledger_outcome": 0,
    "ledger_reason": 0,
    "registered": 1,
    "device_ballots": 0,
    "device_rate": 1,
    "source_ballots": 0,
    "other_source_ballots": 0,
}
# Known only once the ledger has decided: a rule with a ledger action cannot read them.
AFTER_LEDGER = frozenset({"ledger_outcome", "ledger_reason", "device_ballots", "source_ballots", "other_source_ballots"})
MAX_RATE_WINDOW_S = 3600  # device_rate(n) looks back at most this far

# What the engine receives: device batches (alone or unwrapped from bundles) and, for a bundle
# whose framing is corrupt, the bundle itself. A rule whose filter overlaps neither never runs.
ENGINE_INPUTS = (BATCH_FILTER, GATEWAY_BUNDLE_FILTER)
# EdgeTally's own topics: a republish there would be read back by the engine, or by devices
# and gateways as protocol messages.
RESERVED_TOPICS = (
    BATCH_FILTER,
    RECEIPT_FILTER,
    STATUS_FILTER,
    GATEWAY_STATUS_FILTER,
    GATEWAY_BUNDLE_FILTER,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_RULE_KEYS = ("name", "sql", "actions", "error_action", "enabled")
_OPTIONS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # action -> (required options, optional options)
    "ledger": ((), ()),
    "alert": (("message",), ("severity",)),
    "republish": (("topic",), ("qos",)),
    "store": (("table",), ()),
}


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule of the file, compiled, with its actions.

    ``ledger``: whether the rule selects messages for the ledger. ``outputs``: the actions that
    run per row, each with its slot (its 1-based place in the list). Both computed once.
    """

    name: str
    rule: CompiledRule
    actions: tuple[Action, ...]
    error_action: OutputAction | None = None
    enabled: bool = True
    ledger: bool = field(init=False)
    outputs: tuple[tuple[str, OutputAction], ...] = field(init=False)

    def __post_init__(self) -> None:
        outputs = tuple(
            (str(i), a) for i, a in enumerate(self.actions, 1) if not isinstance(a, LedgerAction)
        )
        object.__setattr__(self, "ledger", len(outputs) < len(self.actions))
        object.__setattr__(self, "outputs", outputs)


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The loaded file: where it came from and its rules, in file order."""

    source: str
    rules: tuple[RuleSpec, ...]
    rate_window_s: int  # the longest device_rate() window any rule can ask for

    @property
    def enabled(self) -> tuple[RuleSpec, ...]:
        return tuple(r for r in self.rules if r.enabled)


def default_rules_path() -> Path:
    return Path(str(resources.files("cloud").joinpath(DEFAULT_RULES)))


def load_rules(path: Path | None = None) -> RulesConfig:
    """Load and check a rules file (``None``: the default rules shipped with the package)."""
    path = default_rules_path() if path is None else path
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise RulesFileError(
            f"rules file {path}: use a .yaml, .yml or .toml file, not {suffix or 'no extension'!r}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RulesFileError(f"rules file {path}: cannot read it: {err}") from err
    try:
        data = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except tomllib.TOMLDecodeError as err:
        raise RulesFileError(f"rules file {path}: not valid TOML: {err}") from err
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise RulesFileError(f"rules file {path}: not valid YAML: {detail}") from err
    return parse_rules(data, str(path))


def parse_rules(data: Any, source: str) -> RulesConfig:
    """Check the decoded file (``source`` names it in errors) and compile its rules."""
    where = f"rules file {source}"
    if not isinstance(data, Mapping):
        raise RulesFileError(f"{where}: expected a mapping with a 'rules' list at the top")
    _no_unknown(data, ("rules",), where, "key")
    rules = data.get("rules")
    if not isinstance(rules, list) or not rules:
        raise RulesFileError(f"{where}: 'rules' must be a non-empty list of rules")
    specs: list[RuleSpec] = []
    windows: list[int] = []
    seen: set[str] = set()
    for number, raw in enumerate(rules, 1):
        spec, window = _rule(raw, f"{where}: rule {number}", where)
        if spec.name in seen:
            raise RulesFileError(f"{where}: rule {spec.name!r}: the name is used twice")
        seen.add(spec.name)
        specs.append(spec)
        windows.append(window)
    return RulesConfig(source, tuple(specs), max(windows, default=0))


def _rule(raw: Any, where: str, file_where: str) -> tuple[RuleSpec, int]:
    if not isinstance(raw, Mapping):
        raise RulesFileError(f"{where}: expected a mapping with name, sql and actions")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        quote = ""
        if isinstance(name, bool | int | float):
            quote = " (YAML read a bare word as a value: quote the name)"
        raise RulesFileError(
            f"{where}: 'name' must be 1-64 characters of A-Z a-z 0-9 _ . - (got {name!r}){quote}"
        )
    where = f"{file_where}: rule {name!r}"
    _no_unknown(raw, _RULE_KEYS, where, "key")
    sql = raw.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise RulesFileError(f"{where}: 'sql' must be the rule's SQL text")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RulesFileError(f"{where}: 'enabled' must be true or false, got {enabled!r}")
    try:
        compiled = compile_rule(name, sql, FieldSchema.batch(), ENGINE_FUNCTIONS)
        tree = parse(sql, rule=name)
    except RuleError as err:
        raise RulesFileError(f"{file_where}: {err}") from err
    _check_inputs(compiled, where)
    raw_actions = raw.get("actions")
    if not isinstance(raw_actions, list) or not raw_actions:
        raise RulesFileError(f"{where}: 'actions' must be a non-empty list")
    columns = row_columns(compiled, tree)
    actions = tuple(
        _action(a, f"{where}: action {i}", columns, error=False)
        for i, a in enumerate(raw_actions, 1)
    )
    if sum(isinstance(a, LedgerAction) for a in actions) > 1:
        raise RulesFileError(f"{where}: 'ledger' is listed twice")
    ledger = any(isinstance(a, LedgerAction) for a in actions)
    early = sorted(compiled.engine_functions & AFTER_LEDGER)
    if ledger and early:
        raise RulesFileError(
            f"{where}: a rule with a ledger action runs before the ledger decides, so"
            f" {', '.join(f + '()' for f in early)} would always be null; put the check in a"
            " rule of its own"
        )
    error_action: OutputAction | None = None
    if "error_action" in raw:
        error_columns = None if columns is None else columns | set(ERROR_FIELDS)
        found = _action(raw["error_action"], f"{where}: error_action", error_columns, error=True)
        assert not isinstance(found, LedgerAction)
        error_action = found
    return RuleSpec(name, compiled, actions, error_action, enabled), _rate_window(tree, where)


def _check_inputs(rule: CompiledRule, where: str) -> None:
    if not any(filters_overlap(rule.topic_filter, f) for f in ENGINE_INPUTS):
        raise RulesFileError(
            f"{where}: topic filter {rule.topic_filter!r} can never match a message the engine"
            f" receives ({', '.join(ENGINE_INPUTS)})"
        )


def _action(raw: Any, where: str, columns: set[str] | None, *, error: bool) -> Action:
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise RulesFileError(
            f"{where}: expected one of {_kinds()} as the only key, e.g. {{alert: {{message: ...}}}}"
        )
    ((kind, options),) = raw.items()
    if kind not in _OPTIONS:
        raise RulesFileError(
            f"{where}: unknown action {kind!r}{_hint(kind, _OPTIONS)}; actions: {_kinds()}"
        )
    where = f"{where} ({kind})"
    if kind == "ledger" and error:
        raise RulesFileError(f"{where}: the ledger cannot be an error action")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise RulesFileError(f"{where}: options must be a mapping, got {options!r}")
    required, optional = _OPTIONS[kind]
    _no_unknown(options, required + optional, where, "option")
    for option in required:
        if option not in options:
            raise RulesFileError(f"{where}: option {option!r} is required")
    if kind == "ledger":
        return LedgerAction()
    if kind == "alert":
        severity = options.get("severity", "warning")
        if severity not in SEVERITIES:
            raise RulesFileError(
                f"{where}: severity must be one of {', '.join(SEVERITIES)}, got {severity!r}"
            )
        return AlertAction(severity, _template(options["message"], "message", where, columns))
    if kind == "store":
        table = options["table"]
        if not isinstance(table, str) or not _NAME.match(table):
            raise RulesFileError(
                f"{where}: table must be 1-64 characters of A-Z a-z 0-9 _ . - (got {table!r})"
            )
        return StoreAction(table)
    qos = options.get("qos", 1)
    if qos not in (0, 1) or isinstance(qos, bool):
        raise RulesFileError(f"{where}: qos must be 0 or 1, got {qos!r}")
    topic = _template(options["topic"], "topic", where, columns)
    _check_republish_topic(topic, where)
    return RepublishAction(topic, int(qos))


def _template(raw: Any, option: str, where: str, columns: set[str] | None) -> Template:
    if not isinstance(raw, str) or not raw:
        raise RulesFileError(f"{where}: {option} must be a non-empty string")
    try:
        template = Template.parse(raw)
    except ValueError as err:
        raise RulesFileError(f"{where}: {option} template {raw!r}: {err}") from err
    if columns is not None:
        for name in template.fields:
            if name not in columns:
                raise RulesFileError(
                    f"{where}: {option} template uses ${{{name}}}, which the rule's rows do not"
                    f" have{_hint(name, columns)}; they have: {', '.join(sorted(columns))}"
                )
    return template


def _check_republish_topic(topic: Template, where: str) -> None:
    """Refuse wildcards in the literal text and topics that EdgeTally itself uses (a field
    that fills a whole level is taken as any value of that level)."""
    levels: list[str] = []
    for level in _levels(topic):
        if level is None:
            levels.append("+")
            continue
        if "+" in level or "#" in level:
            raise RulesFileError(f"{where}: topic {topic.text!r} contains a wildcard ('+' or '#')")
        levels.append(level)
    if "\0" in topic.text:
        raise RulesFileError(f"{where}: topic {topic.text!r} contains NUL")
    shape = "/".join(levels)
    for reserved in RESERVED_TOPICS:
        try:
            overlaps = filters_overlap(shape, reserved)
        except RuleError:  # e.g. '$share/...': not a filter, so not one of ours either
            overlaps = False
        if overlaps:
            raise RulesFileError(
                f"{where}: topic {topic.text!r} is one of EdgeTally's own topics ({reserved})"
            )


def _levels(template: Template) -> list[str | None]:
    """The template's topic levels; None for a level that holds a field."""
    levels: list[str | None] = [""]
    for part in template.parts:
        if isinstance(part, tuple):
            levels[-1] = None
            continue
        pieces = part.split("/")
        for i, piece in enumerate(pieces):
            if i:
                levels.append(piece)
            elif levels[-1] is not None:
                levels[-1] += piece
            elif piece:
                levels[-1] = None  # a field and text in one level: any value
    return levels


def row_columns(rule: CompiledRule, tree: rule_ast.Rule) -> set[str] | None:
    """The columns the rule's rows can have; None when that cannot be known (FOREACH without
    DO: the rows are the items)."""
    if rule.columns is not None:
        return set(rule.columns)
    if isinstance(tree, rule_ast.Foreach):
        return None
    named = {_column_name(item) for item in tree.projection if isinstance(item, rule_ast.Column)}
    return set(FieldSchema.batch()) | {n for n in named if n is not None}


def _column_name(column: rule_ast.Column) -> str | None:
    if column.alias is not None:
        return column.alias
    expr = column.expr
    if isinstance(expr, rule_ast.Name):
        return expr.name
    if isinstance(expr, rule_ast.Member) and isinstance(expr.key, str):
        return expr.key
    if isinstance(expr, rule_ast.Call):
        return expr.name
    return None


def _rate_window(tree: rule_ast.Rule, where: str) -> int:
    """The longest device_rate() window the rule asks for: its literal argument, or the
    maximum when it is computed. A literal beyond the maximum is refused."""
    longest = 0
    for call in _calls(tree, "device_rate"):
        (arg,) = call.args
        if isinstance(arg, rule_ast.Literal) and type(arg.value) in (int, float):
            if not 0 < arg.value <= MAX_RATE_WINDOW_S:
                raise RulesFileError(
                    f"{where}: device_rate({arg.value}) at {call.pos}: the window must be more"
                    f" than 0 and at most {MAX_RATE_WINDOW_S} seconds"
                )
            longest = max(longest, int(-(-arg.value // 1)))
        else:
            longest = MAX_RATE_WINDOW_S
    return longest


def _calls(node: Any, name: str) -> list[rule_ast.Call]:
    """Every call of ``name`` in the tree."""
    found: list[rule_ast.Call] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, rule_ast.Call) and current.name == name:
            found.append(current)
        if isinstance(current, tuple | list):
            stack.extend(current)
        elif hasattr(current, "__slots__") and not isinstance(current, str | rule_ast.Pos):
            stack.extend(getattr(current, slot) for slot in current.__slots__)
    return found


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic matches both MQTT filters (``+`` one level, ``#`` the rest)."""
    validate_topic_filter(a)
    validate_topic_filter(b)
    left, right = a.split("/"), b.split("/")
    for i in range(max(len(left), len(right))):
        x = left[i] if i < len(left) else None
        y = right[i] if i < len(right) else None
        if x == "#" or y == "#":
            return True  # '#' also matches its parent: 'a/#' matches 'a'
        if x is None or y is None:
            # one is longer: only a '#' at this level of the longer one could still match
            rest = y if x is None else x
            return rest == "#"
        if x != y and x != "+" and y != "+":
            return False
    return True


def _no_unknown(mapping: Mapping[Any, Any], known: tuple[str, ...], where: str, what: str) -> None:
    for key in mapping:
        if key not in known:
            raise RulesFileError(
                f"{where}: unknown {what} {key!r}{_hint(str(key), known)};"
                f" {what}s: {', '.join(known) or 'none'}"
            )


def _hint(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kinds() -> str:
    return ", ".join(_OPTIONS)
