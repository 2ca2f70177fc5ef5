"""C export: a C99 function of the formula's features, printed by sympy's C99 printer.

:func:`c_source` writes one self-contained C99 translation unit::

    double stepml_step_time_us(double f0, double f1, ...);   /* one double per feature */
    double stepml_step_time_us_v(const double *x);           /* x[i] is feature i */

The argument order is the order of ``features`` as given (``x[i]`` is
``features[i]``); the header comment lists it. Parameters are named by
:func:`search_spaces.operators.symbol_name` (dots → ``__``), with sympy's
reserved-word suffix ``_`` where a name is a C keyword.

Expressions come from :class:`sympy.printing.c.C99CodePrinter` (what
``ccode(expr, standard="C99")`` uses): ``Max``/``Min`` nest ``fmax``/``fmin``,
``Abs`` is ``fabs``, ``x**0.5`` is ``sqrt(x)``, other powers ``pow``,
rationals ``p.0/q.0`` and floats with 17 significant digits (round-trip for
float64), with the operator table's semantics added
(:mod:`discovery.printers.semantics`): a product with factors of negative
power is the protected division ``stepml_div(numerator, denominator)`` (a
``static`` helper in the file: ``a`` where ``|b| < 1e-12`` or the quotient of
finite operands overflows), and ``log(1 + Abs(u))`` is ``log1p(fabs(u))``.
``fmax``/``fmin`` return the other argument where one is NaN (numpy's
``maximum`` propagates NaN).
"""
from __future__ import annotations

from typing import Any, Sequence

import sympy
from sympy.printing.c import C99CodePrinter

from discovery.printers.semantics import DIV_EPS, DIV_RULE, division_parts, log1p_argument
from features.errors import StepMLError
from search_spaces.operators import symbol_name

__all__ = ["C_DIV_FUNCTION", "c_code", "c_source"]

#: The protected-division helper every generated C file defines.
C_DIV_FUNCTION = "stepml_div"

_C_HELPER = f"""\
/* {DIV_RULE}. */
static double {C_DIV_FUNCTION}(double a, double b)
{{
    if (fabs(b) < {DIV_EPS!r}) return a;
    double q = a / b;
    if (!isfinite(q) && isfinite(a) && isfinite(b)) return a;
    return q;
}}
"""


class TableC99Printer(C99CodePrinter):
    """sympy's C99 printer with the operator table's protected division and ``log1p``."""

    def _print_division(self, expr):
        parts = division_parts(expr)
        if parts is None:
            return None
        return f"{C_DIV_FUNCTION}({self._print(parts[0])}, {self._print(parts[1])})"

    def _print_Mul(self, expr):
        divided = self._print_division(expr)
        return divided if divided is not None else super()._print_Mul(expr)

    def _print_Pow(self, expr):
        divided = self._print_division(expr)
        return divided if divided is not None else super()._print_Pow(expr)

    def _print_log(self, expr):
        inner = log1p_argument(expr)
        if inner is not None:
            return f"log1p({self._print(inner)})"
        return super()._print_log(expr)


def _printer() -> C99CodePrinter:
    return TableC99Printer({"strict": True})


def c_code(expr: Any) -> str:
    """One C99 expression for a sympy expression (sympy's C99 printer, strict)."""
    from sympy.printing.codeprinter import PrintMethodNotImplementedError

    expr = sympy.sympify(expr)
    try:
        return _printer().doprint(expr)
    except PrintMethodNotImplementedError as exc:
        raise StepMLError(f"cannot print {expr} as C: {str(exc).splitlines()[0]}") from None


def _comment_safe(text: str) -> str:
    return text.replace("*/", "* /")


def c_source(formula: Any, features: Sequence[str], name: str = "stepml_step_time_us") -> str:
    """A C99 source file computing ``formula`` from its features.

    Parameters
    ----------
    formula : sympy.Expr or str
        The step time (µs) over symbols named by the features (the feature
        name itself, or :func:`~search_spaces.operators.symbol_name` of it).
    features : sequence of str
        Feature names in argument order; every symbol of the formula must be
        one of them (features the formula does not use are still parameters).
    name : str
        The function name; the array form is ``name + "_v"``.

    Returns
    -------
    str
        C99 source: ``#include <math.h>``, ``double name(double ...)`` and
        ``double name_v(const double *x)``, with a header comment giving the
        formula and the argument order.

    Raises
    ------
    StepMLError
        If the formula uses a symbol that is not a feature, a feature is
        listed twice, ``name`` is not a C identifier, or the formula has no C
        form.
    """
    formula = sympy.sympify(formula)
    if not isinstance(formula, sympy.Expr):
        raise StepMLError(f"formula {formula!r} is not a scalar expression")
    features = list(features)
    if len(set(features)) != len(features):
        raise StepMLError(f"features listed more than once: {features}")
    printer = _printer()
    if not name.isidentifier() or not name.isascii() or name in printer.reserved_words:
        raise StepMLError(f"function name {name!r} is not a C identifier")
    params = [sympy.Symbol(symbol_name(f)) for f in features]
    by_name = {}
    for feature, param in zip(features, params):
        by_name[feature] = param
        by_name[param.name] = param
    unknown = sorted(s.name for s in formula.free_symbols if s.name not in by_name)
    if unknown:
        raise StepMLError(
            f"formula {formula} uses symbol(s) {', '.join(unknown)} that are not among the features "
            f"({', '.join(features) or 'none'})"
        )
    expr = formula.xreplace({s: by_name[s.name] for s in formula.free_symbols})
    body = c_code(expr)
    c_names = [printer.doprint(p) for p in params]
    if name in c_names or f"{name}_v" in c_names or "x" in c_names:
        raise StepMLError(f"a feature's C name clashes with the function or its array argument: {c_names}")

    order = "\n".join(f" *   x[{i}]  {c}  ({f})" if c != f else f" *   x[{i}]  {c}"
                      for i, (f, c) in enumerate(zip(features, c_names)))
    lines = [
        "/* Generated by StepML Discovery (discovery/printers/c.py). Do not edit.",
        " *",
        " * Predicted step time in microseconds:",
        f" *   {_comment_safe(sympy.sstr(expr.xreplace({p: sympy.Symbol(f) for f, p in zip(features, params)})))}",
        " *",
        f" * Arguments of {name}, in this order; x[i] of {name}_v is argument i:",
    ]
    lines += [order] if features else [" *   (none)"]
    lines += [
        " */",
        "#include <math.h>",
        "",
        *(_C_HELPER.splitlines() + [""] if C_DIV_FUNCTION + "(" in body else []),
        f"double {name}({', '.join(f'double {c}' for c in c_names) or 'void'})",
        "{",
        f"    return {body};",
        "}",
        "",
        f"double {name}_v(const double *x)",
        "{",
    ]
    if c_names:
        lines.append(f"    return {name}({', '.join(f'x[{i}]' for i in range(len(c_names)))});")
    else:
        lines += ["    (void)x;", f"    return {name}();"]
    lines.append("}")
    return "\n".join(lines) + "\n"
