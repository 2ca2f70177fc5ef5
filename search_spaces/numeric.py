"""Evaluating sympy formulas on numpy columns with the operator table's protected semantics.

:func:`lambdify_formula` is how every finished formula is evaluated: the
rescoring of candidates, export, audit and replay. It walks the sympy tree
directly (no code generation; sympy's printers would dominate the cost of
scoring many one-off candidates) and keeps the order of sympy's sums and
products, so a formula gives the same float64 numbers wherever it is scored.
Divisions (negative numeric powers) are the table's protected ``div``,
``log(1 + Abs(u))`` is ``log1p(|u|)``, ``Max``/``Min`` are elementwise.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from features.errors import StepMLError
from search_spaces.operators import OPERATORS, symbol_name

if TYPE_CHECKING:
    import sympy

__all__ = ["lambdify_formula"]

_np_div = OPERATORS["div"].numpy
_np_log1p = OPERATORS["log1p"].numpy


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _np_max_n(*args: Any) -> np.ndarray:
    return functools.reduce(np.maximum, (_f64(a) for a in args))


def _np_min_n(*args: Any) -> np.ndarray:
    return functools.reduce(np.minimum, (_f64(a) for a in args))


def _negative_number(e: sympy.Basic) -> bool:
    return bool(e.is_Number and e.is_negative)


def _interpret(expr: sympy.Basic, env: Mapping[sympy.Symbol, np.ndarray]) -> np.ndarray:
    """Evaluate ``expr`` on numpy arrays with the table's protected semantics (no code generation).

    Divisions (negative numeric powers inside a product) are the protected
    ``div(numerator, denominator)``, ``log(1 + Abs(u))`` is ``log1p(|u|)``,
    ``Max``/``Min`` are elementwise. Walking the tree avoids sympy's printers,
    which dominate the cost of scoring many one-off candidates.
    """
    import sympy
    if expr.is_Symbol:
        return env[expr]
    if expr.is_Number:
        return np.float64(float(expr))
    if expr.is_Add:
        total = _interpret(expr.args[0], env)
        for a in expr.args[1:]:
            total = total + _interpret(a, env)
        return total
    if expr.is_Mul or (expr.is_Pow and _negative_number(expr.exp)):
        factors = [expr] if expr.is_Pow else list(expr.args)
        num: Any = np.float64(1.0)
        den: Any = None
        for f in factors:
            if f.is_Pow and _negative_number(f.exp):
                d = _interpret(sympy.Pow(f.base, -f.exp), env)
                den = d if den is None else den * d
            else:
                num = num * _interpret(f, env)
        return num if den is None else _np_div(num, den)
    if expr.is_Pow:
        base = _interpret(expr.base, env)
        if expr.exp == sympy.S.Half:
            return np.sqrt(base)
        return np.power(base, _interpret(expr.exp, env))
    log1p = OPERATORS["log1p"].match(expr)  # type: ignore[misc]
    if log1p is not None:
        return _np_log1p(_interpret(log1p[0], env))
    args = [_interpret(a, env) for a in expr.args]
    if isinstance(expr, sympy.Max):
        return _np_max_n(*args)
    if isinstance(expr, sympy.Min):
        return _np_min_n(*args)
    simple = {sympy.Abs: np.abs, sympy.log: np.log, sympy.exp: np.exp, sympy.floor: np.floor,
              sympy.ceiling: np.ceil}
    for kind, fn in simple.items():
        if isinstance(expr, kind):
            return fn(*args)
    fallback = sympy.lambdify(list(env), expr, modules="numpy", docstring_limit=0)
    return fallback(*env.values())


def lambdify_formula(
    expr: sympy.Expr, features: Sequence[str]
) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """A vectorised numpy evaluator of a formula over feature columns.

    Evaluation follows the table's numpy implementations: every division
    (negative power) is the protected ``div`` of its numerator and
    denominator, ``log(1 + Abs(u))`` is ``log1p(|u|)``, ``sqrt(Abs(u))`` is
    ``sqrt(|u|)``, ``Max``/``Min`` are elementwise. So a formula built from
    the table stays finite on finite input, as it was during search (a nested
    ``div(div(a, b), c)`` is evaluated as ``div(a, b*c)``; the two differ only
    where a denominator is below ``DIV_EPS``).

    Parameters
    ----------
    expr : sympy.Expr
        Expression over ``sympy.Symbol(symbol_name(f))`` symbols, e.g. from
        :func:`parse_formula`.
    features : sequence of str
        The feature names the expression may use.

    Returns
    -------
    Callable[[Mapping[str, numpy.ndarray]], numpy.ndarray]
        Takes a mapping (dict, DataFrame) from feature names to equal-length
        1-D arrays and returns a new float64 array of that length, even for a
        constant expression.

    Raises
    ------
    StepMLError
        Immediately if the expression uses a symbol that is not one of
        ``features``; at call time if a used feature is missing from the
        mapping, arrays are not 1-D or differ in length, or the length cannot
        be known (a constant over an empty mapping).
    """
    import sympy
    expr = sympy.sympify(expr)
    if not isinstance(expr, sympy.Expr):
        raise StepMLError(f"not a scalar expression: {expr!r}")
    features = list(features)
    by_symbol = {symbol_name(f): f for f in features}
    unknown = sorted(s.name for s in expr.free_symbols if s.name not in by_symbol)
    if unknown:
        raise StepMLError(
            f"expression {expr} uses unknown symbol(s) {', '.join(unknown)}; "
            f"features: {', '.join(features) if features else '(none)'}"
        )
    used = [f for f in features if sympy.Symbol(symbol_name(f)) in expr.free_symbols]
    symbols = [sympy.Symbol(symbol_name(f)) for f in used]

    def compiled(*arrays: np.ndarray) -> np.ndarray:
        return _interpret(expr, dict(zip(symbols, arrays)))

    text = str(expr)

    def evaluate(data: Mapping[str, np.ndarray]) -> np.ndarray:
        missing = [f for f in used if f not in data]
        if missing:
            raise StepMLError(f"formula {text} needs missing feature(s) {', '.join(missing)}")
        arrays = [_f64(data[f]) for f in used]
        for f, a in zip(used, arrays):
            if a.ndim != 1:
                raise StepMLError(f"feature {f!r} must be 1-D, got shape {a.shape}")
        lengths = {a.shape[0] for a in arrays}
        if len(lengths) > 1:
            raise StepMLError(
                "features differ in length: "
                + ", ".join(f"{f}={a.shape[0]}" for f, a in zip(used, arrays))
            )
        if lengths:
            n = lengths.pop()
        else:
            sizing = [f for f in features if f in data] or list(data.keys())
            if not sizing:
                raise StepMLError(f"cannot size constant formula {text}: no input columns")
            n = len(data[sizing[0]])
        out = _f64(compiled(*arrays))
        return np.array(np.broadcast_to(out, (n,)), dtype=np.float64)

    return evaluate
