"""Tests for the operator table, formula parsing, evaluation and complexity."""
from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import sympy

from features.errors import StepMLError
from search_spaces.numeric import lambdify_formula
from search_spaces.objective import complexity
from search_spaces.operators import (
    DIV_EPS,
    OPERATORS,
    Operator,
    feature_from_symbol,
    get_operator,
    operon_symbols,
    parse_formula,
    pysr_options,
    symbol_name,
    to_sympy_locals,
)

FEATURES = ["batch.prefill_tokens", "batch.decode_tokens"]
P = sympy.Symbol("batch__prefill_tokens")
D = sympy.Symbol("batch__decode_tokens")
X, Y = sympy.symbols("x y")

#: Finite values including negatives, signed zeros, tiny and large magnitudes.
GRID = [-1e6, -37.5, -3.0, -1.0, -0.5, -1e-13, -0.0, 0.0, 1e-13, 0.25, 1.0, 2.0, 7.5, 1e6]


# --------------------------------------------------------------------------- table


def test_table_names_arity_and_weights_are_pinned():
    got = {name: (op.arity, op.complexity) for name, op in OPERATORS.items()}
    assert got == {
        "add": (2, 1), "sub": (2, 1), "mul": (2, 1), "neg": (1, 1),
        "div": (2, 2), "max": (2, 2), "min": (2, 2), "square": (1, 2), "relu": (1, 2),
        "cube": (1, 3), "sqrt": (1, 3), "log1p": (1, 3),
    }
    assert list(OPERATORS)[:4] == ["add", "sub", "mul", "div"]
    for name, op in OPERATORS.items():
        assert isinstance(op, Operator) and op.name == name and op.description


def test_table_is_read_only_and_operators_are_frozen_and_picklable():
    with pytest.raises(TypeError):
        OPERATORS["pow"] = OPERATORS["add"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        OPERATORS["add"].complexity = 5  # type: ignore[misc]
    clone = pickle.loads(pickle.dumps(OPERATORS["div"]))
    assert clone == OPERATORS["div"]


def test_pysr_and_operon_spellings_are_pinned():
    assert {n: op.pysr for n, op in OPERATORS.items()} == {
        "add": "+", "sub": "-", "mul": "*", "div": "/", "max": "max", "min": "min",
        "square": "square", "cube": "cube", "sqrt": "sqrt_abs(x) = sqrt(abs(x))",
        "log1p": "log1p_abs(x) = log1p(abs(x))", "relu": "relu", "neg": "neg",
    }
    assert {n: op.operon for n, op in OPERATORS.items()} == {
        "add": "add", "sub": "sub", "mul": "mul", "div": "div", "max": "fmax", "min": "fmin",
        "square": "square", "cube": None, "sqrt": "sqrtabs", "log1p": None,
        "relu": None, "neg": None,
    }
    assert OPERATORS["sqrt"].pysr_name == "sqrt_abs" and OPERATORS["sqrt"].pysr_is_custom
    assert OPERATORS["max"].pysr_name == "max" and not OPERATORS["max"].pysr_is_custom


def test_pysr_options_split_by_arity_with_weights_and_mappings():
    opts = pysr_options(["add", "div", "sqrt", "relu"])
    assert opts["binary_operators"] == ["+", "/"]
    assert opts["unary_operators"] == ["sqrt_abs(x) = sqrt(abs(x))", "relu"]
    assert opts["complexity_of_operators"] == {"+": 1, "/": 2, "sqrt_abs": 3, "relu": 2}
    assert list(opts["extra_sympy_mappings"]) == ["sqrt_abs"]
    assert opts["extra_sympy_mappings"]["sqrt_abs"](X) == sympy.sqrt(sympy.Abs(X))


def test_operon_symbols_and_inexpressible_operators():
    assert operon_symbols("add,max,sqrt") == "add,fmax,sqrtabs,constant,variable"
    assert operon_symbols() == "add,sub,mul,div,fmax,fmin,square,sqrtabs,constant,variable"
    with pytest.raises(StepMLError, match="cube, relu"):
        operon_symbols(["add", "cube", "relu"])


def test_get_operator_returns_entry_and_unknown_name_lists_valid_names():
    assert get_operator("log1p") is OPERATORS["log1p"]
    with pytest.raises(StepMLError) as info:
        get_operator("pow")
    message = str(info.value)
    assert "'pow'" in message
    for name in OPERATORS:
        assert name in message


# --------------------------------------------------------------------------- numpy vs sympy


def _sympy_value(op: Operator, *values: float) -> float:
    syms = sympy.symbols(f"a0:{op.arity}")
    expr = op.sympy(*syms)
    exact = {s: sympy.Float(v, 40) for s, v in zip(syms, values)}  # the doubles, at 40 digits
    return float(expr.xreplace(exact).evalf(40))


@pytest.mark.parametrize("name", [n for n, op in OPERATORS.items() if op.arity == 1])
def test_unary_numpy_and_sympy_agree_on_grid(name):
    op = OPERATORS[name]
    got = op.numpy(np.array(GRID))
    assert got.dtype == np.float64 and got.shape == (len(GRID),)
    want = np.array([_sympy_value(op, v) for v in GRID])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("name", [n for n, op in OPERATORS.items() if op.arity == 2])
def test_binary_numpy_and_sympy_agree_on_grid(name):
    op = OPERATORS[name]
    pairs = [
        (a, b) for a, b in itertools.product(GRID, GRID)
        if not (name == "div" and abs(b) < DIV_EPS)  # the protected branch is tested below
    ]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    got = op.numpy(a, b)
    want = np.array([_sympy_value(op, x, y) for x, y in pairs])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0.0)


def test_numpy_values_are_pinned_where_protection_and_sign_matter():
    x = np.array([-4.0, -0.0, 0.0, 9.0])
    np.testing.assert_array_equal(OPERATORS["sqrt"].numpy(x), [2.0, 0.0, 0.0, 3.0])
    np.testing.assert_array_equal(OPERATORS["log1p"].numpy(x), np.log1p([4.0, 0.0, 0.0, 9.0]))
    np.testing.assert_array_equal(OPERATORS["relu"].numpy(x), [0.0, 0.0, 0.0, 9.0])
    np.testing.assert_array_equal(OPERATORS["cube"].numpy(x), [-64.0, 0.0, 0.0, 729.0])
    np.testing.assert_array_equal(OPERATORS["neg"].numpy(x), [4.0, 0.0, -0.0, -9.0])


def test_protected_div_returns_numerator_for_vanishing_denominator_or_overflow():
    div = OPERATORS["div"].numpy
    a = np.array([3.0, 3.0, -2.0, 5.0, 6.0, 1e308, -1e308])
    b = np.array([0.0, 1e-13, -0.0, -9e-13, 2.0, 1e-11, 0.5])
    np.testing.assert_array_equal(div(a, b), [3.0, 3.0, -2.0, 5.0, 3.0, 1e308, -1e308])
    assert OPERATORS["div"].sympy(X, Y) == X / Y  # plain division in export


@pytest.mark.parametrize("name", ["div", "sqrt", "log1p"])
def test_protected_operators_are_finite_on_finite_input(name):
    op = OPERATORS[name]
    extreme = GRID + [-1.7e308, 1.7e308, 5e-324, -5e-324, 1e-300]
    with np.errstate(divide="raise", over="raise", invalid="raise"):  # not even a warning
        if op.arity == 1:
            out = op.numpy(np.array(extreme))
        else:
            a, b = np.array(list(itertools.product(extreme, extreme))).T
            out = op.numpy(a, b)
    assert np.isfinite(out).all()


# --------------------------------------------------------------------------- symbols


@pytest.mark.parametrize(
    "feature, safe",
    [
        ("batch.prefill_tokens", "batch__prefill_tokens"),
        ("batch.decode_context_sum", "batch__decode_context_sum"),
        ("hw.gpu.mem_bw", "hw__gpu__mem_bw"),
        ("tp", "tp"),
        ("arch.n_layers", "arch__n_layers"),
    ],
)
def test_symbol_name_round_trips_dotted_names(feature, safe):
    assert symbol_name(feature) == safe
    assert safe.isidentifier()
    assert feature_from_symbol(safe) == feature
    assert feature_from_symbol(sympy.Symbol(safe)) == feature


@pytest.mark.parametrize("bad", ["", "a__b", "a_.b", "a..b", ".a", "a.", "kv usage", "1st", "class", "a-b"])
def test_symbol_name_rejects_names_it_cannot_reverse(bad):
    with pytest.raises(StepMLError):
        symbol_name(bad)


@pytest.mark.parametrize("bad", ["a____b", "__a", "9lives", "", "a b"])
def test_feature_from_symbol_rejects_non_symbol_names(bad):
    with pytest.raises(StepMLError):
        feature_from_symbol(bad)


def test_feature_from_symbol_decodes_underscore_after_dot():
    # "a___b" decodes to "a._b", which encodes back to "a___b"
    assert symbol_name("a._b") == "a___b"
    assert feature_from_symbol("a___b") == "a._b"


def test_to_sympy_locals_maps_operators_and_features():
    local = to_sympy_locals(FEATURES)
    assert local["batch__prefill_tokens"] == P and local["batch__decode_tokens"] == D
    assert local["max"](X, Y) == sympy.Max(X, Y)
    assert local["fmax"] is local["max"]  # Operon spelling
    assert local["sqrt_abs"](X) == sympy.sqrt(sympy.Abs(X))  # PySR spelling
    assert local["relu"](X) == sympy.Max(0, X)
    with pytest.raises(StepMLError, match="collides"):
        to_sympy_locals(["square"])


# --------------------------------------------------------------------------- parsing


def test_parse_pysr_equation_with_indices():
    expr = parse_formula("x0 * 2.5 + max(x1, 3.0)", FEATURES)
    assert expr == sympy.Float(2.5) * P + sympy.Max(D, sympy.Float(3.0))


def test_parse_pysr_operators_and_power():
    expr = parse_formula("square(x0) - cube(x1) + x0^3 + sqrt_abs(x1) + log1p_abs(x0) + relu(x1 - 1)", FEATURES)
    want = P**2 - D**3 + P**3 + sympy.sqrt(sympy.Abs(D)) + sympy.log(1 + sympy.Abs(P)) + sympy.Max(0, D - 1)
    assert sympy.simplify(expr - want) == 0
    assert parse_formula("sqrt(x0)", FEATURES) == sympy.sqrt(sympy.Abs(P))
    assert parse_formula("neg(x0) / x1", FEATURES) == -P / D


def test_parse_dotted_feature_names_and_safe_names():
    expr = parse_formula("2 * batch.prefill_tokens + batch.decode_tokens / batch__prefill_tokens", FEATURES)
    assert expr == 2 * P + D / P
    # longest name wins: "batch.prefill_tokens_sq" must not be read as "batch.prefill_tokens" + "_sq"
    feats = FEATURES + ["batch.prefill_tokens_sq"]
    q = sympy.Symbol("batch__prefill_tokens_sq")
    assert parse_formula("batch.prefill_tokens_sq - batch.prefill_tokens", feats) == q - P


def test_feature_named_like_an_index_wins_over_the_index():
    expr = parse_formula("x1 + x0", ["x1", "kv.tokens"])
    assert expr == sympy.Symbol("x1") + sympy.Symbol("x1")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("x0 +* 2", "x0 +* 2"),
        ("x2 + 1", "unknown variable"),
        ("batch.prefil + 1", "batch.prefil"),
        ("foo(x0)", "unknown function"),
        ("x0 / 0", "not finite"),
        ("x0 > 1", "not allowed"),
        ("max(x0, x1, 2)", "max(x0, x1, 2)"),
        ("   ", "empty"),
    ],
)
def test_parse_errors_are_steml_errors_quoting_the_text(text, fragment):
    with pytest.raises(StepMLError) as info:
        parse_formula(text, FEATURES)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------- evaluation


def test_lambdify_matches_hand_computed_numpy():
    expr = parse_formula(
        "2.5 * batch.prefill_tokens + max(x1, 3.0) + log1p(x0) + x0 / x1 - relu(x1 - 2) + sqrt(x1 - 3)",
        FEATURES,
    )
    p = np.array([0.0, 10.0, 100.0, 7.0, -4.0])
    d = np.array([0.0, 1.0, 5.0, 4.0, 2.0])
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        got = lambdify_formula(expr, FEATURES)({"batch.prefill_tokens": p, "batch.decode_tokens": d})
    want = (
        2.5 * p + np.maximum(d, 3.0) + np.log1p(np.abs(p))
        + np.array([0.0, 10.0, 20.0, 1.75, -2.0])  # protected division: 0/0 -> 0
        - np.maximum(d - 2.0, 0.0) + np.sqrt(np.abs(d - 3.0))
    )
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0.0)
    assert got.dtype == np.float64 and got.shape == (5,)


def test_lambdify_agrees_with_table_numpy_for_every_operator():
    a = np.array(GRID)
    b = np.array(GRID[::-1])
    data = {"batch.prefill_tokens": a, "batch.decode_tokens": b}
    for op in OPERATORS.values():
        args = (P, D)[: op.arity]
        got = lambdify_formula(op.sympy(*args), FEATURES)(data)
        want = op.numpy(*(a, b)[: op.arity])
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=0.0, err_msg=op.name)


def test_lambdify_broadcasts_constants_and_unused_features():
    data = {"batch.prefill_tokens": np.arange(4.0), "batch.decode_tokens": np.ones(4)}
    const = lambdify_formula(parse_formula("3.5", FEATURES), FEATURES)(data)
    assert isinstance(const, np.ndarray) and const.shape == (4,) and const.dtype == np.float64
    np.testing.assert_array_equal(const, np.full(4, 3.5))
    const[0] = 0.0  # a fresh, writable array, not a broadcast view
    only_d = lambdify_formula(parse_formula("max(x1, 0.5)", FEATURES), FEATURES)(data)
    np.testing.assert_array_equal(only_d, np.ones(4))


def test_lambdify_errors():
    fn = lambdify_formula(P + D, FEATURES)
    with pytest.raises(StepMLError, match="batch.decode_tokens"):
        fn({"batch.prefill_tokens": np.ones(3)})
    with pytest.raises(StepMLError, match="length"):
        fn({"batch.prefill_tokens": np.ones(3), "batch.decode_tokens": np.ones(2)})
    with pytest.raises(StepMLError, match="unknown symbol"):
        lambdify_formula(P + sympy.Symbol("kv__tokens_in_use"), FEATURES)


# --------------------------------------------------------------------------- complexity


@pytest.mark.parametrize(
    "expr, expected",
    [
        (X, 1),
        (sympy.Float(2.5), 1),
        (X + Y, 3),
        (X - Y, 3),
        (X * Y, 3),
        (X / Y, 4),
        (1 / X, 4),
        (X**-2, 6),  # div(1, square(x))
        (-X, 2),
        (-X - Y, 4),  # neg(x) - y
        (sympy.Max(X, Y), 4),
        (sympy.Max(0, X), 3),  # relu
        (X**2, 3),
        (X**3, 4),
        (sympy.sqrt(sympy.Abs(X)), 4),
        (sympy.log(1 + sympy.Abs(X)), 4),
        (2.5 * X + sympy.Max(3.0, Y), 8),
        (X / (Y + 1), 6),
        (X**4, 3),  # fallback power: 1 + x + 4
        (sympy.exp(X), 2),  # fallback function
    ],
)
def test_complexity_is_pinned(expr, expected):
    assert complexity(expr) == expected


def test_complexity_of_each_operator_is_its_weight_plus_leaves():
    for op in OPERATORS.values():
        expr = op.sympy(*(X, Y)[: op.arity])
        assert complexity(expr) == op.complexity + op.arity, op.name


def test_complexity_of_parsed_pysr_formula():
    expr = parse_formula("x0 / x1 + log1p(x0) + sqrt(x1) - relu(x1 - 2)", FEATURES)
    # div 4 + log1p 4 + sqrt 4 + relu(sub) 5, joined by add, add, sub
    assert complexity(expr) == 20


def test_complexity_rejects_non_expressions():
    with pytest.raises(StepMLError):
        complexity(sympy.Gt(X, 1))
