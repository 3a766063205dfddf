"""Errors of the rule language. Lark's errors are translated into these at the parser's boundary
(``raise ... from exc``).

    RuleError               root: a rule that cannot be compiled or evaluated
    ├── RuleSyntaxError     the SQL does not parse: what was expected, what was found
    ├── RuleSchemaError     it parses but cannot work: a field that cannot exist, an unknown
    │                       function, a wrong number of arguments, a bad topic filter, a
    │                       column named twice, a FOREACH over a scalar
    └── RuleEvaluationError evaluation met a broken promise from the engine: an engine function
                            declared at compile time is missing from the EvalContext

``str(err)`` is one line that names the rule, the position (line:column, both 1-based) and what
was expected or wrong, e.g. ``rule 'tally' at 1:8: unknown field 'devcie' (did you mean
'device'?)``. The parts are attributes too (``rule``, ``line``, ``column``, ``detail``), and
:meth:`RuleError.excerpt` shows the offending line of SQL with a caret under the position.
Data never raises: a value of the wrong type or a missing field evaluates to *undefined*.
"""

from __future__ import annotations

from typing import Self


class RuleError(Exception):
    """Root of the rule language's errors; ``str(err)`` is one line for people."""

    def __init__(
        self,
        detail: str,
        *,
        rule: str | None = None,
        line: int | None = None,
        column: int | None = None,
        sql: str | None = None,
    ) -> None:
        self.detail = detail
        self.rule = rule
        self.line = line
        self.column = column
        self.sql = sql
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"rule {self.rule!r}" if self.rule is not None else "rule"
        if self.line is not None and self.column is not None:
            where = f"{where} at {self.line}:{self.column}"
        return f"{where}: {self.detail}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[object, ...]:  # keep keyword arguments through pickling
        return (_rebuild, (type(self), self.detail, self.rule, self.line, self.column, self.sql))

    def in_rule(self, rule: str, sql: str, line: int, column: int) -> Self:
        """The same error, placed in ``rule`` at ``line:column`` (for errors raised by helpers
        that know neither, such as :func:`cloud.rules.validate_topic_filter`)."""
        return type(self)(self.detail, rule=rule, line=line, column=column, sql=sql)

    def excerpt(self) -> str:
        """The SQL line the error is on and a caret under its column ('' when unknown)."""
        if self.sql is None or self.line is None or self.column is None:
            return ""
        lines = self.sql.splitlines() or [""]
        if not 1 <= self.line <= len(lines):
            return ""
        text = lines[self.line - 1]
        pad = "".join("\t" if ch == "\t" else " " for ch in text[: self.column - 1])
        return f"{text}\n{pad}^"


def _rebuild(
    cls: type[RuleError],
    detail: str,
    rule: str | None,
    line: int | None,
    column: int | None,
    sql: str | None,
) -> RuleError:
    return cls(detail, rule=rule, line=line, column=column, sql=sql)


class RuleSyntaxError(RuleError):
    pass


class RuleSchemaError(RuleError):
    pass


class RuleEvaluationError(RuleError):
    pass
