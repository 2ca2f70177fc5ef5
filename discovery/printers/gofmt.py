"""Go export, part 2: lay out one Go expression exactly as gofmt does.

gofmt decides the blanks around a binary operator from the whole expression
(go/printer nodes.go: binaryExpr, cutoff, walkBinary, diffPrec, reduceDepth):
``y := 2.0 * x`` but ``y := a + 2.0*x``. :class:`~discovery.printers.go.GoCodePrinter`
prints the compact form; :func:`gofmt_expr` re-spaces it exactly as gofmt
would in a statement, so the generated files are gofmt-clean without running
gofmt (the tests compare with the real gofmt on random expressions).
"""
from __future__ import annotations

import re

from features.errors import StepMLError

__all__ = ["gofmt_expr"]

_BINARY_PREC = {"+": 4, "-": 4, "*": 5, "/": 5}
_UNARY_PREC = 6
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"|(?P<op>[-+*/(),]))"
)


class _Node:
    __slots__ = ("kind", "text", "args")

    def __init__(self, kind: str, text: str = "", args: tuple["_Node", ...] = ()) -> None:
        self.kind, self.text, self.args = kind, text, args  # kind: lit, paren, call, unary, binary


def _tokens(code: str) -> list[str]:
    out, pos, code = [], 0, code.rstrip()
    while pos < len(code):
        m = _TOKEN.match(code, pos)
        if m is None or m.end() == pos:
            raise StepMLError(f"cannot lay out Go expression {code!r} at {code[pos:pos + 10]!r}")
        out.append(m.group("num") or m.group("ident") or m.group("op"))
        pos = m.end()
    return out


def _parse(tokens: list[str]) -> _Node:
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            raise StepMLError(f"cannot lay out Go expression {' '.join(tokens)!r}: expected {expected or 'more'}")
        pos += 1
        return tok

    def primary() -> _Node:
        tok = take()
        if tok in ("-", "+"):
            return _Node("unary", tok, (primary(),))
        if tok == "(":
            inner = binary(1)
            take(")")
            return _Node("paren", "", (inner,))
        if tok in _BINARY_PREC or tok in (")", ","):
            raise StepMLError(f"cannot lay out Go expression {' '.join(tokens)!r}: unexpected {tok!r}")
        if peek() == "(" and not tok[0].isdigit():
            take("(")
            args: list[_Node] = []
            if peek() != ")":
                args.append(binary(1))
                while peek() == ",":
                    take(",")
                    args.append(binary(1))
            take(")")
            return _Node("call", tok, tuple(args))
        return _Node("lit", tok)

    def binary(min_prec: int) -> _Node:
        left = primary()
        while (op := peek()) in _BINARY_PREC and _BINARY_PREC[op] >= min_prec:
            take()
            right = binary(_BINARY_PREC[op] + 1)
            left = _Node("binary", op, (left, right))
        return left

    node = binary(1)
    if pos != len(tokens):
        raise StepMLError(f"cannot lay out Go expression {' '.join(tokens)!r}: trailing {tokens[pos]!r}")
    return node


def _walk_binary(e: _Node) -> tuple[bool, bool, int]:
    prec = _BINARY_PREC[e.text]
    has4, has5, max_problem = prec == 4, prec == 5, 0
    left, right = e.args
    if left.kind == "binary" and not _BINARY_PREC[left.text] < prec:
        h4, h5, mp = _walk_binary(left)
        has4, has5, max_problem = has4 or h4, has5 or h5, max(max_problem, mp)
    if right.kind == "binary":
        if not _BINARY_PREC[right.text] <= prec:
            h4, h5, mp = _walk_binary(right)
            has4, has5, max_problem = has4 or h4, has5 or h5, max(max_problem, mp)
    elif right.kind == "unary" and e.text + right.text in ("++", "--"):
        max_problem = max(max_problem, 4)
    return has4, has5, max_problem


def _cutoff(e: _Node, depth: int) -> int:
    has4, has5, max_problem = _walk_binary(e)
    if max_problem > 0:
        return max_problem + 1
    if has4 and has5:
        return 5 if depth == 1 else 4
    return 6 if depth == 1 else 4


def _render(e: _Node, prec1: int, depth: int) -> str:
    if e.kind == "binary":
        prec = _BINARY_PREC[e.text]
        if prec < prec1:  # not produced by the parser (it keeps parens), kept for completeness
            return "(" + _render(e, 0, max(depth - 1, 1)) + ")"
        blank = prec < _cutoff(e, depth)
        left, right = e.args
        left_depth = depth + (0 if left.kind == "binary" and _BINARY_PREC[left.text] == prec else 1)
        op = f" {e.text} " if blank else e.text
        return _render(left, prec, left_depth) + op + _render(right, prec + 1, depth + 1)
    if e.kind == "paren":
        inner = e.args[0]
        if inner.kind == "paren":  # gofmt drops doubled parentheses
            return _render(inner, 0, depth)
        return "(" + _render(inner, 0, max(depth - 1, 1)) + ")"
    if e.kind == "call":
        arg_depth = depth + 1 if len(e.args) > 1 else depth
        return e.text + "(" + ", ".join(_render(a, 0, arg_depth) for a in e.args) + ")"
    if e.kind == "unary":
        return e.text + _render(e.args[0], _UNARY_PREC, depth)
    return e.text


def gofmt_expr(code: str) -> str:
    """Re-space a Go expression as gofmt lays it out as a statement's operand.

    ``gofmt_expr("2.0*x")`` is ``"2.0 * x"``, ``gofmt_expr("a+2.0*x")`` is
    ``"a + 2.0*x"``: the blanks of the right-hand side of ``v := ...``, of
    ``v += ...`` and of ``return ...``. Handles what :class:`GoCodePrinter`
    prints: numbers, (dotted) identifiers, calls, parentheses, unary ``-``/``+``
    and binary ``+ - * /``.
    """
    return _render(_parse(_tokens(code)), 0, 1)


