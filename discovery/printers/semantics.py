"""The operator table's semantics every printer reproduces (Python, C, Go).

The search evaluates formulas with :func:`search_spaces.numeric.lambdify_formula`,
whose partial operators are *protected*; an exported formula must mean the
same thing in every language, so each printer prints these nodes the same way:

* **division** — a product with factors of negative numeric power
  (``a·b·c⁻¹·d⁻²``) is the protected division of the product of the other
  factors by the product of the inverted ones: ``div(a·b, c·d²)``, which
  returns the numerator where ``|den| < 1e-12`` (:data:`~search_spaces.operators.DIV_EPS`)
  or where the quotient of finite operands overflows. :func:`division_parts`
  splits a node exactly as the evaluator does;
* ``log(1 + Abs(u))`` (the table's ``log1p``) is ``log1p(|u|)``;
  :func:`log1p_argument` recognises it.

Each printer supplies the ``div`` helper in its own language (Python ``_div``,
C ``stepml_div``, Go ``stepMLDiv``); the helpers are written from
:data:`DIV_RULE`, the one sentence that defines them.
"""
from __future__ import annotations

import sympy

from search_spaces import operators
from search_spaces.operators import DIV_EPS

__all__ = ["DIV_EPS", "DIV_RULE", "division_parts", "log1p_argument"]

#: What every language's ``div`` helper does (quoted in the generated files).
DIV_RULE = (f"protected division as in the search: a / b, except a where |b| < {DIV_EPS!r} "
            "or where the quotient of finite a and b overflows")


def division_parts(expr: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr] | None:
    """``(numerator, denominator)`` when ``expr`` divides, else None.

    A ``Mul`` or ``Pow`` divides when a factor has a negative numeric exponent;
    the numerator is the product of the other factors (1 when there are none),
    the denominator the product of the inverted factors — the grouping of
    :func:`search_spaces.numeric.lambdify_formula`.
    """
    factors = [expr] if expr.is_Pow else list(expr.args) if expr.is_Mul else []
    num, den = [], []
    for f in factors:
        if f.is_Pow and f.exp.is_Number and f.exp.is_negative:
            den.append(sympy.Pow(f.base, -f.exp))
        else:
            num.append(f)
    if not den:
        return None
    return sympy.Mul(*num), sympy.Mul(*den)


def log1p_argument(expr: sympy.Expr) -> sympy.Expr | None:
    """The ``Abs(u)`` node when ``expr`` is ``log(1 + Abs(u))``, else None (the evaluator's own test)."""
    inner = operators.OPERATORS["log1p"].match(expr)  # type: ignore[misc]
    return None if inner is None else sympy.Abs(inner[0])
