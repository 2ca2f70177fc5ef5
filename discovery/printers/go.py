"""Go export, part 1: a table-driven sympy printer for one Go float64 expression.

:class:`GoCodePrinter` is modelled on sympy's own table-driven code printers
(``sympy/printing/codeprinter.py`` ``CodePrinter`` and ``sympy/printing/c.py``
``C99CodePrinter``): a ``known_functions`` table maps sympy functions to Go's
``math`` package, ``_print_Pow`` special-cases the small powers, numbers are
printed as float64 literals, and parentheses follow sympy's precedence table
(Go's ``*``/``/`` and ``+``/``-`` bind like C's and Python's).

The rest of the Go export lives beside it: :mod:`discovery.printers.gofmt`
lays an expression out as gofmt does, :mod:`discovery.printers.go_source`
builds the BLIS latency-model file, :mod:`discovery.printers.blis_columns`
computes architecture and hardware columns from BLIS's configuration,
:mod:`discovery.printers.go_tests` writes its Go test file and
:mod:`discovery.printers.blis` the overlay folder BLIS is built with.

Number rules (every literal is a float64 constant):

* ``Integer`` ``2`` → ``2.0``;
* ``Float`` → ``repr`` of the Python float (the shortest string that reads
  back to the same float64, e.g. ``0.1``, ``1e-06``): no digit of the value
  Go computes with is lost; ``inf``/``nan`` → ``math.Inf(1)``/``math.NaN()``;
* ``Rational`` ``p/q`` → ``(p.0/q.0)``: a Go constant expression, evaluated
  exactly by the compiler and rounded once, as Python's ``p/q`` is.

Semantics (the operator table's, :mod:`discovery.printers.semantics`):

* a product with factors of negative power is the protected division
  ``stepMLDiv(numerator, denominator)`` (the helper the generated file
  defines: ``a`` where ``|b| < 1e-12`` or where the quotient of finite
  operands overflows), exactly as :func:`search_spaces.numeric.lambdify_formula`
  evaluates it: ``1/x`` → ``stepMLDiv(1.0, x)``, ``a*b/(c*x)`` →
  ``stepMLDiv(a*b, c*x)``, ``x**-0.5`` → ``stepMLDiv(1.0, math.Sqrt(x))``;
* ``log(1 + Abs(u))`` (the table's ``log1p``) → ``math.Log1p(math.Abs(u))``;
* ``x**2`` → ``(x*x)``, ``x**3`` → ``(x*x*x)``, ``x**0.5`` → ``math.Sqrt(x)``,
  other powers ``math.Pow(x, y)``; ``Max``/``Min`` of any number of arguments
  nest ``math.Max``/``math.Min`` (as sympy's C99 printer nests ``fmax``).

BLIS latency interface (inference-sim/inference-sim, commit f90a1e3)
--------------------------------------------------------------------
* module ``github.com/inference-sim/inference-sim``; ``sim/latency_model.go``::

      type LatencyModel interface {
          StepTime(batch []*Request) int64        // >= 1 for every input, the empty batch included
          QueueingTime(req *Request) int64
          OutputTokenProcessingTime() int64
          PostDecodeFixedOverhead() int64
      }

  all in microseconds (ticks); the factory ``sim/latency/latency.go``
  ``NewLatencyModel(coeffs, hw sim.ModelHardwareConfig, opts ...Option)``
  dispatches on ``hw.Backend``; ``sim/bundle.go`` lists the backend names;
* ``sim/request.go``: ``Request{InputTokens []TokenID; ProgressIndex int64;
  NumNewTokens int; ...}`` — BLIS's own models classify a request as prefill
  when ``ProgressIndex < InputLen()``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import sympy
from sympy.core.numbers import equal_valued
from sympy.printing.codeprinter import CodePrinter
from sympy.printing.precedence import PRECEDENCE

from discovery.printers.semantics import division_parts, log1p_argument
from features.errors import StepMLError

__all__ = [
    "BLIS_MODULE",
    "BLIS_SIM_PACKAGE",
    "DIV_FUNCTION",
    "GO_KEYWORDS",
    "GoCodePrinter",
    "go_code",
    "go_identifier",
]

#: Go module path of BLIS (inference-sim/inference-sim ``go.mod``).
BLIS_MODULE = "github.com/inference-sim/inference-sim"
#: Import path of the package that declares ``Request`` and ``LatencyModel``.
BLIS_SIM_PACKAGE = BLIS_MODULE + "/sim"
#: The protected-division helper every generated Go file defines.
DIV_FUNCTION = "stepMLDiv"

#: Go's keywords: a symbol printed as one of these gets ``_`` appended.
GO_KEYWORDS = frozenset(
    "break case chan const continue default defer else fallthrough for func go goto if import "
    "interface map package range return select struct switch type var".split()
)

# sympy function name → Go function (the ``known_functions`` table).
known_functions_go: dict[str, str] = {
    "Abs": "math.Abs",
    "sqrt": "math.Sqrt",  # sympy's sqrt is Pow(x, 1/2): see _print_Pow; kept for user tables
    "exp": "math.Exp",
    "log": "math.Log",
    "Max": "math.Max",
    "Min": "math.Min",
    "floor": "math.Floor",
    "ceiling": "math.Ceil",
    "sin": "math.Sin",
    "cos": "math.Cos",
    "tan": "math.Tan",
    "tanh": "math.Tanh",
    "expm1": "math.Expm1",
    "log1p": "math.Log1p",
}


def go_identifier(name: str) -> str:
    """The Go identifier for a column, feature or symbol name.

    Dots, ``__`` and ``_`` separate words; the first word is kept as it is
    and every later word is capitalised (lower camel case):
    ``batch.prefill_tokens`` and ``batch__prefill_tokens`` → ``batchPrefillTokens``,
    ``kv_tokens`` → ``kvTokens``. Characters that cannot appear in an
    identifier are dropped; a leading digit gets a ``v`` prefix; a Go keyword
    gets ``_`` appended.
    """
    words = [re.sub(r"[^0-9A-Za-z]", "", w) for w in re.split(r"[._]+", str(name))]
    words = [w for w in words if w]
    if not words:
        return "v"
    ident = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    if ident[0].isdigit():
        ident = "v" + ident
    if ident in GO_KEYWORDS:
        ident += "_"
    return ident


class GoCodePrinter(CodePrinter):
    """Print a sympy expression as one Go float64 expression.

    Parameters
    ----------
    settings : dict, optional
        ``names``: sympy Symbol name → Go text (names not in the map go
        through :func:`go_identifier`); ``user_functions``: extra entries for
        the ``known_functions`` table (sympy function name → Go function);
        ``div_function``: the protected-division helper (default
        :data:`DIV_FUNCTION`). Any other ``CodePrinter`` setting.

    Unsupported nodes (relations, Piecewise, unknown functions) raise
    :class:`sympy.printing.codeprinter.PrintMethodNotImplementedError`
    (``strict``): partial Go is never produced.
    """

    printmethod = "_gocode"
    language = "Go"
    reserved_words = set(GO_KEYWORDS)

    _default_settings: dict[str, Any] = dict(
        CodePrinter._default_settings,
        **{
            "precision": 17,
            "user_functions": {},
            "names": {},
            "div_function": DIV_FUNCTION,
            "inline": True,
            "strict": True,
        },
    )

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        settings = dict(settings or {})
        super().__init__(settings)
        self.known_functions = dict(known_functions_go, **settings.get("user_functions", {}))
        self._names: dict[str, str] = dict(settings.get("names", {}))

    # -- CodePrinter plumbing ---------------------------------------------------------------

    def _rate_index_position(self, p: int) -> int:
        return p * 5

    def _get_statement(self, codestring: str) -> str:
        return codestring

    def _get_comment(self, text: str) -> str:
        return "// " + text

    def _declare_number_const(self, name: str, value: Any) -> str:
        return f"const {name} = {self._print(value)}"

    def _format_code(self, lines: list[str]) -> list[str]:
        return lines

    def parenthesize(self, item: Any, level: int, strict: bool = False) -> str:
        # A positive Rational prints as "(p.0/q.0)" already: no second pair.
        if isinstance(item, sympy.Rational) and not item.is_Integer and item.p > 0:
            return self._print(item)
        return super().parenthesize(item, level, strict)

    # -- atoms ------------------------------------------------------------------------------

    def _print_Symbol(self, expr: sympy.Symbol) -> str:
        name = self._names.get(expr.name)
        if name is None:
            name = go_identifier(expr.name)
        return name

    _print_Dummy = _print_Symbol

    def _print_Integer(self, expr: sympy.Integer) -> str:
        return f"{int(expr.p)}.0"

    def _print_Zero(self, expr: sympy.Integer) -> str:
        return "0.0"

    def _print_Rational(self, expr: sympy.Rational) -> str:
        p, q = int(expr.p), int(expr.q)
        if q == 1:
            return f"{p}.0"
        if p < 0:
            return f"-({-p}.0/{q}.0)"
        return f"({p}.0/{q}.0)"

    def _print_Float(self, expr: sympy.Float) -> str:
        value = float(expr)
        if value != value:
            return "math.NaN()"
        if value in (float("inf"), float("-inf")):
            return "math.Inf(1)" if value > 0 else "math.Inf(-1)"
        return repr(value)

    def _print_Infinity(self, expr: Any) -> str:
        return "math.Inf(1)"

    def _print_NegativeInfinity(self, expr: Any) -> str:
        return "math.Inf(-1)"

    def _print_NaN(self, expr: Any) -> str:
        return "math.NaN()"

    def _print_Pi(self, expr: Any) -> str:
        return "math.Pi"

    def _print_Exp1(self, expr: Any) -> str:
        return "math.E"

    # -- operators --------------------------------------------------------------------------

    def _print_division(self, expr: sympy.Expr) -> str | None:
        parts = division_parts(expr)
        if parts is None:
            return None
        num, den = parts
        return f"{self._settings['div_function']}({self._print(num)}, {self._print(den)})"

    def _print_Mul(self, expr: sympy.Mul) -> str:
        divided = self._print_division(expr)
        return divided if divided is not None else super()._print_Mul(expr)

    def _print_Pow(self, expr: sympy.Pow) -> str:
        divided = self._print_division(expr)
        if divided is not None:
            return divided
        base, exp = expr.base, expr.exp
        b = self.parenthesize(base, PRECEDENCE["Mul"], strict=False)
        if exp.is_Number:
            if equal_valued(exp, 2):
                return f"({b}*{b})"
            if equal_valued(exp, 3):
                return f"({b}*{b}*{b})"
            if equal_valued(exp, 0.5):
                return f"{self.known_functions['sqrt']}({self._print(base)})"
        return f"math.Pow({self._print(base)}, {self._print(exp)})"

    def _print_nested(self, expr: sympy.Expr) -> str:
        """``f(a, f(b, c))`` for an n-ary ``Max``/``Min`` (Go's are binary)."""
        func = self.known_functions[type(expr).__name__]
        args = [self._print(a) for a in expr.args]
        out = args[-1]
        for arg in reversed(args[:-1]):
            out = f"{func}({arg}, {out})"
        return out

    def _print_Max(self, expr: sympy.Max) -> str:
        return self._print_nested(expr)

    def _print_Min(self, expr: sympy.Min) -> str:
        return self._print_nested(expr)

    def _print_log(self, expr: sympy.log) -> str:
        inner = log1p_argument(expr)
        if inner is not None:
            return f"{self.known_functions['log1p']}({self._print(inner)})"
        if len(expr.args) != 1:
            return self._print(sympy.log(expr.args[0]) / sympy.log(expr.args[1]))
        return self._print_Function(expr)


def go_code(expr: Any, names: Mapping[str, str] | None = None, div_function: str = DIV_FUNCTION) -> str:
    """One Go float64 expression for a sympy expression.

    Parameters
    ----------
    expr : sympy.Expr
        The expression (a string is parsed by sympy: only for trusted literals
        in tests; text from files goes through :mod:`search_spaces.expressions`).
    names : mapping, optional
        sympy Symbol name → Go text; other symbols go through
        :func:`go_identifier` (``batch.prefill_tokens`` → ``batchPrefillTokens``).
    div_function : str
        The protected-division helper the expression calls.

    Raises
    ------
    StepMLError
        If the expression holds a node with no Go form (a relation, an
        unknown function).
    """
    from sympy.printing.codeprinter import PrintMethodNotImplementedError

    expr = sympy.sympify(expr)
    try:
        return GoCodePrinter({"names": dict(names or {}), "div_function": div_function}).doprint(expr)
    except PrintMethodNotImplementedError as exc:
        raise StepMLError(f"cannot print {expr} as Go: {str(exc).splitlines()[0]}") from None
