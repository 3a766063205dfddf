"""The rule grammar (Lark, LALR(1)) and the translation of its parse tree into
:mod:`cloud.rules.ast` nodes.

Keywords are case-insensitive and reserved (a field named like one is reached with brackets:
``doc['from']`` is not possible at the top level, but no batch field is a keyword). The lexer is
Lark's basic lexer, not the contextual one, so that a misplaced keyword is reported as such
instead of being read as a field name. Lark's exceptions are translated into
:class:`RuleSyntaxError` with the position and a readable list of what was expected.

The module stays whole (some 410 lines): the grammar and the builder that turns its parse
tree into nodes correspond rule for rule, and the syntax-error translation reads the grammar's
terminal names; they read best side by side.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from cloud.rules import ast
from cloud.rules._errors import RuleSyntaxError

GRAMMAR = r"""
?start: select | foreach

select: SELECT projection FROM STRING [WHERE expr]
foreach: FOREACH expr AS NAME [DO projection] [INCASE expr] FROM STRING [WHERE expr]

projection: item (COMMA item)*
item: STAR                              -> star
    | expr [AS NAME]                    -> column

?expr: or_expr
?or_expr: and_expr | or_expr OR and_expr      -> logic
?and_expr: not_expr | and_expr AND not_expr   -> logic
?not_expr: predicate | NOT not_expr           -> not_
?predicate: sum
    | sum COMPARE sum                   -> compare
    | sum IS NULL                       -> is_null
    | sum IS NOT NULL                   -> is_not_null
    | sum IN LPAR expr_list RPAR        -> in_
    | sum NOT IN LPAR expr_list RPAR    -> not_in
?sum: product | sum (PLUS | MINUS) product     -> arith
?product: unary | product (STAR | SLASH | PERCENT) unary -> arith
?unary: postfix | MINUS unary           -> neg
?postfix: primary
    | postfix DOT NAME                  -> member
    | postfix LSQB expr RSQB            -> index
?primary: STRING                        -> string
    | INT                               -> int
    | FLOAT                             -> float
    | TRUE                              -> true
    | FALSE                             -> false
    | NULL                              -> null
    | NAME                              -> name
    | NAME LPAR [expr_list] RPAR        -> call
    | LPAR expr RPAR                    -> paren
expr_list: expr (COMMA expr)*

SELECT: "select"i
FOREACH: "foreach"i
AS: "as"i
DO: "do"i
INCASE: "incase"i
FROM: "from"i
WHERE: "where"i
OR: "or"i
AND: "and"i
NOT: "not"i
IS: "is"i
IN: "in"i
NULL: "null"i
TRUE: "true"i
FALSE: "false"i
COMPARE: "<=" | ">=" | "<>" | "!=" | "=" | "<" | ">"
PLUS: "+"
MINUS: "-"
STAR: "*"
SLASH: "/"
PERCENT: "%"
COMMA: ","
DOT: "."
LPAR: "("
RPAR: ")"
LSQB: "["
RSQB: "]"
NAME: /[a-z_][a-z0-9_]*/i
STRING: /'(?:[^']|'')*'/
FLOAT: /(?:\d+\.\d+|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+/
INT: /\d+/
%import common.WS
%ignore WS
"""

KEYWORDS = frozenset(
    {
        "SELECT",
        "FOREACH",
        "AS",
        "DO",
        "INCASE",
        "FROM",
        "WHERE",
        "OR",
        "AND",
        "NOT",
        "IS",
        "IN",
        "NULL",
        "TRUE",
        "FALSE",
    }
)
_EXPRESSION_START = frozenset(
    {"NAME", "STRING", "INT", "FLOAT", "TRUE", "FALSE", "NULL", "LPAR", "MINUS"}
)
_OPERATORS = frozenset(
    {"PLUS", "MINUS", "STAR", "SLASH", "PERCENT", "COMPARE", "AND", "OR", "IN", "IS", "NOT"}
)
_PUNCTUATION = {
    "COMMA": "','",
    "DOT": "'.'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "STAR": "'*'",
    "MINUS": "'-'",
    "PLUS": "'+'",
    "SLASH": "'/'",
    "PERCENT": "'%'",
    "COMPARE": "a comparison",
    "NAME": "a name",
    "STRING": "a quoted string",
    "INT": "a number",
    "FLOAT": "a number",
    "$END": "the end of the rule",
}
# The order in which expected things are listed (most helpful first).
_ORDER = ["an expression", "a name", "a quoted string", "a number", "'('", "')'", "']'", "','"]


@functools.cache
def _lark() -> Lark:
    return Lark(
        GRAMMAR, parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=True
    )


def parse(sql: str, rule: str | None = None) -> ast.Rule:
    """Parse one rule; :class:`RuleSyntaxError` names the position and what was expected."""
    try:
        tree = _lark().parse(sql)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, sql, rule) from exc
    try:
        return _Builder(sql).rule(tree)
    except RecursionError as exc:
        raise RuleSyntaxError(
            "the rule is nested too deeply", rule=rule, line=1, column=1, sql=sql
        ) from exc


# --- errors ------------------------------------------------------------------------------


def _end_position(sql: str) -> tuple[int, int]:
    lines = sql.split("\n")
    return len(lines), len(lines[-1]) + 1


def _describe_expected(names: Iterable[str]) -> str:
    names = set(names)
    words: list[str] = []
    if names | {"NOT"} >= _EXPRESSION_START:
        words.append("an expression")
        names -= _EXPRESSION_START | {"NOT"}
    if len(names & _OPERATORS) >= 3:
        # after a complete expression: also drop what could extend it ('.', '[', a call's '(')
        names -= _OPERATORS | {"DOT", "LSQB", "LPAR"}
        operators = True
    else:
        operators = False
    for name in names:
        words.append(name if name in KEYWORDS else _PUNCTUATION.get(name, name))
    if operators:
        words.append("an operator")
    unique = sorted(set(words), key=lambda w: (_rank(w), w))
    if not unique:
        return "nothing more"
    if len(unique) == 1:
        return unique[0]
    return f"{', '.join(unique[:-1])} or {unique[-1]}"


def _rank(word: str) -> int:
    if word == "an operator":
        return 100
    if word in _ORDER:
        return _ORDER.index(word)
    if word.isupper():  # keywords after the punctuation, alphabetically
        return 50
    return 60


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "the end of the rule"
    if token.type in KEYWORDS:
        return str(token.value).upper()
    if token.type == "NAME":
        return f"name {token.value!r}"
    if token.type == "STRING":
        return f"string {token.value}"
    if token.type in ("INT", "FLOAT"):
        return f"number {token.value}"
    return repr(str(token.value))


def _syntax_error(exc: UnexpectedInput, sql: str, rule: str | None) -> RuleSyntaxError:
    line, column = exc.line, exc.column
    if isinstance(exc, UnexpectedToken):
        if exc.token.type == "$END":
            line, column = _end_position(sql)
        expected = exc.accepts or exc.expected
        detail = f"expected {_describe_expected(expected)}, got {_describe_token(exc.token)}"
        if exc.token.type in KEYWORDS and "NAME" in expected and exc.token.type != "FROM":
            detail += f" ({exc.token.type} is a keyword, not a name)"
        if exc.token.type == "NAME" and "STRING" in expected and "FROM" not in expected:
            detail += " (the topic filter is a quoted string: FROM 'a/+/b')"
    elif isinstance(exc, UnexpectedCharacters):
        char = exc.char
        if char == "'":
            detail = "unterminated string: a quote (') opens it and none closes it"
        elif char == '"':
            detail = "unexpected '\"': strings are in single quotes ('like this'), a quote inside is doubled ('it''s')"
        else:
            detail = f"unexpected character {char!r}"
            if char == "!":
                detail += " (not equal is != or <>)"
            elif char == "#":
                detail += " (the topic filter is a quoted string: FROM 'a/#')"
    else:  # UnexpectedEOF: not raised by the LALR parser, kept for completeness
        line, column = _end_position(sql)
        detail = "unexpected end of the rule"
    if not isinstance(line, int) or line < 1:
        line, column = _end_position(sql)
    return RuleSyntaxError(detail, rule=rule, line=line, column=column, sql=sql)


# --- tree -> ast -------------------------------------------------------------------------


def _pos_of(node: Tree[Token] | Token) -> ast.Pos:
    if isinstance(node, Token):
        return ast.Pos(node.line or 1, node.column or 1)
    return ast.Pos(node.meta.line, node.meta.column)


def _unquote(token: Token) -> str:
    return str(token.value)[1:-1].replace("''", "'")


class _Builder:
    """Turns Lark's tree into AST nodes. Keyword and punctuation tokens are skipped."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self._expr: dict[str, Callable[[Tree[Token]], ast.Expr]] = {
            "string": lambda t: ast.Literal(_unquote(self._tok(t, 0)), _pos_of(t)),
            "int": lambda t: ast.Literal(int(self._tok(t, 0).value), _pos_of(t)),
            "float": lambda t: ast.Literal(float(self._tok(t, 0).value), _pos_of(t)),
            "true": lambda t: ast.Literal(True, _pos_of(t)),
            "false": lambda t: ast.Literal(False, _pos_of(t)),
            "null": lambda t: ast.Literal(None, _pos_of(t)),
            "name": lambda t: ast.Name(str(self._tok(t, 0).value), _pos_of(t)),
            "paren": lambda t: self.expr(t.children[1]),
            "call": self._call,
            "member": self._member,
            "index": self._index,
            "neg": self._neg,
            "not_": lambda t: ast.Not(self.expr(t.children[1]), _pos_of(t)),
            "arith": self._binary(ast.Arith),
            "compare": self._compare,
            "logic": self._logic,
            "is_null": lambda t: ast.IsNull(
                self.expr(t.children[0]), False, _pos_of(t.children[1])
            ),
            "is_not_null": lambda t: ast.IsNull(
                self.expr(t.children[0]), True, _pos_of(t.children[1])
            ),
            "in_": lambda t: self._in(t, negated=False),
            "not_in": lambda t: self._in(t, negated=True),
        }

    @staticmethod
    def _tok(tree: Tree[Token], index: int) -> Token:
        child = tree.children[index]
        assert isinstance(child, Token), child
        return child

    @staticmethod
    def _tree(node: Tree[Token] | Token | None) -> Tree[Token]:
        assert isinstance(node, Tree), node
        return node

    def rule(self, tree: Tree[Token]) -> ast.Rule:
        c = tree.children
        if tree.data == "select":
            # SELECT projection FROM STRING [WHERE expr]
            return ast.Select(
                projection=self.projection(self._tree(c[1])),
                topic=self._topic(c[3]),
                where=None if c[5] is None else self.expr(c[5]),
            )
        # FOREACH expr AS NAME [DO projection] [INCASE expr] FROM STRING [WHERE expr]
        name = c[3]
        assert isinstance(name, Token)
        return ast.Foreach(
            source=self.expr(c[1]),
            name=str(name.value),
            name_pos=_pos_of(name),
            projection=None if c[5] is None else self.projection(self._tree(c[5])),
            incase=None if c[7] is None else self.expr(c[7]),
            topic=self._topic(c[9]),
            where=None if c[11] is None else self.expr(c[11]),
        )

    def _topic(self, node: Tree[Token] | Token | None) -> ast.TopicFilter:
        assert isinstance(node, Token)
        return ast.TopicFilter(_unquote(node), _pos_of(node))

    def projection(self, tree: Tree[Token]) -> tuple[ast.Item, ...]:
        items: list[ast.Item] = []
        for child in tree.children:
            if not isinstance(child, Tree):
                continue  # commas
            if child.data == "star":
                items.append(ast.Star(_pos_of(child)))
                continue
            expr_node, _as, alias = child.children
            if alias is None:
                items.append(ast.Column(self.expr(expr_node), None, _pos_of(child)))
                continue
            assert isinstance(alias, Token)
            items.append(
                ast.Column(self.expr(expr_node), str(alias.value), _pos_of(child), _pos_of(alias))
            )
        return tuple(items)

    def expr(self, node: Tree[Token] | Token | None) -> ast.Expr:
        tree = self._tree(node)
        return self._expr[str(tree.data)](tree)

    def _list(self, node: Tree[Token] | Token | None) -> tuple[ast.Expr, ...]:
        if node is None:
            return ()
        tree = self._tree(node)
        return tuple(self.expr(c) for c in tree.children if isinstance(c, Tree))

    def _call(self, tree: Tree[Token]) -> ast.Expr:
        name = self._tok(tree, 0)
        return ast.Call(str(name.value), self._list(tree.children[2]), _pos_of(name))

    def _member(self, tree: Tree[Token]) -> ast.Expr:
        key = self._tok(tree, 2)
        return ast.Member(self.expr(tree.children[0]), str(key.value), _pos_of(key))

    def _index(self, tree: Tree[Token]) -> ast.Expr:
        base = self.expr(tree.children[0])
        index = self.expr(tree.children[2])
        if isinstance(index, ast.Literal) and (
            isinstance(index.value, str)
            or (isinstance(index.value, int) and not isinstance(index.value, bool))
        ):
            return ast.Member(base, index.value, index.pos)
        return ast.Index(base, index, index.pos)

    def _neg(self, tree: Tree[Token]) -> ast.Expr:
        operand = self.expr(tree.children[1])
        pos = _pos_of(tree)
        if isinstance(operand, ast.Literal) and type(operand.value) in (int, float):
            return ast.Literal(-operand.value, pos)  # a negative number written in the rule
        return ast.Neg(operand, pos)

    def _binary(self, cls: type[ast.Arith]) -> Callable[[Tree[Token]], ast.Expr]:
        def build(tree: Tree[Token]) -> ast.Expr:
            left, op, right = tree.children
            assert isinstance(op, Token)
            return cls(str(op.value), self.expr(left), self.expr(right), _pos_of(op))

        return build

    def _compare(self, tree: Tree[Token]) -> ast.Expr:
        left, op, right = tree.children
        assert isinstance(op, Token)
        symbol = "!=" if op.value == "<>" else str(op.value)
        return ast.Compare(symbol, self.expr(left), self.expr(right), _pos_of(op))

    def _logic(self, tree: Tree[Token]) -> ast.Expr:
        left, op, right = tree.children
        assert isinstance(op, Token)
        return ast.Logic(str(op.value).lower(), self.expr(left), self.expr(right), _pos_of(op))

    def _in(self, tree: Tree[Token], *, negated: bool) -> ast.Expr:
        value = tree.children[0]
        lists = [c for c in tree.children if isinstance(c, Tree) and c.data == "expr_list"]
        keyword = next(c for c in tree.children if isinstance(c, Token) and c.type == "IN")
        return ast.In(self.expr(value), self._list(lists[-1]), negated, _pos_of(keyword))
