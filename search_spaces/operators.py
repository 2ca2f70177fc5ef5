"""The operator table: declared once as data, used by search and by export.

Every search engine (DEAP, Operon, PySR) and every exporter (sympy → Python,
LaTeX, C, Go) reads the primitives it may use from :data:`OPERATORS`, so a
formula means the same thing wherever it is found, evaluated or printed.

Each :class:`Operator` carries

* a vectorised **numpy** implementation (what DEAP evaluates during search),
* a **sympy** builder (what export and :func:`parse_formula` produce),
* a **complexity** weight (what :func:`complexity` and PySR's
  ``complexity_of_operators`` charge for one node),
* the **PySR** and **Operon** spellings of the same primitive.

Protected operators
-------------------
Search evaluates millions of random trees on real features, many of which
are zero (``batch.decode_tokens`` is 0 in a prefill-only step), so the numpy
implementations of the partial operators are *protected*: for finite inputs
they never return NaN or ±inf.

``div(a, b)``
    ``a / b``, except that it returns the numerator ``a`` unchanged where
    ``|b| < DIV_EPS`` (``1e-12``, so ``b = 0`` and ``b = -0.0`` included) and
    where the quotient of finite inputs would overflow. Dividing by a
    vanishing denominator thus acts as dividing by 1. The sympy form is plain
    ``a / b``: the two agree wherever ``|b| >= DIV_EPS`` and the quotient is
    finite, and :func:`lambdify_formula` evaluates divisions with this same
    rule.
``sqrt(x)``
    ``sqrt(|x|)``; sympy ``sqrt(Abs(x))``.
``log1p(x)``
    ``log(1 + |x|)`` (numpy ``log1p(|x|)``); sympy ``log(1 + Abs(x))``.

``square``, ``cube``, ``add``, ``sub``, ``mul`` have no protected variant that
makes sense: they are defined everywhere and can only overflow for finite
magnitudes beyond ~1e154 (square) or ~1e308 (add), far from any feature.

Why PySR gets Julia definitions for ``sqrt`` and ``log1p``: PySR's built-in
``sqrt`` and ``log1p`` are not the table's (they return NaN for negative
arguments, and ``log1p`` is negative on (-1, 0)), so a formula found by PySR
would be exported with a different meaning. The table therefore hands PySR
``sqrt_abs(x) = sqrt(abs(x))`` and ``log1p_abs(x) = log1p(abs(x))`` and
:func:`parse_formula` reads those names back. For the same reason Operon gets
``sqrtabs`` (exactly ``sqrt(|x|)``) and no ``log1p`` (Operon's is
``log(1 + x)``, unprotected). Operon's ``div`` is unprotected division; it
agrees with the table's ``div`` wherever ``|b| >= DIV_EPS``.

Complexity weights
------------------
1 for ``add, sub, mul, neg`` (cheap, ubiquitous), 2 for ``div, max, min,
square, relu`` (one nonlinearity or one case split), 3 for ``cube, sqrt,
log1p`` (a transcendental or higher-order shape that should have to earn its
place). A leaf (feature or constant) costs 1, as in PySR.

Feature names and symbols
-------------------------
Feature names contain dots (``batch.prefill_tokens``) and are not Python
identifiers, so sympy symbols are named with :func:`symbol_name`
(``batch__prefill_tokens``), reversed by :func:`feature_from_symbol`. Pass
``[symbol_name(f) for f in features]`` as PySR's ``variable_names``.
"""
from __future__ import annotations

import functools
import keyword
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from features.errors import StepMLError

if TYPE_CHECKING:  # sympy is imported on first use: search workers need only numpy
    import sympy

__all__ = [
    "DIV_EPS",
    "FALLBACK_COMPLEXITY",
    "OPERATORS",
    "Operator",
    "complexity",
    "feature_from_symbol",
    "get_operator",
    "lambdify_formula",
    "log1p_argument",
    "operon_symbols",
    "parse_formula",
    "pysr_options",
    "symbol_name",
    "to_sympy_locals",
]

#: Denominators with ``|b| < DIV_EPS`` make the protected ``div`` return its numerator.
DIV_EPS: float = 1e-12

#: Weight of a sympy node that maps to no table operator (PySR's default operator weight).
FALLBACK_COMPLEXITY: int = 1

#: Names sympy's parser emits for literals; a feature symbol may not shadow them.
_RESERVED_NAMES = frozenset({"Integer", "Float", "Rational", "Symbol", "Function"})


@dataclass(frozen=True)
class Operator:
    """One primitive of the search space, in every notation the project uses.

    Attributes
    ----------
    name : str
        Table and command-line key, e.g. ``"add"``.
    arity : int
        Number of arguments, 1 or 2.
    numpy : Callable[..., numpy.ndarray]
        Vectorised float64 implementation; protected (finite for finite
        input) where a protected variant makes sense.
    sympy : Callable[..., sympy.Expr]
        Builds the sympy expression of the operator applied to its arguments.
    complexity : int
        Weight of one node of this operator.
    pysr : str
        The operator as PySR takes it: a built-in name (``"+"``, ``"max"``,
        ``"square"``) or a Julia definition (``"sqrt_abs(x) = sqrt(abs(x))"``).
    operon : str or None
        The pyoperon ``allowed_symbols`` name, or None when Operon cannot
        express the operator exactly.
    description : str
        One line for tables and ``--help``.
    """

    name: str
    arity: int
    numpy: Callable[..., np.ndarray]
    sympy: Callable[..., sympy.Expr]
    complexity: int
    pysr: str
    operon: str | None
    description: str

    @property
    def pysr_name(self) -> str:
        """The name PySR uses for the operator in equation strings.

        Returns
        -------
        str
            The function name of a Julia definition (``"sqrt_abs"`` for
            ``"sqrt_abs(x) = sqrt(abs(x))"``), else :attr:`pysr` itself.
        """
        if "=" in self.pysr and "(" in self.pysr:
            return self.pysr.split("(", 1)[0].strip()
        return self.pysr

    @property
    def pysr_is_custom(self) -> bool:
        """Whether :attr:`pysr` is a Julia definition rather than a built-in.

        Returns
        -------
        bool
            True for definitions such as ``"sqrt_abs(x) = sqrt(abs(x))"``.
        """
        return self.pysr_name != self.pysr


# --------------------------------------------------------------------------- numpy


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _np_add(a: Any, b: Any) -> np.ndarray:
    """``a + b``."""
    return np.add(_f64(a), _f64(b))


def _np_sub(a: Any, b: Any) -> np.ndarray:
    """``a - b``."""
    return np.subtract(_f64(a), _f64(b))


def _np_mul(a: Any, b: Any) -> np.ndarray:
    """``a * b``."""
    return np.multiply(_f64(a), _f64(b))


def _np_div(a: Any, b: Any) -> np.ndarray:
    """Protected ``a / b``: the numerator where ``|b| < DIV_EPS`` or the quotient overflows."""
    num, den = np.broadcast_arrays(_f64(a), _f64(b))
    out = np.array(num, dtype=np.float64, copy=True)
    ok = np.abs(den) >= DIV_EPS
    with np.errstate(over="ignore", under="ignore"):
        np.divide(num, den, out=out, where=ok)
    overflow = ok & ~np.isfinite(out) & np.isfinite(num) & np.isfinite(den)
    if np.any(overflow):
        out[overflow] = num[overflow]
    return out


def _np_max(a: Any, b: Any) -> np.ndarray:
    """Elementwise maximum."""
    return np.maximum(_f64(a), _f64(b))


def _np_min(a: Any, b: Any) -> np.ndarray:
    """Elementwise minimum."""
    return np.minimum(_f64(a), _f64(b))


def _np_square(a: Any) -> np.ndarray:
    """``a ** 2``."""
    return np.square(_f64(a))


def _np_cube(a: Any) -> np.ndarray:
    """``a ** 3``."""
    return np.power(_f64(a), 3)


def _np_sqrt(a: Any) -> np.ndarray:
    """Protected square root ``sqrt(|a|)``."""
    return np.sqrt(np.abs(_f64(a)))


def _np_log1p(a: Any) -> np.ndarray:
    """Protected ``log(1 + |a|)``."""
    return np.log1p(np.abs(_f64(a)))


def _np_relu(a: Any) -> np.ndarray:
    """``max(a, 0)``."""
    return np.maximum(_f64(a), 0.0)


def _np_neg(a: Any) -> np.ndarray:
    """``-a``."""
    return np.negative(_f64(a))


# --------------------------------------------------------------------------- sympy


def _sp_add(a: Any, b: Any) -> sympy.Expr:
    import sympy
    return sympy.sympify(a) + sympy.sympify(b)


def _sp_sub(a: Any, b: Any) -> sympy.Expr:
    import sympy
    return sympy.sympify(a) - sympy.sympify(b)


def _sp_mul(a: Any, b: Any) -> sympy.Expr:
    import sympy
    return sympy.sympify(a) * sympy.sympify(b)


def _sp_div(a: Any, b: Any) -> sympy.Expr:
    import sympy
    return sympy.sympify(a) / sympy.sympify(b)


def _sp_max(a: Any, b: Any) -> sympy.Expr:
    import sympy
    return sympy.Max(sympy.sympify(a), sympy.sympify(b))


def _sp_min(a: Any, b: Any) -> sympy.Expr:
    import sympy
    return sympy.Min(sympy.sympify(a), sympy.sympify(b))


def _sp_square(a: Any) -> sympy.Expr:
    import sympy
    return sympy.sympify(a) ** 2


def _sp_cube(a: Any) -> sympy.Expr:
    import sympy
    return sympy.sympify(a) ** 3


def _sp_sqrt(a: Any) -> sympy.Expr:
    import sympy
    return sympy.sqrt(sympy.Abs(sympy.sympify(a)))


def _sp_log1p(a: Any) -> sympy.Expr:
    import sympy
    return sympy.log(1 + sympy.Abs(sympy.sympify(a)))


def _sp_relu(a: Any) -> sympy.Expr:
    import sympy
    return sympy.Max(0, sympy.sympify(a))


def _sp_neg(a: Any) -> sympy.Expr:
    import sympy
    return -sympy.sympify(a)


# --------------------------------------------------------------------------- table

_TABLE: tuple[Operator, ...] = (
    Operator("add", 2, _np_add, _sp_add, 1, "+", "add", "a + b"),
    Operator("sub", 2, _np_sub, _sp_sub, 1, "-", "sub", "a - b"),
    Operator("mul", 2, _np_mul, _sp_mul, 1, "*", "mul", "a * b"),
    Operator("div", 2, _np_div, _sp_div, 2, "/", "div",
             "a / b; returns a where |b| < 1e-12 or the quotient overflows"),
    Operator("max", 2, _np_max, _sp_max, 2, "max", "fmax", "larger of a and b"),
    Operator("min", 2, _np_min, _sp_min, 2, "min", "fmin", "smaller of a and b"),
    Operator("square", 1, _np_square, _sp_square, 2, "square", "square", "x ** 2"),
    Operator("cube", 1, _np_cube, _sp_cube, 3, "cube", None, "x ** 3"),
    Operator("sqrt", 1, _np_sqrt, _sp_sqrt, 3, "sqrt_abs(x) = sqrt(abs(x))", "sqrtabs",
             "sqrt(|x|)"),
    Operator("log1p", 1, _np_log1p, _sp_log1p, 3, "log1p_abs(x) = log1p(abs(x))", None,
             "log(1 + |x|)"),
    Operator("relu", 1, _np_relu, _sp_relu, 2, "relu", None, "max(x, 0)"),
    Operator("neg", 1, _np_neg, _sp_neg, 1, "neg", None, "-x"),
)

#: The operator table, keyed by :attr:`Operator.name`, in declaration order. Read-only.
OPERATORS: Mapping[str, Operator] = MappingProxyType({op.name: op for op in _TABLE})


def get_operator(name: str) -> Operator:
    """Look an operator up by its table name.

    Parameters
    ----------
    name : str
        Table key such as ``"add"`` or ``"log1p"``.

    Returns
    -------
    Operator
        The table entry.

    Raises
    ------
    StepMLError
        If ``name`` is not in the table; the message lists the valid names.
    """
    try:
        return OPERATORS[name]
    except (KeyError, TypeError):
        raise StepMLError(
            f"unknown operator {name!r}; valid operators: {', '.join(OPERATORS)}"
        ) from None


def _resolve(names: Iterable[str] | None) -> list[Operator]:
    if names is None:
        return list(OPERATORS.values())
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return [get_operator(n.strip()) for n in names]


def pysr_options(names: Iterable[str] | None = None) -> dict[str, Any]:
    """PySR keyword arguments for a subset of the table.

    Parameters
    ----------
    names : iterable of str or str, optional
        Table names (or one comma-separated string); all operators if None.

    Returns
    -------
    dict
        ``binary_operators``, ``unary_operators`` (lists of PySR strings),
        ``extra_sympy_mappings`` (PySR name → sympy builder, for the Julia
        definitions) and ``complexity_of_operators`` (PySR name → weight), to
        splat into ``PySRRegressor(**...)``.

    Raises
    ------
    StepMLError
        If a name is not in the table.
    """
    ops = _resolve(names)
    return {
        "binary_operators": [op.pysr for op in ops if op.arity == 2],
        "unary_operators": [op.pysr for op in ops if op.arity == 1],
        "extra_sympy_mappings": {op.pysr_name: op.sympy for op in ops if op.pysr_is_custom},
        "complexity_of_operators": {op.pysr_name: op.complexity for op in ops},
    }


def operon_symbols(names: Iterable[str] | None = None) -> str:
    """pyoperon ``allowed_symbols`` for a subset of the table.

    Parameters
    ----------
    names : iterable of str or str, optional
        Table names (or one comma-separated string); if None, every operator
        Operon can express.

    Returns
    -------
    str
        Comma-separated Operon symbols followed by ``constant,variable``.

    Raises
    ------
    StepMLError
        If a name is unknown, or names an operator Operon cannot express.
    """
    if names is None:
        ops = [op for op in OPERATORS.values() if op.operon is not None]
    else:
        ops = _resolve(names)
        missing = [op.name for op in ops if op.operon is None]
        if missing:
            able = [op.name for op in OPERATORS.values() if op.operon is not None]
            raise StepMLError(
                f"Operon cannot express operator(s) {', '.join(missing)}; "
                f"Operon operators: {', '.join(able)}"
            )
    return ",".join([op.operon for op in ops] + ["constant", "variable"])  # type: ignore[misc]


# --------------------------------------------------------------------------- symbols


def symbol_name(feature: str) -> str:
    """The safe identifier naming a feature in sympy and generated code.

    Every ``.`` becomes ``__``: ``"batch.prefill_tokens"`` →
    ``"batch__prefill_tokens"``. :func:`feature_from_symbol` reverses it.

    Parameters
    ----------
    feature : str
        Feature (column) name: dot-separated segments of letters, digits and
        ``_``.

    Returns
    -------
    str
        A Python identifier that is not a keyword.

    Raises
    ------
    StepMLError
        If the name cannot be mapped reversibly: empty, leading/trailing or
        doubled dots, ``__`` or ``_`` next to ``.`` (ambiguous after
        encoding), or characters that make no identifier.
    """
    if not isinstance(feature, str) or not feature:
        raise StepMLError(f"feature name must be a non-empty string, got {feature!r}")
    safe = feature.replace(".", "__")
    if (
        feature.startswith(".")
        or feature.endswith(".")
        or ".." in feature
        or safe.replace("__", ".") != feature
        or not safe.isascii()
        or not safe.isidentifier()
        or keyword.iskeyword(safe)
    ):
        raise StepMLError(
            f"feature name {feature!r} cannot be a formula symbol: use dot-separated "
            "segments of ASCII letters, digits and single '_' (no '__', no '_' next to "
            "'.', not starting with a digit)"
        )
    return safe


def feature_from_symbol(name: str | sympy.Symbol) -> str:
    """The feature name behind a symbol made by :func:`symbol_name`.

    Parameters
    ----------
    name : str or sympy.Symbol
        Safe identifier, e.g. ``"batch__prefill_tokens"``.

    Returns
    -------
    str
        The feature name, e.g. ``"batch.prefill_tokens"``.

    Raises
    ------
    StepMLError
        If ``name`` is not the :func:`symbol_name` of any feature.
    """
    import sympy
    text = name.name if isinstance(name, sympy.Symbol) else name
    if not isinstance(text, str):
        raise StepMLError(f"symbol name must be a string, got {name!r}")
    feature = text.replace("__", ".")
    try:
        ok = symbol_name(feature) == text
    except StepMLError:
        ok = False
    if not ok:
        raise StepMLError(f"{text!r} is not a feature symbol name")
    return feature


def _operator_aliases() -> dict[str, Operator]:
    """Every identifier that names a table operator: table, PySR and Operon names."""
    aliases: dict[str, Operator] = {}
    for op in OPERATORS.values():
        for alias in (op.name, op.pysr_name, op.operon):
            if alias and alias.isidentifier():
                aliases.setdefault(alias, op)
    return aliases


def to_sympy_locals(names: Iterable[str]) -> dict[str, Any]:
    """A namespace for sympy's parser: operators and feature symbols.

    Parameters
    ----------
    names : iterable of str
        Feature names (dotted form).

    Returns
    -------
    dict
        Operator names, their PySR function names (``sqrt_abs``,
        ``log1p_abs``) and Operon names (``fmax``, ``sqrtabs``) → sympy
        builders; :func:`symbol_name` of each feature → ``sympy.Symbol``.

    Raises
    ------
    StepMLError
        If a feature name is not mappable (see :func:`symbol_name`) or its
        symbol would shadow an operator or a parser name.
    """
    import sympy
    local: dict[str, Any] = {alias: op.sympy for alias, op in _operator_aliases().items()}
    operator_keys = set(local)
    for feature in names:
        safe = symbol_name(feature)
        if safe in operator_keys or safe in _RESERVED_NAMES:
            raise StepMLError(
                f"feature name {feature!r} collides with the operator/parser name {safe!r}"
            )
        local[safe] = sympy.Symbol(safe)
    return local


# --------------------------------------------------------------------------- parsing


def parse_formula(text: str, features: Sequence[str], indexed: bool = True) -> sympy.Expr:
    """Parse an infix formula string into a sympy expression, safely.

    The syntax is that of PySR's ``Equation`` column: infix ``+ - * /``,
    ``^`` (or ``**``) for powers, table operators as functions
    (``max(x1, 3.0)``, ``square(x0)``, ``sqrt_abs(x0)``), and variables
    written as safe symbol names (``batch__prefill_tokens``), as ``x0 …
    xN`` (indices into ``features``) or as the dotted feature names
    themselves. A feature whose own name is ``x<i>`` wins over the index.
    Operator names map to the table's sympy builders, so ``sqrt(x0)`` parses
    to ``sqrt(Abs(x0))``. The exact :func:`sympy.srepr` form is accepted too.

    The text is never evaluated as code: it goes through the whitelist
    parser :func:`search_spaces.expressions.parse_expression`, so formulas
    from files other people wrote are safe to read.

    Parameters
    ----------
    text : str
        The formula.
    features : sequence of str
        Feature names, in the column order the ``x<i>`` indices refer to.
    indexed : bool
        Whether ``x<i>`` names the i-th feature (PySR's default variable
        names); off for text that always names features.

    Returns
    -------
    sympy.Expr
        The expression over ``sympy.Symbol(symbol_name(f))`` symbols.

    Raises
    ------
    StepMLError
        If the text does not parse, names an unknown variable or function,
        is not a scalar expression, or is not finite (e.g. ``x0 / 0``); the
        message quotes the text.
    """
    from search_spaces.expressions import parse_expression

    features = list(features)
    local = to_sympy_locals(features)
    names = {symbol_name(f): local[symbol_name(f)] for f in features}
    names.update({f: local[symbol_name(f)] for f in features})
    for i, feature in enumerate(features if indexed else ()):
        names.setdefault(f"x{i}", local[symbol_name(feature)])
    functions = {k: v for k, v in local.items() if k not in names and callable(v)}

    def resolve(name: str) -> sympy.Expr:
        if name in names:
            return names[name]
        valid = ", ".join(features) if features else "(none)"
        raise StepMLError(f"formula {text!r} uses unknown variable(s) {name}; features: {valid}")

    return parse_expression(text, resolve, functions)


# --------------------------------------------------------------------------- evaluation


def _np_max_n(*args: Any) -> np.ndarray:
    return functools.reduce(np.maximum, (_f64(a) for a in args))


def _np_min_n(*args: Any) -> np.ndarray:
    return functools.reduce(np.minimum, (_f64(a) for a in args))


def _negative_number(e: sympy.Basic) -> bool:
    return bool(e.is_Number and e.is_negative)


def log1p_argument(expr: sympy.Basic) -> sympy.Basic | None:
    """``u`` when ``expr`` is ``log(1 + Abs(u))`` (the table's log1p), else None."""
    import sympy
    if isinstance(expr, sympy.log) and len(expr.args) == 1:
        inner = expr.args[0]
        if inner.is_Add and len(inner.args) == 2 and sympy.S.One in inner.args:
            other = inner.args[0] if inner.args[1] == sympy.S.One else inner.args[1]
            if isinstance(other, sympy.Abs):
                return other.args[0]
    return None


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
    inner = log1p_argument(expr)
    if inner is not None:
        return _np_log1p(_interpret(inner, env))
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


# --------------------------------------------------------------------------- complexity


def complexity(expr: sympy.Expr) -> int:
    """PySR-style complexity of a sympy expression under the table weights.

    The expression is read back as table operators:

    * a leaf (symbol, number, named constant) counts 1; a signed constant
      such as ``-2.5`` is one leaf;
    * ``Add`` with ``n`` terms counts ``n - 1`` joins: ``add`` for a term,
      ``sub`` for a term with coefficient exactly -1 (``a - b``), charged on
      the term without its sign; if every term is negated one ``neg`` is
      added (``-a - b`` = ``neg(a) - b``);
    * ``Mul``: a numeric coefficient other than ±1 is a leaf; factors with a
      negative numeric exponent form a denominator, so the node is
      ``div(numerator, denominator)`` (an empty numerator is the leaf
      ``1``); ``k`` factors on a side cost ``k - 1`` ``mul``; a coefficient
      of exactly -1 adds ``neg`` (or is the leaf ``-1`` of ``-1/x``);
    * ``Pow`` with exponent 2, 3, 1/2 is ``square``, ``cube``, ``sqrt``
      (``sqrt(Abs(u))`` is ``sqrt`` of ``u``); a negative exponent is a
      division by the positive power (``x**-1`` = ``1/x``, ``x**-2`` =
      ``1/square(x)``);
    * ``log(1 + Abs(u))`` is ``log1p`` of ``u``; ``Max(0, u)`` is ``relu``
      of ``u``; other ``Max``/``Min`` with ``n`` arguments cost ``n - 1``
      ``max``/``min``;
    * any other node (another power, ``Abs``, ``exp``, …) costs
      :data:`FALLBACK_COMPLEXITY` plus its arguments, exponent included.

    This is the complexity of sympy's canonical form, which may differ from
    that of the tree an engine built (sympy folds ``x*x`` into ``x**2``).

    Parameters
    ----------
    expr : sympy.Expr
        The expression (numbers are accepted).

    Returns
    -------
    int
        The complexity, at least 1.

    Raises
    ------
    StepMLError
        If ``expr`` is not a scalar sympy expression.
    """
    import sympy
    try:
        e = sympy.sympify(expr)
    except (sympy.SympifyError, TypeError) as exc:
        raise StepMLError(f"not a sympy expression: {expr!r}") from exc
    if not isinstance(e, sympy.Expr):
        raise StepMLError(f"not a scalar sympy expression: {expr!r}")
    w = {name: op.complexity for name, op in OPERATORS.items()}
    return _cx(e, w)


def _is_value(e: sympy.Basic, value: float) -> bool:
    return bool(e.is_Number and float(e) == value)


def _cx(e: sympy.Basic, w: Mapping[str, int]) -> int:
    import sympy
    if e.is_Atom:
        return 1
    if e.is_Add:
        return _cx_add(e, w)
    if e.is_Mul or (e.is_Pow and _negative_number(e.exp)):
        return _cx_mul(e, w)
    if e.is_Pow:
        base, exp = e.args
        if _is_value(exp, 2.0):
            return w["square"] + _cx(base, w)
        if _is_value(exp, 3.0):
            return w["cube"] + _cx(base, w)
        if _is_value(exp, 0.5):
            inner = base.args[0] if isinstance(base, sympy.Abs) else base
            return w["sqrt"] + _cx(inner, w)
        return FALLBACK_COMPLEXITY + _cx(base, w) + _cx(exp, w)
    if isinstance(e, sympy.log) and len(e.args) == 1:
        inner = e.args[0]
        if inner.is_Add and len(inner.args) == 2 and sympy.S.One in inner.args:
            other = inner.args[0] if inner.args[1] == sympy.S.One else inner.args[1]
            if isinstance(other, sympy.Abs):
                return w["log1p"] + _cx(other.args[0], w)
    if isinstance(e, (sympy.Max, sympy.Min)):
        args = list(e.args)
        if isinstance(e, sympy.Max) and len(args) == 2 and any(a.is_zero for a in args):
            other = args[1] if args[0].is_zero else args[0]
            return w["relu"] + _cx(other, w)
        key = "max" if isinstance(e, sympy.Max) else "min"
        return (len(args) - 1) * w[key] + sum(_cx(a, w) for a in args)
    return FALLBACK_COMPLEXITY + sum(_cx(a, w) for a in e.args)


def _cx_add(e: sympy.Basic, w: Mapping[str, int]) -> int:
    import sympy
    positive: list[sympy.Basic] = []
    negated: list[sympy.Basic] = []
    for term in e.args:
        if term.is_Mul and term.args[0] == sympy.S.NegativeOne:
            negated.append(-term)
        else:
            positive.append(term)
    cost = sum(_cx(t, w) for t in positive) + sum(_cx(t, w) for t in negated)
    if positive:
        return cost + (len(positive) - 1) * w["add"] + len(negated) * w["sub"]
    return cost + w["neg"] + (len(negated) - 1) * w["sub"]


def _cx_mul(e: sympy.Basic, w: Mapping[str, int]) -> int:
    import sympy
    if e.is_Pow:
        coeff, factors = sympy.S.One, (e,)
    else:
        coeff, factors = e.as_coeff_mul()
    num: list[sympy.Basic] = []
    den: list[sympy.Basic] = []
    for f in factors:
        if f.is_Pow and _negative_number(f.exp):
            den.append(sympy.Pow(f.base, -f.exp))
        else:
            num.append(f)
    negate = False
    if coeff == sympy.S.NegativeOne:
        if num:
            negate = True
        else:
            num.append(coeff)
    elif coeff != sympy.S.One:
        num.insert(0, coeff)

    def product(items: list[sympy.Basic]) -> int:
        if not items:
            return 1  # the constant 1 of 1/x
        return sum(_cx(i, w) for i in items) + (len(items) - 1) * w["mul"]

    cost = product(num)
    if den:
        cost += w["div"] + product(den)
    if negate:
        cost += w["neg"]
    return cost
