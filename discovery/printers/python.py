"""Python export: sympy's Python and NumPy printers with the operator table's semantics.

Two printers, each a small subclass of the sympy printer for its target
(``sympy/printing/pycode.py`` ``PythonCodePrinter`` and
``sympy/printing/numpy.py`` ``NumPyPrinter``), so every construct is printed
by sympy's tables and only the table's own semantics are added:

* **protected division** — a product with factors of negative power
  (``a·b⁻¹``) prints as ``_div(a, b)`` (math) or ``_div_array(a, b)``
  (numpy), the helpers written into ``formula.py`` that return the numerator
  where ``|b| < 1e-12`` or the quotient overflows, exactly as
  :func:`search_spaces.numeric.lambdify_formula` evaluates it;
* ``log(1 + Abs(u))`` (the table's ``log1p``) prints as ``log1p(abs(u))``,
  the same function the evaluator calls;
* ``Max``/``Min`` keep sympy's forms: ``max(a, b, c)`` for scalars and
  ``functools.reduce(numpy.maximum, [a, b, c])`` for arrays (never
  ``numpy.maximum(a, b, c)``, whose third argument is an *output* array).

:func:`python_expression` prints one expression; :data:`HELPERS` is the
source of the two helpers.
"""
from __future__ import annotations

from typing import Any, Mapping

import sympy
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from discovery.printers.semantics import DIV_EPS, division_parts, log1p_argument
from features.errors import StepMLError

__all__ = ["HELPERS", "python_expression", "scalar_function"]

#: Source of the protected-division helpers the printed expressions call.
HELPERS = f'''
def _div(a, b):
    """Protected division (as in the search): ``a`` where ``|b| < {DIV_EPS!r}`` or the quotient overflows."""
    if abs(b) < {DIV_EPS!r}:
        return a
    q = a / b
    if not math.isfinite(q) and math.isfinite(a) and math.isfinite(b):
        return a
    return q


def _div_array(a, b):
    """Vectorised :func:`_div` (new arrays; the inputs are never written)."""
    import numpy

    num, den = numpy.broadcast_arrays(numpy.asarray(a, dtype=float), numpy.asarray(b, dtype=float))
    out = numpy.array(num, dtype=float, copy=True)
    ok = numpy.abs(den) >= {DIV_EPS!r}
    with numpy.errstate(over="ignore", under="ignore"):
        numpy.divide(num, den, out=out, where=ok)
    overflow = ok & ~numpy.isfinite(out) & numpy.isfinite(num) & numpy.isfinite(den)
    out[overflow] = num[overflow]
    return out
'''


class _TableSemantics:
    """The table's semantics on top of a sympy Python-family printer (a mixin)."""

    div_helper = "_div"

    def _print_Mul(self, expr: sympy.Expr) -> str:
        parts = division_parts(expr)
        if parts is None:
            return super()._print_Mul(expr)  # type: ignore[misc]
        num, den = parts
        return f"{self.div_helper}({self._print(num)}, {self._print(den)})"  # type: ignore[attr-defined]

    def _print_Pow(self, expr: sympy.Expr, rational: bool = False) -> str:
        parts = division_parts(expr)
        if parts is None:
            return super()._print_Pow(expr, rational=rational)  # type: ignore[misc]
        num, den = parts
        return f"{self.div_helper}({self._print(num)}, {self._print(den)})"  # type: ignore[attr-defined]

    def _print_log(self, expr: sympy.Expr) -> str:
        inner = log1p_argument(expr)
        if inner is None:
            return super()._print_log(expr)  # type: ignore[misc]
        return f"{self._module_format(self.log1p_name)}({self._print(inner)})"  # type: ignore[attr-defined]


class MathPrinter(_TableSemantics, PythonCodePrinter):
    """Scalar Python (``math`` module) with the table's semantics."""

    log1p_name = "math.log1p"


class ArrayPrinter(_TableSemantics, NumPyPrinter):
    """NumPy with the table's semantics (``functools.reduce(numpy.maximum, …)`` for ``Max``)."""

    div_helper = "_div_array"
    log1p_name = "numpy.log1p"


def python_expression(expr: sympy.Expr, names: Mapping[sympy.Symbol, str] | None = None,
                      vectorised: bool = False) -> str:
    """One Python expression computing ``expr`` with the table's semantics.

    Parameters
    ----------
    expr : sympy.Expr
        The formula.
    names : mapping, optional
        Symbol → the Python text standing for it (``X['batch_size']``);
        symbols not in the mapping print as their names.
    vectorised : bool
        NumPy arrays (``numpy``, ``functools``, ``_div_array``) instead of
        scalars (``math``, ``_div``).

    Returns
    -------
    str
        The expression text.

    Raises
    ------
    StepMLError
        If ``expr`` is not a sympy expression or has no Python form.
    """
    if not isinstance(expr, sympy.Expr):
        raise StepMLError(f"not a sympy expression: {expr!r}")
    printer: Any = (ArrayPrinter if vectorised else MathPrinter)({"fully_qualified_modules": True,
                                                                  "strict": True})
    placeholders = {s: sympy.Symbol(f"_stepml_arg{i}") for i, s in enumerate(sorted(expr.free_symbols, key=str))}
    try:
        text = printer.doprint(expr.xreplace(placeholders))
    except Exception as exc:  # sympy's printers raise several types for unprintable nodes
        raise StepMLError(f"cannot print {expr} as Python: {str(exc).splitlines()[0]}") from None
    for s, p in sorted(placeholders.items(), key=lambda kv: -len(kv[1].name)):
        text = text.replace(p.name, (names or {}).get(s, s.name))
    return text


def scalar_function(expr: sympy.Expr) -> Any:
    """Compile ``expr`` (over canonical column symbols) into ``f(columns) -> float``.

    ``columns`` maps each symbol's name to a float. The code is printed by
    :class:`MathPrinter` from a sympy expression (never from user text), with
    the protected-division helper in its namespace.

    Raises
    ------
    StepMLError
        If the expression has no Python form.
    """
    import math

    names = {s: f"_c[{s.name!r}]" for s in expr.free_symbols}
    body = python_expression(expr, names)
    namespace: dict[str, Any] = {"math": math, "__builtins__": {"abs": abs, "max": max, "min": min, "float": float}}
    exec(HELPERS.split("def _div_array", 1)[0], namespace)  # noqa: S102 - our own helper source
    return eval(f"lambda _c: float({body})", namespace)  # noqa: S307 - printed from a sympy tree
