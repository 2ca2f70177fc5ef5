"""The operator table: declared once as data, used by search and by export.

Every search engine (DEAP, Operon, PySR) and every exporter (sympy → Python,
LaTeX, C, Go) reads the primitives it may use from :data:`OPERATORS`, so a
formula means the same thing wherever it is found, evaluated or printed.

Each :class:`Operator` carries

* a vectorised **numpy** implementation (what DEAP evaluates during search),
* a **sympy** builder (what export and :func:`parse_formula` produce),
* a **complexity** weight (what :func:`search_spaces.objective.complexity` and PySR's
  ``complexity_of_operators`` charge for one node),
* the **PySR** and **Operon** spellings of the same primitive,
* a **match** of its sympy form, how :mod:`search_spaces.prefix` reads sympy
  back into table operators (the canonical prefix form every engine uses).

Adding an operator is one row here plus its spelling in the printers
(:mod:`discovery.printers`).

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
    finite, and :func:`search_spaces.numeric.lambdify_formula` evaluates divisions with this same
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
(``batch__prefill_tokens``), reversed by :func:`feature_from_symbol` (both in
:mod:`search_spaces.symbols`, imported here). Pass
``[symbol_name(f) for f in features]`` as PySR's ``variable_names``.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from features.errors import StepMLError
from search_spaces.symbols import feature_from_symbol, symbol_name

if TYPE_CHECKING:  # sympy is imported on first use: search workers need only numpy
    import sympy

__all__ = [
    "DIV_EPS",
    "FALLBACK_COMPLEXITY",
    "OPERATORS",
    "Operator",
    "feature_from_symbol",
    "get_operator",
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
    match : Callable[[sympy.Basic], tuple or None], optional
        Recognises the operator's sympy form and returns its argument
        expressions (more than ``arity`` for an n-ary ``Max``/``Min``, folded
        into nested binary nodes), else None. How
        :func:`search_spaces.prefix.from_sympy` reads sympy back into the
        table; None for ``add, sub, mul, div, neg``, which that converter reads
        from sympy's ``Add``/``Mul`` structure.
    """

    name: str
    arity: int
    numpy: Callable[..., np.ndarray]
    sympy: Callable[..., sympy.Expr]
    complexity: int
    pysr: str
    operon: str | None
    description: str
    match: Callable[[Any], tuple[Any, ...] | None] | None = None

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


# --------------------------------------------------------------------------- sympy patterns
# Each returns the argument expressions when a sympy node is the operator's own form, else None.


def _is_value(e: Any, value: float) -> bool:
    return bool(e.is_Number and float(e) == value)


def _match_square(e: Any) -> tuple[Any, ...] | None:
    return (e.base,) if e.is_Pow and _is_value(e.exp, 2.0) else None


def _match_cube(e: Any) -> tuple[Any, ...] | None:
    return (e.base,) if e.is_Pow and _is_value(e.exp, 3.0) else None


def _match_sqrt(e: Any) -> tuple[Any, ...] | None:
    import sympy
    if e.is_Pow and _is_value(e.exp, 0.5):
        return (e.base.args[0] if isinstance(e.base, sympy.Abs) else e.base,)
    return None


def _match_log1p(e: Any) -> tuple[Any, ...] | None:
    """``u`` of ``log(1 + Abs(u))``."""
    import sympy
    if isinstance(e, sympy.log) and len(e.args) == 1:
        inner = e.args[0]
        if inner.is_Add and len(inner.args) == 2 and sympy.S.One in inner.args:
            other = inner.args[0] if inner.args[1] == sympy.S.One else inner.args[1]
            if isinstance(other, sympy.Abs):
                return (other.args[0],)
    return None


def _match_relu(e: Any) -> tuple[Any, ...] | None:
    import sympy
    if isinstance(e, sympy.Max) and len(e.args) == 2 and any(a.is_zero for a in e.args):
        return (e.args[1] if e.args[0].is_zero else e.args[0],)
    return None


def _match_max(e: Any) -> tuple[Any, ...] | None:
    import sympy
    return tuple(e.args) if isinstance(e, sympy.Max) else None


def _match_min(e: Any) -> tuple[Any, ...] | None:
    import sympy
    return tuple(e.args) if isinstance(e, sympy.Min) else None


# --------------------------------------------------------------------------- table

_TABLE: tuple[Operator, ...] = (
    Operator("add", 2, _np_add, _sp_add, 1, "+", "add", "a + b"),
    Operator("sub", 2, _np_sub, _sp_sub, 1, "-", "sub", "a - b"),
    Operator("mul", 2, _np_mul, _sp_mul, 1, "*", "mul", "a * b"),
    Operator("div", 2, _np_div, _sp_div, 2, "/", "div",
             "a / b; returns a where |b| < 1e-12 or the quotient overflows"),
    Operator("max", 2, _np_max, _sp_max, 2, "max", "fmax", "larger of a and b", _match_max),
    Operator("min", 2, _np_min, _sp_min, 2, "min", "fmin", "smaller of a and b", _match_min),
    Operator("square", 1, _np_square, _sp_square, 2, "square", "square", "x ** 2", _match_square),
    Operator("cube", 1, _np_cube, _sp_cube, 3, "cube", None, "x ** 3", _match_cube),
    Operator("sqrt", 1, _np_sqrt, _sp_sqrt, 3, "sqrt_abs(x) = sqrt(abs(x))", "sqrtabs",
             "sqrt(|x|)", _match_sqrt),
    Operator("log1p", 1, _np_log1p, _sp_log1p, 3, "log1p_abs(x) = log1p(abs(x))", None,
             "log(1 + |x|)", _match_log1p),
    Operator("relu", 1, _np_relu, _sp_relu, 2, "relu", None, "max(x, 0)", _match_relu),
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


# --------------------------------------------------------------------------- parsing names


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
