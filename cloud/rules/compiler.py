"""From the syntax tree to Python closures, once per rule; and :class:`CompiledRule`.

This module checks (every compile error is raised here or in the parser) and dispatches; the
closures themselves are built by :mod:`cloud.rules.operators` and :mod:`cloud.rules.functions`.
Every expression becomes one closure ``fn(doc, ctx, item) -> value`` built from its children's
closures, with the operator, the field name or the function chosen at compile time: evaluating
a rule calls closures and reads fields, it never looks at the tree. Literal operands are folded into specialised closures
(``ballots > 0`` tests one type and compares with a constant; ``x IN ('a', 'b')`` is a set
lookup). The schema is checked while compiling, so a rule that names a field that cannot exist,
an unknown function or a wrong number of arguments never gets to evaluate anything.

The module stays whole (some 510 lines): it is one pass over the syntax tree, with one
method per node kind, each checking its node against the schema and the rule's scope before
choosing its closure; the checks of one kind read best beside those of the others, and the
closures themselves already live in the two modules above.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloud.rules import ast
from cloud.rules import operators as op
from cloud.rules._errors import RuleError, RuleEvaluationError, RuleSchemaError, RuleSyntaxError
from cloud.rules.context import EvalContext
from cloud.rules.functions import BUILTINS, NOT_CONSTANT, WANTS_TEXT, Fn, kind_fits
from cloud.rules.operators import Doc, Row, Run
from cloud.rules.parser import KEYWORDS, parse
from cloud.rules.schema import ANY, SCALAR, ArrayKind, FieldSchema, Kind, MapKind, ObjectKind
from cloud.rules.topics import compile_topic_filter, validate_topic_filter

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class CompiledRule:
    """A rule ready to run. Immutable; safe to share between threads.

    ``name``, ``sql``, ``topic_filter``: as given. ``kind``: ``"select"`` or ``"foreach"``.
    ``columns``: the names every row can have, in order, or ``None`` when rows carry the
    document's own fields (``SELECT *``) or the FOREACH items (no DO).
    ``engine_functions``: the engine functions the rule calls.
    """

    __slots__ = (
        "_match",
        "_run",
        "columns",
        "engine_functions",
        "kind",
        "name",
        "sql",
        "topic_filter",
    )

    def __init__(
        self,
        name: str,
        sql: str,
        kind: str,
        topic_filter: str,
        columns: tuple[str, ...] | None,
        engine_functions: frozenset[str],
        run: Run,
    ) -> None:
        self.name = name
        self.sql = sql
        self.kind = kind
        self.topic_filter = topic_filter
        self.columns = columns
        self.engine_functions = engine_functions
        self._match = compile_topic_filter(topic_filter)
        self._run = run

    def matches(self, topic: str) -> bool:
        """Whether a message on ``topic`` is for this rule (MQTT wildcard semantics)."""
        return self._match(topic)

    def evaluate(self, doc: Doc, ctx: EvalContext) -> list[Row]:
        """The rows this message gives: [] when WHERE (or every INCASE) is not true; one row
        for SELECT; one per item that passes INCASE for FOREACH. Rows are new dicts but may
        share nested values with ``doc``: do not mutate them in place."""
        return self._run(doc, ctx)

    def __repr__(self) -> str:
        return f"CompiledRule({self.name!r}, {self.sql!r})"


def compile_rule(
    name: str,
    sql: str,
    schema: FieldSchema | None = None,
    functions: Mapping[str, int | None] | None = None,
) -> CompiledRule:
    """Parse and compile one rule.

    ``schema``: the fields documents can have (default :meth:`FieldSchema.batch`).
    ``functions``: the engine's extra functions, name -> number of arguments (``None``: any).
    Raises :class:`RuleSyntaxError` or :class:`RuleSchemaError` naming ``name``, the position
    and the problem; ``ValueError`` for a bad ``functions`` declaration (a bug in the caller).
    """
    engine = _check_declarations(functions or {})
    tree = parse(sql, rule=name)
    compiler = _Compiler(name, sql, schema if schema is not None else FieldSchema.batch(), engine)
    try:
        return compiler.rule(tree)
    except RecursionError as exc:
        raise RuleSyntaxError(
            "the rule is nested too deeply", rule=name, line=1, column=1, sql=sql
        ) from exc


def _check_declarations(functions: Mapping[str, int | None]) -> dict[str, int | None]:
    for fname, arity in functions.items():
        if not isinstance(fname, str) or not _IDENTIFIER.match(fname):
            raise ValueError(f"engine function name {fname!r} is not an identifier")
        if fname in BUILTINS or fname.upper() in KEYWORDS:
            raise ValueError(f"engine function {fname!r} clashes with a built-in or a keyword")
        if arity is not None and (type(arity) is not int or arity < 0):
            raise ValueError(f"engine function {fname!r}: arity must be an int >= 0 or None")
    return dict(functions)


@dataclass(frozen=True, slots=True)
class _Scope:
    item: str | None = None
    item_kind: Kind = ANY


@dataclass(frozen=True, slots=True)
class _Compiled:
    fn: Fn
    kind: Kind
    const: Any = NOT_CONSTANT


def _show(node: ast.Expr) -> str:
    """The expression as it reads in the rule, for messages."""
    if isinstance(node, ast.Name):
        return node.name
    if isinstance(node, ast.Member):
        base = _show(node.base)
        if isinstance(node.key, str):
            return f"{base}.{node.key}" if _IDENTIFIER.match(node.key) else f"{base}[{node.key!r}]"
        return f"{base}[{node.key}]"
    if isinstance(node, ast.Call):
        return f"{node.name}({', '.join(_show(a) for a in node.args)})"
    if isinstance(node, ast.Literal):
        return "null" if node.value is None else repr(node.value)
    return f"the expression at {node.pos}"


def _quoted(node: ast.Expr) -> str:
    """:func:`_show` in quotes when it is source text."""
    if isinstance(node, ast.Name | ast.Member | ast.Call):
        return f"'{_show(node)}'"
    return _show(node)


def _a(kind: Kind) -> str:
    """``kind`` with its article: 'a scalar', 'an array of scalar'."""
    text = str(kind)
    return f"an {text}" if text[0] in "aeiou" else f"a {text}"


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Compiler:
    def __init__(
        self, name: str, sql: str, schema: FieldSchema, engine: Mapping[str, int | None]
    ) -> None:
        self.name = name
        self.sql = sql
        self.schema = schema
        self.engine = engine
        self.used_engine: set[str] = set()

    def error(self, cls: type[RuleError], detail: str, pos: ast.Pos) -> RuleError:
        return cls(detail, rule=self.name, line=pos.line, column=pos.column, sql=self.sql)

    # --- statements -----------------------------------------------------------------------
    def rule(self, tree: ast.Rule) -> CompiledRule:
        topic = tree.topic
        try:
            validate_topic_filter(topic.text)
        except RuleSchemaError as exc:
            raise exc.in_rule(self.name, self.sql, topic.pos.line, topic.pos.column) from None
        if isinstance(tree, ast.Select):
            run, columns = self._select(tree)
            kind = "select"
        else:
            run, columns = self._foreach(tree)
            kind = "foreach"
        return CompiledRule(
            self.name, self.sql, kind, topic.text, columns, frozenset(self.used_engine), run
        )

    def _condition(self, node: ast.Expr | None, scope: _Scope) -> Fn | None:
        return None if node is None else self.expr(node, scope).fn

    def _select(self, tree: ast.Select) -> tuple[Run, tuple[str, ...] | None]:
        scope = _Scope()
        project, columns = self.projection(tree.projection, scope, allow_star=True)
        return op.select(project, self._condition(tree.where, scope)), columns

    def _foreach(self, tree: ast.Foreach) -> tuple[Run, tuple[str, ...] | None]:
        if tree.name in self.schema:
            raise self.error(
                RuleSchemaError,
                f"the FOREACH name {tree.name!r} is also a field of the document; choose another",
                tree.name_pos,
            )
        source = self.expr(tree.source, _Scope())
        scope = _Scope(tree.name, self._item_kind(tree.source, source.kind))
        where = self._condition(tree.where, _Scope())
        incase = self._condition(tree.incase, scope)
        if tree.projection is None:
            return op.foreach(source.fn, op.item_row(tree.name), incase, where), None
        project, columns = self.projection(tree.projection, scope, allow_star=False)
        return op.foreach(source.fn, project, incase, where), columns

    def _item_kind(self, node: ast.Expr, kind: Kind) -> Kind:
        if isinstance(kind, MapKind):
            return ObjectKind({"key": SCALAR, "value": kind.values})
        if isinstance(kind, ObjectKind):
            return ObjectKind({"key": SCALAR, "value": ANY})
        if isinstance(kind, ArrayKind):
            return kind.items
        if kind == SCALAR:
            raise self.error(
                RuleSchemaError,
                f"FOREACH needs an array or a map; {_quoted(node)} is a scalar",
                node.pos,
            )
        return ANY

    def projection(
        self, items: tuple[ast.Item, ...], scope: _Scope, *, allow_star: bool
    ) -> tuple[Fn, tuple[str, ...] | None]:
        star = False
        columns: list[tuple[str, Fn]] = []
        first_at: dict[str, ast.Pos] = {}
        for item in items:
            if isinstance(item, ast.Star):
                if not allow_star:
                    raise self.error(
                        RuleSyntaxError,
                        "'*' cannot be used in DO: a FOREACH row is made of its DO columns",
                        item.pos,
                    )
                if star:
                    raise self.error(RuleSyntaxError, "'*' appears twice", item.pos)
                star = True
                continue
            name = item.alias if item.alias is not None else self._column_name(item)
            name_pos = item.alias_pos or item.pos
            if name in first_at:
                raise self.error(
                    RuleSchemaError,
                    f"column {name!r} is named twice (first at {first_at[name]}); "
                    "give one of them another name with AS",
                    name_pos,
                )
            first_at[name] = name_pos
            columns.append((name, self.expr(item.expr, scope).fn))
        project = op.project(tuple(columns), star)
        return project, (None if star else tuple(name for name, _ in columns))

    def _column_name(self, column: ast.Column) -> str:
        expr = column.expr
        if isinstance(expr, ast.Name):
            return expr.name
        if isinstance(expr, ast.Member) and isinstance(expr.key, str):
            return expr.key
        if isinstance(expr, ast.Call):
            return expr.name
        raise self.error(
            RuleSyntaxError,
            "this column needs a name: write '<expression> AS <name>' (only fields and "
            "function calls name themselves)",
            column.pos,
        )

    # --- expressions ----------------------------------------------------------------------
    def expr(self, node: ast.Expr, scope: _Scope) -> _Compiled:
        if isinstance(node, ast.Literal):
            return _Compiled(op.constant(node.value), SCALAR, node.value)
        if isinstance(node, ast.Name):
            return self._name(node, scope)
        if isinstance(node, ast.Member):
            return self._member(node, scope)
        if isinstance(node, ast.Index):
            return self._index(node, scope)
        if isinstance(node, ast.Call):
            return self._call(node, scope)
        if isinstance(node, ast.Neg):
            operand = self._number_operand(node.operand, scope, "unary '-'")
            return _Compiled(op.negate(operand.fn), SCALAR)
        if isinstance(node, ast.Not):
            return self._not(node, scope)
        if isinstance(node, ast.Arith):
            return self._arith(node, scope)
        if isinstance(node, ast.Compare):
            return self._compare(node, scope)
        if isinstance(node, ast.Logic):
            return self._logic(node, scope)
        if isinstance(node, ast.In):
            return self._in(node, scope)
        return self._is_null(node, scope)

    def _name(self, node: ast.Name, scope: _Scope) -> _Compiled:
        name = node.name
        if name == scope.item:
            return _Compiled(op.the_item, scope.item_kind)
        kind = self.schema.get(name)
        if kind is None:
            known = list(self.schema) + ([scope.item] if scope.item else [])
            hint = _suggest(name, known)
            if not hint and (name in BUILTINS or name in self.engine):
                hint = f" ({name} is a function: {name}(...))"
            raise self.error(RuleSchemaError, f"unknown field {name!r}{hint}", node.pos)
        return _Compiled(op.field(name), kind)

    def _member_kind(self, node: ast.Member, base: Kind) -> Kind:
        key = node.key
        where = _quoted(node.base)
        if base == ANY:
            return ANY
        if isinstance(base, ObjectKind):
            if isinstance(key, str) and key in base.fields:
                return base.fields[key]
            fields = list(base.fields)
            hint = _suggest(key, fields) if isinstance(key, str) else ""
            raise self.error(
                RuleSchemaError,
                f"unknown field {key!r} in {where}{hint}; it has: {', '.join(fields)}",
                node.pos,
            )
        if isinstance(base, MapKind):
            if isinstance(key, str):
                return base.values
            raise self.error(
                RuleSchemaError,
                f"{where} is a map, its keys are strings: write {_show(node.base)}['...'], "
                f"not [{key}]",
                node.pos,
            )
        if isinstance(base, ArrayKind):
            if isinstance(key, int):
                return base.items
            raise self.error(
                RuleSchemaError,
                f"{where} is an array: index it with a number, not {key!r}",
                node.pos,
            )
        raise self.error(RuleSchemaError, f"{where} is a scalar: it has no field {key!r}", node.pos)

    def _member(self, node: ast.Member, scope: _Scope) -> _Compiled:
        base = self.expr(node.base, scope)
        kind = self._member_kind(node, base.kind)
        key = node.key
        if isinstance(key, str) and isinstance(node.base, ast.Name):
            if node.base.name == scope.item:
                return _Compiled(op.item_member(key), kind)
            return _Compiled(op.field_member(node.base.name, key), kind)
        return _Compiled(op.key_member(base.fn, key), kind)

    def _index(self, node: ast.Index, scope: _Scope) -> _Compiled:
        base = self.expr(node.base, scope)
        index = self.expr(node.index, scope)
        if base.kind == SCALAR:
            raise self.error(
                RuleSchemaError, f"{_quoted(node.base)} is a scalar: it cannot be indexed", node.pos
            )
        kind: Kind = ANY
        if isinstance(base.kind, MapKind):
            kind = base.kind.values
        elif isinstance(base.kind, ArrayKind):
            kind = base.kind.items
        return _Compiled(op.index(base.fn, index.fn), kind)

    def _call(self, node: ast.Call, scope: _Scope) -> _Compiled:
        args = tuple(self.expr(a, scope) for a in node.args)
        fns = tuple(a.fn for a in args)
        builtin = BUILTINS.get(node.name)
        if builtin is not None:
            count = len(args)
            if count < builtin.min_args or (
                builtin.max_args is not None and count > builtin.max_args
            ):
                raise self.error(
                    RuleSchemaError,
                    f"{builtin.name}() takes {builtin.arity()}, got {count} ({builtin.signature})",
                    node.pos,
                )
            for arg_node, arg in zip(node.args, args, strict=True):
                if not kind_fits(builtin.wants, arg.kind):
                    raise self.error(
                        RuleSchemaError,
                        f"{builtin.name}() needs {WANTS_TEXT[builtin.wants]}; "
                        f"{_quoted(arg_node)} is {_a(arg.kind)}",
                        arg_node.pos,
                    )
            if builtin.name == "topic" and args:
                level = args[0].const
                if level is not NOT_CONSTANT and (type(level) is not int or level < 1):
                    raise self.error(
                        RuleSchemaError,
                        f"topic(n) counts levels from 1; {_quoted(node.args[0])} is not a level",
                        node.args[0].pos,
                    )
            return _Compiled(
                builtin.build(fns, tuple(a.const for a in args)),
                builtin.result(tuple(a.kind for a in args)),
            )
        if node.name in self.engine:
            return self._engine_call(node, fns)
        known = sorted([*BUILTINS, *self.engine])
        hint = _suggest(node.name, known)
        if not hint and node.name in self.schema:
            hint = f" ({node.name} is a field, not a function)"
        raise self.error(RuleSchemaError, f"unknown function {node.name!r}{hint}", node.pos)

    def _engine_call(self, node: ast.Call, fns: tuple[Fn, ...]) -> _Compiled:
        fname = node.name
        arity = self.engine[fname]
        if arity is not None and len(fns) != arity:
            raise self.error(
                RuleSchemaError,
                f"{fname}() takes {arity} argument{'s' if arity != 1 else ''}, got {len(fns)}",
                node.pos,
            )
        self.used_engine.add(fname)
        rule, sql, pos = self.name, self.sql, node.pos

        def missing() -> RuleEvaluationError:
            return RuleEvaluationError(
                f"engine function {fname!r} is not in the EvalContext",
                rule=rule,
                line=pos.line,
                column=pos.column,
                sql=sql,
            )

        return _Compiled(op.engine_call(fname, fns, missing), ANY)

    def _number_operand(
        self, node: ast.Expr, scope: _Scope, what: str, needs: str = "numbers"
    ) -> _Compiled:
        compiled = self.expr(node, scope)
        if compiled.kind not in (SCALAR, ANY):
            raise self.error(
                RuleSchemaError,
                f"{what} needs {needs}; {_quoted(node)} is {_a(compiled.kind)}",
                node.pos,
            )
        if isinstance(node, ast.Literal) and node.value is None:
            raise self.error(RuleSchemaError, f"{what} with null is always undefined", node.pos)
        return compiled

    def _arith(self, node: ast.Arith, scope: _Scope) -> _Compiled:
        what = f"'{node.op}'"
        left = self._number_operand(node.left, scope, what).fn
        right = self._number_operand(node.right, scope, what).fn
        return _Compiled(op.arith(node.op, left, right), SCALAR)

    def _compare(self, node: ast.Compare, scope: _Scope) -> _Compiled:
        symbol = node.op
        for side in (node.left, node.right):
            if isinstance(side, ast.Literal) and side.value is None:
                fix = "IS NOT NULL" if symbol == "!=" else "IS NULL"
                raise self.error(
                    RuleSchemaError,
                    f"a comparison with null is never true: write '{fix}'",
                    side.pos,
                )
        if symbol in op.RELATIONS:
            needs = "numbers or strings"
            left = self._number_operand(node.left, scope, f"'{symbol}'", needs)
            right = self._number_operand(node.right, scope, f"'{symbol}'", needs)
            return _Compiled(op.relation(symbol, left.fn, right.fn, right.const), SCALAR)
        left = self.expr(node.left, scope)
        right = self.expr(node.right, scope)
        if left.const is not NOT_CONSTANT and right.const is NOT_CONSTANT:
            left, right = right, left  # 'x' = device: the literal goes right (= is symmetric)
        return _Compiled(op.equality(symbol == "=", left.fn, right.fn, right.const), SCALAR)

    def _logic(self, node: ast.Logic, scope: _Scope) -> _Compiled:
        left = self.expr(node.left, scope).fn
        right = self.expr(node.right, scope).fn
        build = op.logic_and if node.op == "and" else op.logic_or
        return _Compiled(build(left, right), SCALAR)

    def _not(self, node: ast.Not, scope: _Scope) -> _Compiled:
        return _Compiled(op.logic_not(self.expr(node.operand, scope).fn), SCALAR)

    def _in(self, node: ast.In, scope: _Scope) -> _Compiled:
        value_fn = self.expr(node.value, scope).fn
        options = [self.expr(o, scope) for o in node.options]
        if all(o.const is not NOT_CONSTANT for o in options):
            constants = [o.const for o in options]
            return _Compiled(op.in_constants(value_fn, constants, node.negated), SCALAR)
        fns = tuple(o.fn for o in options)
        return _Compiled(op.in_values(value_fn, fns, node.negated), SCALAR)

    def _is_null(self, node: ast.IsNull, scope: _Scope) -> _Compiled:
        return _Compiled(op.is_null(self.expr(node.value, scope).fn, node.negated), SCALAR)
