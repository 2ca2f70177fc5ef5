"""Reading formula text safely: a whitelist parser that never evaluates code.

Formulas reach the project as text from files other people write: the
``sympy`` and ``Equation`` columns of a ``hall_of_fame.csv`` (ours or PySR's),
an exported ``artifact.json``, a column map. sympy's own parsers
(``sympify``, ``parse_expr``) run Python's ``eval`` on that text, so a crafted
file could run any command. :func:`parse_expression` instead parses the text
with :mod:`ast` and builds the sympy expression itself from a closed set of
node kinds:

* numbers (``int``, ``float``; no ``bool``, no complex), ``+ - * / **`` (a
  number raised to a number keeps ``|exponent| <= 64``) and
  ``^`` (PySR's power, read as ``**``), unary ``-`` and ``+``;
* names, resolved by the caller (features, their safe symbol names, ``x0 …
  xN``); a dotted name (``batch.prefill_tokens``) is one name;
* calls of the operator table's functions under any of their names
  (``max``, ``sqrt_abs``, ``fmax`` …), and of the sympy constructors that
  :func:`sympy.srepr` prints (``Add``, ``Mul``, ``Pow``, ``Symbol('name')``,
  ``Float('1.5', precision=53)``, ``Integer``, ``Rational``, ``Max``, ``Min``,
  ``Abs``, ``log``, ``exp``), so the exact ``srepr`` form round-trips.

Anything else (attribute access on a call, subscripts, lambdas, keywords
other than ``precision``, strings outside ``Symbol``/``Float``) is refused
with a one-line :class:`~features.errors.StepMLError`. Sizes are bounded
(text length, node count, exponent magnitude, integer digits) so a file
cannot make sympy compute for hours; results that are not finite real
numbers (``zoo``, ``nan``, ``I``) are refused too.

A symbol name must be a dotted identifier (``[A-Za-z_][A-Za-z0-9_]*``
segments joined by single dots): names end up in generated C, Go and Python,
so nothing else may get through.
"""
from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping

from features.errors import StepMLError

if TYPE_CHECKING:
    import sympy

__all__ = ["MAX_CHARS", "MAX_NODES", "is_symbol_name", "parse_expression"]

#: Longest formula text accepted.
MAX_CHARS = 100_000
#: Most syntax nodes accepted in one formula.
MAX_NODES = 20_000
#: Largest |exponent| of a power (the table's powers are 2, 3, 1/2 and small negatives).
MAX_EXPONENT = 64
#: Most digits of an integer literal.
MAX_DIGITS = 40

_SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_0-9]+)*")


def is_symbol_name(name: object) -> bool:
    """Whether ``name`` may name a symbol: dotted identifier segments (see the module docstring).

    Parameters
    ----------
    name : object
        The candidate name.

    Returns
    -------
    bool
        True for ``"batch_size"`` or ``"batch.prefill_tokens"``; False for
        anything with other characters, empty segments or a leading digit.
    """
    return isinstance(name, str) and len(name) <= 200 and _SYMBOL_NAME.fullmatch(name) is not None


class _Refused(Exception):
    """Internal: the text uses something the whitelist does not allow."""


def _sympy_constructors() -> dict[str, Callable[..., Any]]:
    import sympy

    def n_ary(kind: Callable[..., Any], least: int) -> Callable[..., Any]:
        def build(*args: Any) -> Any:
            if len(args) < least:
                raise _Refused(f"{kind.__name__} needs at least {least} argument(s)")
            return kind(*args)
        return build

    def fixed(kind: Callable[..., Any], arity: int) -> Callable[..., Any]:
        def build(*args: Any) -> Any:
            if len(args) != arity:
                raise _Refused(f"{kind.__name__} takes {arity} argument(s), got {len(args)}")
            return kind(*args)
        return build

    return {
        "Add": n_ary(sympy.Add, 1), "Mul": n_ary(sympy.Mul, 1), "Pow": fixed(_power, 2),
        "Max": n_ary(sympy.Max, 1), "Min": n_ary(sympy.Min, 1), "Abs": fixed(sympy.Abs, 1),
        "log": fixed(sympy.log, 1), "exp": fixed(sympy.exp, 1),
    }


def _power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``; a number raised to a number must keep ``|exponent| <= MAX_EXPONENT``.

    sympy evaluates a numeric power exactly (``10**10**8`` would compute for
    minutes); a power with a symbol on either side stays symbolic.
    """
    import sympy

    if base.is_Number and exponent.is_Number and abs(float(exponent)) > MAX_EXPONENT:
        raise _Refused(f"numeric power with exponent {exponent} beyond {MAX_EXPONENT}")
    return sympy.Pow(base, exponent)


def _literal(node: ast.AST) -> Any:
    """The Python value of a constant node, or of a negated one (``-1``)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        if isinstance(value, str):
            raise _Refused("a string cannot be negated")
        return -value
    if isinstance(node, ast.Constant):
        return node.value
    raise _Refused(f"expected a literal, got {type(node).__name__}")


def _number(value: Any) -> Any:
    import sympy

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused(f"{value!r} is not a number")
    if isinstance(value, int):
        if len(str(abs(value))) > MAX_DIGITS:
            raise _Refused(f"integer literal with more than {MAX_DIGITS} digits")
        return sympy.Integer(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise _Refused(f"{value!r} is not finite")
    return sympy.Float(value)


class _Builder:
    """Walks a whitelisted :mod:`ast` tree and builds the sympy expression."""

    def __init__(self, resolve: Callable[[str], Any], functions: Mapping[str, Callable[..., Any]],
                 symbol: Callable[[str], Any]) -> None:
        self.resolve = resolve
        self.functions = functions
        self.symbol = symbol
        self.nodes = 0

    def build(self, node: ast.AST) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} syntax nodes")
        if isinstance(node, ast.Constant):
            return _number(node.value)
        if isinstance(node, ast.Name):
            return self.resolve(node.id)
        if isinstance(node, ast.Attribute):
            return self.resolve(_dotted(node))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.build(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise _Refused(f"{type(node).__name__} is not allowed in a formula")

    def _binary(self, node: ast.BinOp) -> Any:
        left, right = self.build(node.left), self.build(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        if isinstance(op, ast.Pow):
            return _power(left, right)
        raise _Refused(f"operator {type(op).__name__} is not allowed in a formula")

    def _call(self, node: ast.Call) -> Any:
        import sympy

        if not isinstance(node.func, ast.Name):
            raise _Refused("only plain function names may be called")
        name = node.func.id
        if name == "Symbol":
            if len(node.args) != 1 or node.keywords:
                raise _Refused("Symbol takes one name")
            text = _literal(node.args[0])
            if not isinstance(text, str):
                raise _Refused("Symbol takes a string")
            return self.symbol(text)
        if name in ("Float", "Integer", "Rational"):
            return self._number_call(name, node)
        if name not in self.functions:
            raise _Refused(f"unknown function '{name}'")
        if node.keywords:
            raise _Refused(f"{name}() takes no keyword arguments")
        args = [self.build(a) for a in node.args]
        try:
            return self.functions[name](*args)
        except _Refused:
            raise
        except (TypeError, ValueError, sympy.SympifyError) as exc:
            raise _Refused(f"{name}(): {exc}") from None

    def _number_call(self, name: str, node: ast.Call) -> Any:
        import sympy

        for kw in node.keywords:
            if kw.arg != "precision" or not isinstance(_literal(kw.value), int):
                raise _Refused(f"{name}() takes only an integer 'precision' keyword")
        values = [_literal(a) for a in node.args]
        if name == "Float":
            if len(values) != 1:
                raise _Refused("Float takes one value")
            value = values[0]
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise _Refused(f"Float({values[0]!r}) is not a number") from None
            return _number(float(value) if isinstance(value, int) and not isinstance(value, bool) else value)
        if not values or len(values) > (1 if name == "Integer" else 2) or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise _Refused(f"{name}() takes integer arguments")
        numbers = [_number(v) for v in values]
        if name == "Integer":
            return numbers[0]
        if len(numbers) == 2 and numbers[1] == 0:
            raise _Refused("Rational with a zero denominator")
        return sympy.Rational(*numbers)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise _Refused("attribute access is not allowed in a formula")
    parts.append(node.id)
    return ".".join(reversed(parts))


def parse_expression(text: str, resolve: Callable[[str], "sympy.Expr"],
                     functions: Mapping[str, Callable[..., "sympy.Expr"]] | None = None, *,
                     symbol: Callable[[str], "sympy.Expr"] | None = None,
                     what: str = "formula") -> "sympy.Expr":
    """Parse formula text (infix or ``sympy.srepr``) into a sympy expression without evaluating code.

    Parameters
    ----------
    text : str
        The formula.
    resolve : callable
        ``resolve(name)`` for a bare (possibly dotted) name: returns the sympy
        expression it stands for, or raises :class:`StepMLError` naming the
        valid names.
    functions : mapping, optional
        Function name → sympy builder, added to (and overriding) the sympy
        constructors of the module docstring. Typically the operator table's
        aliases (:func:`search_spaces.operators.to_sympy_locals`).
    symbol : callable, optional
        ``symbol(name)`` for ``Symbol('name')``; by default the name must pass
        :func:`is_symbol_name` and goes through ``resolve``.
    what : str
        How to call the text in error messages.

    Returns
    -------
    sympy.Expr
        A finite, real scalar expression.

    Raises
    ------
    StepMLError
        One line naming the text and the problem, for anything outside the
        whitelist, too large, not finite or not real.
    """
    import sympy

    if not isinstance(text, str) or not text.strip():
        raise StepMLError(f"cannot parse {what} {text!r}: empty")
    shown = text if len(text) <= 120 else text[:117] + "..."
    if len(text) > MAX_CHARS:
        raise StepMLError(f"cannot parse {what} {shown!r}: longer than {MAX_CHARS} characters")

    def default_symbol(name: str) -> Any:
        if not is_symbol_name(name):
            raise _Refused(f"symbol name {name!r} is not a dotted identifier")
        return resolve(name)

    table = dict(_sympy_constructors())
    table.update(functions or {})
    builder = _Builder(resolve, table, symbol or default_symbol)
    try:
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")  # PySR's power, Python's precedence
        expr = builder.build(tree.body)
    except _Refused as exc:
        raise StepMLError(f"cannot parse {what} {shown!r}: {exc}") from None
    except SyntaxError as exc:
        raise StepMLError(f"cannot parse {what} {shown!r}: syntax error ({exc.msg})") from None
    except (RecursionError, MemoryError):  # Python's own parser gives up on deep nesting with either
        raise StepMLError(f"cannot parse {what} {shown!r}: nested too deeply") from None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, sympy.SympifyError) as exc:
        raise StepMLError(f"cannot parse {what} {shown!r}: {type(exc).__name__}: {exc}") from None
    expr = sympy.sympify(expr) if isinstance(expr, (int, float)) else expr
    if not isinstance(expr, sympy.Expr):
        raise StepMLError(f"{what} {shown!r} is not a scalar expression (got {type(expr).__name__})")
    if expr.has(sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
        raise StepMLError(f"{what} {shown!r} is not finite: {expr}")
    if expr.has(sympy.I):
        raise StepMLError(f"{what} {shown!r} is not real: {expr}")
    return expr
