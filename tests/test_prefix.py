"""The canonical prefix form: text, the two sympy converters, seeds, infix, weight."""
from __future__ import annotations

import numpy as np
import pytest
import sympy

from features.errors import StepMLError
from search_spaces.numeric import lambdify_formula
from search_spaces.objective import complexity
from search_spaces.operators import OPERATORS
from search_spaces.prefix import (CONST, FN, OP, VAR, Inexpressible, Node, format_prefix, from_sympy, infix,
                                  parse_prefix, seed_nodes, to_sympy, weight)

X, Y, Z = sympy.symbols("x y z")
ARITY = {name: op.arity for name, op in OPERATORS.items()}


def random_expr(rng: np.random.Generator, depth: int) -> sympy.Expr:
    """A random formula built with the table's sympy builders."""
    if depth == 0 or rng.random() < 0.3:
        return [X, Y, Z, sympy.Float(round(float(rng.uniform(0.5, 3)), 3))][rng.integers(4)]
    op = list(OPERATORS.values())[rng.integers(len(OPERATORS))]
    args = [random_expr(rng, depth - 1) for _ in range(op.arity)]
    try:
        expr = op.sympy(*args)
    except ValueError:  # Max/Min of a non-real number (x - x = 0 as a denominator)
        return args[0]
    return args[0] if expr.has(sympy.zoo, sympy.nan) else expr


def test_text_round_trips_exactly():
    text = "add(mul(1.25, x), sqrt(sub(y, -3.0000000000000004)))"
    nodes = parse_prefix(text, ARITY, {"x", "y"})
    assert nodes[:3] == [Node(OP, "add"), Node(OP, "mul"), Node(CONST, 1.25)]
    assert format_prefix(nodes, ARITY) == text
    for bad in ("add(x)", "add(x, y) z", "frob(x)"):
        with pytest.raises(StepMLError):
            parse_prefix(bad, ARITY, {"x", "y"})


def test_from_sympy_reads_the_table_patterns():
    def text(e, ops=None):
        return format_prefix(from_sympy(e, ops), ARITY)

    assert text(X - Y) == "sub(x, y)"
    assert text(-X - Y) == "sub(neg(x), y)"
    assert text(X / (Y * Z)) == "div(x, mul(y, z))"
    assert text(sympy.Max(0, X)) == "relu(x)"
    assert text(sympy.Max(X, Y, Z)) == "max(x, max(y, z))"
    assert text(sympy.log(1 + sympy.Abs(X))) == "log1p(x)"
    assert text(sympy.sqrt(sympy.Abs(X)) * X ** 2) == "mul(square(x), sqrt(x))"
    # without the operators: square as a product, a relu as max, a difference as a sum of products
    assert text(X ** 2, ("mul",)) == "mul(x, x)"
    assert text(sympy.Max(0, X), ("max",)) == "max(0.0, x)"
    assert text(X - Y, ("add", "mul")) == "add(x, mul(-1.0, y))"
    with pytest.raises(Inexpressible):
        from_sympy(X ** 3, ("mul", "add"))
    with pytest.raises(Inexpressible):
        from_sympy(X + Y, ("add",), symbols={"x"})


def test_nodes_outside_the_table_are_fn_nodes_of_fallback_weight():
    nodes = from_sympy(sympy.exp(X) + X ** 4)
    assert {n.kind for n in nodes} >= {FN} and weight(nodes) == complexity(sympy.exp(X) + X ** 4) == 6
    assert to_sympy(nodes) == sympy.exp(X) + X ** sympy.Float(4)
    with pytest.raises(Inexpressible):
        from_sympy(sympy.exp(X), tuple(OPERATORS))


def test_round_trip_preserves_the_value_of_random_formulas():
    rng = np.random.default_rng(0)
    data = {"x": rng.uniform(-5, 5, 64), "y": rng.uniform(0.1, 9, 64), "z": rng.uniform(-2, 2, 64)}
    for _ in range(200):
        expr = random_expr(rng, 4)
        nodes = from_sympy(expr)
        assert weight(nodes) == complexity(expr)
        if any(n.kind == FN for n in nodes):
            continue
        back = to_sympy(nodes)
        with np.errstate(all="ignore"):
            a = lambdify_formula(expr, ("x", "y", "z"))(data)
            b = lambdify_formula(back, ("x", "y", "z"))(data)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=str(expr))


def test_seed_constants_start_at_one_and_follow_the_written_structure():
    nodes = seed_nodes("c0 + c1*x - y", ["x", "y"], ("add", "sub", "mul"))
    assert format_prefix(nodes, ARITY) == "sub(add(1.0, mul(1.0, x)), y)"
    assert seed_nodes("c0 + x*w", ["x", "y"], ("add", "mul")) is None  # unknown feature w
    assert seed_nodes("c0 + cube(x)", ["x"], ("add", "mul")) is None  # an operator the space lacks
    assert seed_nodes("c0*x", ["x", "c0"], ("mul",)) == [Node(OP, "mul"), Node(VAR, "c0"), Node(VAR, "x")]


def test_infix_uses_precedence_and_the_given_names():
    nodes = parse_prefix("sub(x, add(y, div(z, mul(x, -2.0))))", ARITY, {"x", "y", "z"})
    assert infix(nodes) == "x - (y + z/(x*(-2.0)))"
    nodes = parse_prefix("add(sqrt(x), neg(y))", ARITY, {"x", "y"})
    assert infix(nodes, lambda op: OPERATORS[op].pysr_name) == "sqrt_abs(x) + neg(y)"
    expr = sympy.sympify(infix(parse_prefix("div(sub(x, y), add(z, 1.0))", ARITY, {"x", "y", "z"})))
    assert sympy.simplify(expr - (X - Y) / (Z + 1)) == 0
