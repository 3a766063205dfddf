"""The rule language: AWS IoT Core SQL with EMQX's FOREACH, compiled to Python closures.

Pure: no MQTT, no database. docs/rules.md documents the dialect for people; this docstring is
the contract for the engine built on top of it.

    SELECT <projection> FROM '<topic filter>' [WHERE <condition>]
    FOREACH <expr> AS <name> [DO <projection>] [INCASE <condition>] FROM '<topic filter>'
        [WHERE <condition>]

API::

    from cloud.rules import (
        RuleError,            # root; str(err): "rule 'name' at line:column: what was wrong"
        RuleSyntaxError,      # bad SQL
        RuleSchemaError,      # unknown field or function, wrong arity, bad topic filter, ...
        RuleEvaluationError,  # an engine function declared at compile time is missing from ctx
        FieldSchema,          # which fields a document can have: FieldSchema.batch(),
                              # .with_fields({...}); kinds .scalar() .map(k) .object({...})
                              # .array(k) .any(), or "scalar" / "any" / a dict
        EvalContext,          # per message: topic, timestamp_ms, clientid, functions
        CompiledRule,
        compile_rule,
        topic_matches,        # (filter, topic) -> bool, MQTT semantics for + and #
        validate_topic_filter,  # raises RuleSchemaError (no rule, no position)
        UNDEFINED,            # the value of a missing field (never in a result row)
    )

    rule = compile_rule(name, sql, schema=FieldSchema.batch(), functions={"registered": 1})
        # functions: the engine's extra functions, name -> arity (None: variadic); a call to
        # any other name is refused here, as is a field the schema does not have.
    rule.name; rule.sql; rule.topic_filter; rule.kind ("select" | "foreach")
    rule.columns            # names of the row's columns, or None (SELECT * / FOREACH without DO)
    rule.engine_functions   # frozenset of the engine functions the rule calls
    rule.matches(topic) -> bool
    rule.evaluate(doc, ctx) -> list[dict[str, Any]]
        # [] when WHERE (or every INCASE) is not true; one dict for SELECT; one per item for
        # FOREACH. Never raises on data (wrong types, missing fields: undefined); raises
        # RuleEvaluationError only if ctx lacks a declared engine function; an engine
        # function's own exception propagates unchanged.
    ctx = EvalContext(topic=..., timestamp_ms=..., clientid=None, functions={"registered": f})
        # keywords only; one per message (cheap: about 0.3 us); treat it as read-only. Engine
        # functions are called with evaluated arguments, never with an undefined one (the call
        # is then undefined); a None result is null. Functions of no argument (arity 0) read
        # what the engine knows about this message through their closure.

Compiled rules are immutable and may be evaluated from several threads at once.
"""

from cloud.rules._errors import RuleError, RuleEvaluationError, RuleSchemaError, RuleSyntaxError
from cloud.rules.compiler import CompiledRule, compile_rule
from cloud.rules.context import EvalContext
from cloud.rules.schema import FieldSchema
from cloud.rules.topics import topic_matches, validate_topic_filter
from cloud.rules.values import UNDEFINED

__all__ = [
    "UNDEFINED",
    "CompiledRule",
    "EvalContext",
    "FieldSchema",
    "RuleError",
    "RuleEvaluationError",
    "RuleSchemaError",
    "RuleSyntaxError",
    "compile_rule",
    "topic_matches",
    "validate_topic_filter",
]
