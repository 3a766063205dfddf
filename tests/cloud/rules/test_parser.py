"""The parser: each construct becomes the syntax tree it should, with positions."""

from __future__ import annotations

import pytest

from cloud.rules import ast
from cloud.rules.parser import parse


def where(condition: str) -> ast.Expr:
    tree = parse(f"SELECT a FROM 't' WHERE {condition}")
    assert isinstance(tree, ast.Select) and tree.where is not None
    return tree.where


def shape(node: object) -> object:
    """A tree without positions, for comparing."""
    if isinstance(node, ast.Literal):
        return node.value
    if isinstance(node, ast.Name):
        return node.name
    if isinstance(node, ast.Member):
        return ("member", shape(node.base), node.key)
    if isinstance(node, ast.Index):
        return ("index", shape(node.base), shape(node.index))
    if isinstance(node, ast.Call):
        return ("call", node.name, *[shape(a) for a in node.args])
    if isinstance(node, ast.Neg):
        return ("neg", shape(node.operand))
    if isinstance(node, ast.Not):
        return ("not", shape(node.operand))
    if isinstance(node, ast.Arith | ast.Compare | ast.Logic):
        return (node.op, shape(node.left), shape(node.right))
    if isinstance(node, ast.In):
        return (
            "not in" if node.negated else "in",
            shape(node.value),
            *[shape(o) for o in node.options],
        )
    if isinstance(node, ast.IsNull):
        return ("is not null" if node.negated else "is null", shape(node.value))
    raise AssertionError(node)


def test_select_star() -> None:
    tree = parse("SELECT * FROM 'edgetally/v1/+/+/batch'")
    assert tree == ast.Select(
        (ast.Star(ast.Pos(1, 8)),),
        ast.TopicFilter("edgetally/v1/+/+/batch", ast.Pos(1, 15)),
        None,
    )


def test_select_columns_aliases_and_where() -> None:
    tree = parse("SELECT device, counts.mayor AS m, *\nFROM 'a/#'\nWHERE seq > 1")
    assert isinstance(tree, ast.Select)
    first, second, star = tree.projection
    assert first == ast.Column(ast.Name("device", ast.Pos(1, 8)), None, ast.Pos(1, 8))
    assert isinstance(second, ast.Column) and second.alias == "m"
    assert second.alias_pos == ast.Pos(1, 32)
    assert shape(second.expr) == ("member", "counts", "mayor")
    assert star == ast.Star(ast.Pos(1, 35))
    assert tree.topic == ast.TopicFilter("a/#", ast.Pos(2, 6))
    assert tree.where is not None and shape(tree.where) == (">", "seq", 1)


def test_foreach_with_every_clause() -> None:
    tree = parse(
        "FOREACH counts AS c DO c.key AS contest INCASE c.key != 'x' FROM 't' WHERE NOT final"
    )
    assert isinstance(tree, ast.Foreach)
    assert shape(tree.source) == "counts"
    assert (tree.name, tree.name_pos) == ("c", ast.Pos(1, 19))
    assert tree.projection is not None and len(tree.projection) == 1
    assert tree.incase is not None and shape(tree.incase) == ("!=", ("member", "c", "key"), "x")
    assert tree.topic.text == "t"
    assert tree.where is not None and shape(tree.where) == ("not", "final")


def test_foreach_with_only_the_required_clauses() -> None:
    tree = parse("foreach values(counts) as v from 't'")
    assert isinstance(tree, ast.Foreach)
    assert (tree.projection, tree.incase, tree.where) == (None, None, None)
    assert shape(tree.source) == ("call", "values", "counts")


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("a OR b AND c", ("or", "a", ("and", "b", "c"))),
        ("a AND b OR c", ("or", ("and", "a", "b"), "c")),
        ("NOT a AND b", ("and", ("not", "a"), "b")),
        ("NOT a = b", ("not", ("=", "a", "b"))),
        ("a = b + c * d", ("=", "a", ("+", "b", ("*", "c", "d")))),
        ("a - b - c", ("-", ("-", "a", "b"), "c")),
        ("a / b % c", ("%", ("/", "a", "b"), "c")),
        ("-a * b", ("*", ("neg", "a"), "b")),
        ("-(a + b) > 0", (">", ("neg", ("+", "a", "b")), 0)),
        ("-3 < a", ("<", -3, "a")),
        ("a <> b", ("!=", "a", "b")),
        ("a != b", ("!=", "a", "b")),
        ("a <= b", ("<=", "a", "b")),
        ("a >= b", (">=", "a", "b")),
        ("a IN (1, 'x', b)", ("in", "a", 1, "x", "b")),
        ("a NOT IN (1)", ("not in", "a", 1)),
        ("a IS NULL", ("is null", "a")),
        ("a.b IS NOT NULL", ("is not null", ("member", "a", "b"))),
        ("a.b.c = 1", ("=", ("member", ("member", "a", "b"), "c"), 1)),
        ("a['k-1'][0] = 1", ("=", ("member", ("member", "a", "k-1"), 0), 1)),
        ("a[b.c] = 1", ("=", ("index", "a", ("member", "b", "c")), 1)),
        ("f() = g(1, h(2))", ("=", ("call", "f"), ("call", "g", 1, ("call", "h", 2)))),
        ("f(a).b = 1", ("=", ("member", ("call", "f", "a"), "b"), 1)),
        ("((a)) = (1)", ("=", "a", 1)),
        (
            "a = TRUE OR b = false OR c IS null",
            ("or", ("or", ("=", "a", True), ("=", "b", False)), ("is null", "c")),
        ),
        ("a = 'it''s'", ("=", "a", "it's")),
        ("a = 1.25e2", ("=", "a", 125.0)),
        ("selection = fromage", ("=", "selection", "fromage")),  # keywords inside names
    ],
)
def test_expression_structure(condition: str, expected: object) -> None:
    assert shape(where(condition)) == expected


def test_positions_point_at_names_operators_and_keys() -> None:
    node = where("ballots >\n  counts['mayor'].ada")
    assert isinstance(node, ast.Compare)
    assert node.pos == ast.Pos(1, 33)
    assert node.left == ast.Name("ballots", ast.Pos(1, 25))
    assert isinstance(node.right, ast.Member) and node.right.pos == ast.Pos(2, 19)
    assert isinstance(node.right.base, ast.Member) and node.right.base.pos == ast.Pos(2, 10)


def test_whitespace_and_newlines_are_free() -> None:
    assert parse("SELECT\n\t*\r\n  FROM\n'#'   ") == ast.Select(
        (ast.Star(ast.Pos(2, 2)),), ast.TopicFilter("#", ast.Pos(4, 1)), None
    )
