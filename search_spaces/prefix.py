"""The canonical expression form: a prefix node list, with one converter each way to and from sympy.

A formula in this form is a list of :class:`Node` in prefix (Polish) order::

    add(mul(1.25, rl_weight_load), rl_kv_read)
    → [Node(OP, "add"), Node(OP, "mul"), Node(CONST, 1.25), Node(VAR, "rl_weight_load"), Node(VAR, "rl_kv_read")]

``OP`` nodes name a row of the operator table (:data:`search_spaces.operators.OPERATORS`),
``VAR`` nodes a feature by its symbol name (:func:`~search_spaces.operators.symbol_name`),
``CONST`` nodes hold a float. Every engine translates through this form: DEAP's
trees *are* prefix lists (their text, :func:`format_prefix`, is what
``str(deap.gp.PrimitiveTree)`` prints), Operon's seed trees and PySR's guesses
are rendered from it, and the table complexity of any sympy expression is the
weight of its prefix form (:func:`weight`).

The two converters
------------------
:func:`from_sympy` reads sympy back into table operators. sympy's ``Add`` and
``Mul`` become ``add``/``sub``/``neg`` and ``mul``/``div`` (a term with
coefficient exactly −1 is subtracted; factors with a negative numeric exponent
form the denominator; a coefficient −1 of a product is ``neg``); every other
node is recognised by the ``match`` of a table row (``Pow(x, 2)`` → ``square``,
``log(1 + Abs(u))`` → ``log1p``, ``Max(0, u)`` → ``relu``, ``Max(a, b, c)`` →
two ``max`` nodes, …). n-ary sums and products are folded into balanced
binary trees, which keeps seed trees shallow. Given the operators of a space,
it uses only those (``x**2`` without ``square`` is ``mul(x, x)``; a term −x
without ``sub`` is ``mul(-1.0, x)``) and raises :class:`Inexpressible` for what
they cannot say. Without an operator list, sympy nodes outside the table
(``x**4``, ``exp(x)``) become ``FN`` nodes of weight
:data:`~search_spaces.operators.FALLBACK_COMPLEXITY`: complexity is defined for
every expression, while engines never see such nodes.

:func:`to_sympy` builds the expression with the table's sympy builders.

Adding an operator therefore means one row in the table (numpy, sympy builder,
``match``, weight, PySR/Operon spelling) and its printers; no walker changes.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, NamedTuple, Sequence

from features.errors import StepMLError
from search_spaces.operators import FALLBACK_COMPLEXITY, OPERATORS

if TYPE_CHECKING:
    import sympy

__all__ = ["CONST", "FN", "OP", "VAR", "Inexpressible", "Node", "format_prefix", "from_sympy", "infix",
           "parse_prefix", "render", "seed_nodes", "to_sympy", "weight"]

#: Node kinds.
OP, VAR, CONST, FN = 0, 1, 2, 3

_TOKEN = re.compile(r"[^\s(),]+")
#: Seed-formula constants: ``c0``, ``c1``, … (they start at 1.0).
_CONSTANT_NAME = re.compile(r"\bc\d+\b")


class Node(NamedTuple):
    """One node: ``kind`` (``OP``, ``VAR``, ``CONST`` or ``FN``) and ``value``.

    ``value`` is the operator name, the symbol name, the float, or for ``FN``
    a pair (sympy function class, number of arguments).
    """

    kind: int
    value: Any


class Inexpressible(StepMLError):
    """A sympy expression uses something the given operators or symbols cannot express."""


# =============================================================================== text


def parse_prefix(text: str, arity: Mapping[str, int], symbols: Iterable[str]) -> list[Node]:
    """The prefix nodes of a tree's text (``add(mul(1.25, x), y)``): operators, symbols, floats.

    Raises
    ------
    StepMLError
        For an unknown token or an incomplete expression.
    """
    symbols = symbols if isinstance(symbols, (set, frozenset, dict)) else set(symbols)
    nodes: list[Node] = []
    for token in _TOKEN.findall(text):
        if token in arity:
            nodes.append(Node(OP, token))
        elif token in symbols:
            nodes.append(Node(VAR, token))
        else:
            try:
                value = float(token)
            except ValueError:
                raise StepMLError(f"tree {text!r}: unknown token {token!r}") from None
            nodes.append(Node(CONST, value))
    need = 1
    for kind, value in nodes:
        if need <= 0:
            break
        need += (arity[value] if kind == OP else 0) - 1
    if need != 0 or not nodes:
        raise StepMLError(f"tree {text!r} is not a complete prefix expression")
    return nodes


def render(nodes: Sequence[tuple[int, Any]], arity: Mapping[str, int],
           leaf: Callable[[int, Any, int], str]) -> str:
    """Render prefix nodes as ``op(arg, arg)`` text; ``leaf(kind, value, const_index)`` renders leaves."""
    stack: list[tuple[str, int, list[str]]] = []
    k = 0
    for kind, value in nodes:
        if kind == OP:
            stack.append((value, arity[value], []))
            continue
        text = leaf(kind, value, k)
        if kind == CONST:
            k += 1
        while True:
            if not stack:
                return text
            stack[-1][2].append(text)
            name, n, args = stack[-1]
            if len(args) < n:
                break
            stack.pop()
            text = f"{name}({', '.join(args)})"
    raise StepMLError("incomplete tree")


def format_prefix(nodes: Sequence[tuple[int, Any]], arity: Mapping[str, int]) -> str:
    """The text of prefix nodes, constants as ``repr(float)`` (exactly as DEAP prints a tree)."""
    return render(nodes, arity, lambda kind, value, _: repr(float(value)) if kind == CONST else value)


#: Infix spelling and precedence of the arithmetic operators (others print as functions).
_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2)}


def infix(nodes: Sequence[tuple[int, Any]], name: Callable[[str], str] = lambda op: op) -> str:
    """Infix text of prefix nodes (``1.0 + 2.5*x - sqrt_abs(y)``), as PySR's parser reads it.

    ``name(op)`` spells a function operator, ``neg`` included (e.g. its PySR
    name). Parentheses appear only where precedence needs them.
    """
    pos = 0

    def walk() -> tuple[str, int]:  # (text, precedence)
        nonlocal pos
        kind, value = nodes[pos]
        pos += 1
        if kind == CONST:
            text = repr(float(value))
            return text, (3 if not text.startswith("-") else 0)
        if kind == VAR:
            return str(value), 3
        if kind != OP:
            raise Inexpressible(f"{value[0].__name__} has no infix form")
        args = [walk() for _ in range(OPERATORS[value].arity)]
        if value in _INFIX:
            symbol, prec = _INFIX[value]
            (left, lp), (right, rp) = args
            left = left if lp >= prec else f"({left})"
            # the right operand of - and / needs parentheses at equal precedence; of + and * it does not
            right = right if rp > prec or (rp == prec and value in ("add", "mul")) else f"({right})"
            return (f"{left} {symbol} {right}" if prec == 1 else f"{left}{symbol}{right}"), prec
        return f"{name(value)}({', '.join(text for text, _ in args)})", 3

    text, _ = walk()
    if pos != len(nodes):
        raise StepMLError("prefix list has nodes after a complete expression")
    return text


# =============================================================================== weight


def weight(nodes: Iterable[tuple[int, Any]]) -> int:
    """Table complexity of prefix nodes: leaves 1, operators their weight, ``FN`` nodes the fallback weight."""
    total = 0
    for kind, value in nodes:
        if kind == OP:
            total += OPERATORS[value].complexity
        elif kind == FN:
            total += FALLBACK_COMPLEXITY
        else:
            total += 1
    return total


def _arity(node: tuple[int, Any]) -> int:
    kind, value = node
    if kind == OP:
        return OPERATORS[value].arity
    if kind == FN:
        return int(value[1])
    return 0


# =============================================================================== sympy → prefix


class _FromSympy:
    """One conversion: the operators and symbols allowed, and how seed constants read."""

    def __init__(self, operators: Collection[str] | None, symbols: Collection[str] | None,
                 constants: Collection[Any]) -> None:
        self.generic = operators is None
        self.ops = frozenset(OPERATORS if operators is None else operators)
        self.symbols = None if symbols is None else frozenset(symbols)
        self.constants = frozenset(constants)
        # matchers, unary operators first (relu before max: the more specific form wins)
        self.matchers = [op for op in sorted(OPERATORS.values(), key=lambda o: o.arity) if op.match is not None]

    def need(self, op: str) -> None:
        if op not in self.ops:
            raise Inexpressible(f"operator {op} is not available")

    def fold(self, op: str, parts: list[list[Node]]) -> list[Node]:
        """Balanced binary tree of ``op`` over the parts (low height)."""
        if len(parts) == 1:
            return parts[0]
        self.need(op)
        mid = len(parts) // 2
        return [Node(OP, op)] + self.fold(op, parts[:mid]) + self.fold(op, parts[mid:])

    def walk(self, e: Any) -> list[Node]:
        if e in self.constants:
            return [Node(CONST, 1.0)]
        if e.is_Symbol:
            if self.symbols is not None and e.name not in self.symbols:
                raise Inexpressible(f"unknown symbol {e.name}")
            return [Node(VAR, e.name)]
        if e.is_Atom:
            try:
                return [Node(CONST, float(e))]
            except TypeError:  # a non-real atom (I, zoo): a leaf for complexity, nothing an engine can use
                if not self.generic:
                    raise Inexpressible(f"{e} is not a real number") from None
                return [Node(FN, (e.func, 0))]
        if e.is_Add:
            return self.add(e)
        if e.is_Mul or (e.is_Pow and _negative_number(e.exp)):
            return self.mul(e)
        for op in self.matchers:
            args = op.match(e)
            if args is not None and op.name in self.ops:
                parts = [self.walk(a) for a in args]
                if len(parts) == op.arity:
                    return [Node(OP, op.name)] + [n for part in parts for n in part]
                return self.fold(op.name, parts)
        if e.is_Pow and e.exp == 2:  # x**2 without square: mul(x, x)
            return self.fold("mul", [self.walk(e.base)] * 2)
        if not self.generic:
            raise Inexpressible(f"{type(e).__name__} is not expressible with {', '.join(sorted(self.ops))}")
        return [Node(FN, (e.func, len(e.args)))] + [n for a in e.args for n in self.walk(a)]

    def add(self, e: Any) -> list[Node]:
        import sympy

        positive, negated = [], []
        for term in e.args:
            if term.is_Mul and term.args[0] == sympy.S.NegativeOne:
                negated.append(-term)
            else:
                positive.append(term)
        can_subtract = "sub" in self.ops and (positive or "neg" in self.ops)
        if negated and not can_subtract:  # read every term as a product (−x = mul(−1, x))
            return self.fold("add", [self.walk(t) for t in e.args])
        out: list[Node]
        if positive:
            out = self.fold("add", [self.walk(t) for t in positive])
            rest = [self.walk(t) for t in negated]
        else:
            out = [Node(OP, "neg")] + self.walk(negated[0])
            rest = [self.walk(t) for t in negated[1:]]
        for part in rest:
            out = [Node(OP, "sub")] + out + part
        return out

    def mul(self, e: Any) -> list[Node]:
        import sympy

        coeff, factors = (sympy.S.One, (e,)) if e.is_Pow else e.as_coeff_mul()
        num: list[Any] = []
        den: list[Any] = []
        for f in factors:
            if f.is_Pow and _negative_number(f.exp):
                den.append(sympy.Pow(f.base, -f.exp))
            else:
                num.append(f)
        negate = False
        if coeff == sympy.S.NegativeOne and num and "neg" in self.ops:
            negate = True
        elif coeff != sympy.S.One:
            num.insert(0, coeff)
        out = self.fold("mul", [self.walk(f) for f in num]) if num else [Node(CONST, 1.0)]
        if den:
            self.need("div")
            out = [Node(OP, "div")] + out + self.fold("mul", [self.walk(f) for f in den])
        return [Node(OP, "neg")] + out if negate else out


def _negative_number(e: Any) -> bool:
    return bool(e.is_Number and e.is_negative)


def from_sympy(expr: "sympy.Basic", operators: Collection[str] | None = None, symbols: Collection[str] | None = None,
               constants: Collection["sympy.Symbol"] = ()) -> list[Node]:
    """The prefix form of a sympy expression (see the module docstring).

    Parameters
    ----------
    expr : sympy.Basic
    operators : collection of str, optional
        Table operators that may be used (a space's); None: the whole table, and
        sympy nodes outside it become ``FN`` nodes.
    symbols : collection of str, optional
        Symbol names that may appear (None: any).
    constants : collection of sympy.Symbol
        Symbols that stand for constants to fit (seed formulas' ``c0…cN``): each becomes ``CONST 1.0``.

    Raises
    ------
    Inexpressible
        When ``operators`` or ``symbols`` cannot express the expression.
    """
    return _FromSympy(operators, symbols, constants).walk(expr)


def seed_nodes(text: str, features: Sequence[str], operators: Collection[str],
               symbols: Collection[str] | None = None) -> list[Node] | None:
    """A seed formula (features by name, constants ``c0…cN``) in prefix form, or None if the operators,
    the features or ``symbols`` cannot express it. Constants start at 1.0."""
    import sympy

    from search_spaces.operators import parse_formula, symbol_name

    known = set(features) | {symbol_name(f) for f in features}
    names = sorted(set(_CONSTANT_NAME.findall(text)) - known)
    try:
        expr = parse_formula(text, list(features) + names)
        return from_sympy(expr, operators, symbols, {sympy.Symbol(n) for n in names})
    except StepMLError:  # Inexpressible, or a name the features lack
        return None


# =============================================================================== prefix → sympy


def to_sympy(nodes: Sequence[tuple[int, Any]]) -> "sympy.Expr":
    """The sympy expression of prefix nodes, built with the table's sympy builders."""
    import sympy

    stack: list[Any] = []
    for node in reversed(nodes):
        kind, value = node
        if kind == OP:
            args = [stack.pop() for _ in range(OPERATORS[value].arity)]
            stack.append(OPERATORS[value].sympy(*args))
        elif kind == FN:
            args = [stack.pop() for _ in range(_arity(node))]
            stack.append(value[0](*args))
        elif kind == VAR:
            stack.append(sympy.Symbol(value))
        else:
            stack.append(sympy.Float(value))
    if len(stack) != 1:
        raise StepMLError("prefix list is not one complete expression")
    return stack[0]
