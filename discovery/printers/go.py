"""Go export: a table-driven sympy printer and a complete BLIS latency-model file.

:class:`GoCodePrinter` is modelled on sympy's own table-driven code printers
(``sympy/printing/codeprinter.py`` ``CodePrinter`` and ``sympy/printing/c.py``
``C99CodePrinter``): a ``known_functions`` table maps sympy functions to Go's
``math`` package, ``_print_Pow`` special-cases the small powers, numbers are
printed as float64 literals, and parentheses follow sympy's precedence table
(Go's ``*``/``/`` and ``+``/``-`` bind like C's and Python's).

Number rules (every literal is a float64 constant):

* ``Integer`` ``2`` → ``2.0``;
* ``Float`` → ``repr`` of the Python float (the shortest string that reads
  back to the same float64, e.g. ``0.1``, ``1e-06``): no digit of the value
  Go computes with is lost; ``inf``/``nan`` → ``math.Inf(1)``/``math.NaN()``;
* ``Rational`` ``p/q`` → ``(p.0/q.0)``: a Go constant expression, evaluated
  exactly by the compiler and rounded once, as Python's ``p/q`` is.

Powers: ``x**2`` → ``(x*x)``, ``x**3`` → ``(x*x*x)``, ``x**-1`` → ``(1.0/x)``,
``x**-2`` → ``(1.0/(x*x))``, ``x**0.5`` → ``math.Sqrt(x)``, ``x**-0.5`` →
``(1.0/math.Sqrt(x))``, any other → ``math.Pow(x, y)``. ``Max``/``Min`` of any
number of arguments nest ``math.Max``/``math.Min`` (as sympy's C99 printer
nests ``fmax``).

Semantics: the exported code is plain IEEE float64 arithmetic. The operator
table's *protected* numpy evaluation (:func:`search_spaces.operators.lambdify_formula`:
``a / b`` returns ``a`` where ``|b| < 1e-12``) is **not** reproduced: a formula
that divides by a feature that can be 0 yields ±Inf/NaN in Go where the Python
evaluator returns the numerator. ``sqrt`` and ``log1p`` of the table are already
``sqrt(Abs(x))`` / ``log(1 + Abs(x))`` in sympy and print as such.

BLIS latency interface (inference-sim/inference-sim on GitHub)
---------------------------------------------------------------
* module path ``github.com/inference-sim/inference-sim`` (``go.mod``); the
  package is ``github.com/inference-sim/inference-sim/sim`` (import name ``sim``);
* ``sim/latency_model.go``: ``type LatencyModel interface { StepTime(batch
  []*Request) int64; QueueingTime(req *Request) int64;
  OutputTokenProcessingTime() int64 }`` — "All time estimates are in
  microseconds (ticks)"; ``StepTime``'s precondition is that every request
  has ``NumNewTokens`` set by ``BatchFormation.FormBatch()``;
* ``sim/request.go``: ``type Request struct { InputTokens []TokenID;
  ProgressIndex int64; NumNewTokens int; ... }`` (``ProgressIndex``: input
  tokens processed so far plus output tokens generated so far;
  ``TokenID`` is a defined integer type in ``sim/internal/tokenid``; older
  revisions had ``[]int``, the generated code only takes ``len``);
* ``sim/latency/latency.go`` (``BlackboxLatencyModel.StepTime``) and
  ``sim/latency/stepml.go`` classify a request as prefill when
  ``req.ProgressIndex < int64(len(req.InputTokens))``; they truncate the
  float prediction with ``int64(x)``.

The generated file therefore exposes ``StepTimeUs(batch []*sim.Request)
float64`` (the formula, µs) and ``StepTime(batch []*sim.Request) int64`` (µs
ticks, ``math.Round``-ed, 0 when the prediction is not positive) that a
``LatencyModel`` implementation can return from its ``StepTime`` method. The
per-batch aggregates are the ones of :data:`features.aggregates.AGGREGATE_RULES`
over ``ctx = ProgressIndex``, ``n = NumNewTokens``, ``prompt = len(InputTokens)``
(prefill when ``ctx < prompt``, else decode — BLIS's blackbox model also
requires ``len(OutputTokens) > 0`` for a decode; the project's reference
:func:`features.aggregates.batch_aggregates` does not, and neither does this
export).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import sympy
from sympy.core.numbers import equal_valued
from sympy.printing.codeprinter import CodePrinter
from sympy.printing.precedence import PRECEDENCE

from features.aggregates import AGGREGATE_RULES
from features.errors import StepMLError

__all__ = [
    "BLIS_MODULE",
    "BLIS_SIM_PACKAGE",
    "GO_KEYWORDS",
    "GoCodePrinter",
    "go_code",
    "go_identifier",
    "go_source",
    "gofmt_expr",
]

#: Go module path of BLIS (inference-sim/inference-sim ``go.mod``).
BLIS_MODULE = "github.com/inference-sim/inference-sim"
#: Import path of the package that declares ``Request`` and ``LatencyModel``.
BLIS_SIM_PACKAGE = BLIS_MODULE + "/sim"

#: Go's keywords: a symbol printed as one of these gets ``_`` appended.
GO_KEYWORDS = frozenset(
    "break case chan const continue default defer else fallthrough for func go goto if import "
    "interface map package range return select struct switch type var".split()
)

#: Predeclared identifiers and the names the generated file uses itself;
#: :func:`go_source` never gives a variable one of these names.
_GO_TAKEN = frozenset(
    "bool byte complex64 complex128 error float32 float64 int int8 int16 int32 int64 rune string "
    "uint uint8 uint16 uint32 uint64 uintptr any comparable true false iota nil append cap clear "
    "close complex copy delete imag len make max min new panic print println real recover "
    "math sim batch r ctx n prompt us".split()
) | GO_KEYWORDS

#: Loop variables the Go expressions of AGGREGATE_RULES may use.
_LOOP_VARS = ("ctx", "n", "prompt")

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
        ``names``: sympy Symbol name → Go identifier (names not in the map go
        through :func:`go_identifier`); ``user_functions``: extra entries for
        the ``known_functions`` table (sympy function name → Go function).
        Any other ``CodePrinter`` setting.

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

    def _print_Pow(self, expr: sympy.Pow) -> str:
        base, exp = expr.base, expr.exp
        b = self.parenthesize(base, PRECEDENCE["Mul"], strict=False)
        if exp.is_Number:
            if equal_valued(exp, 2):
                return f"({b}*{b})"
            if equal_valued(exp, 3):
                return f"({b}*{b}*{b})"
            if equal_valued(exp, -1):
                return f"(1.0/{b})"
            if equal_valued(exp, -2):
                return f"(1.0/({b}*{b}))"
            if equal_valued(exp, 0.5):
                return f"{self.known_functions['sqrt']}({self._print(base)})"
            if equal_valued(exp, -0.5):
                return f"(1.0/{self.known_functions['sqrt']}({self._print(base)}))"
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
        if len(expr.args) != 1:
            return self._print(sympy.log(expr.args[0]) / sympy.log(expr.args[1]))
        return self._print_Function(expr)


def go_code(expr: Any, names: Mapping[str, str] | None = None) -> str:
    """One Go float64 expression for a sympy expression.

    Parameters
    ----------
    expr : sympy.Expr or str
        The expression (a string is sympified).
    names : mapping, optional
        sympy Symbol name → Go identifier; other symbols go through
        :func:`go_identifier` (``batch.prefill_tokens`` → ``batchPrefillTokens``).

    Raises
    ------
    StepMLError
        If the expression holds a node with no Go form (a relation, an
        unknown function).
    """
    from sympy.printing.codeprinter import PrintMethodNotImplementedError

    expr = sympy.sympify(expr)
    try:
        return GoCodePrinter({"names": dict(names or {})}).doprint(expr)
    except PrintMethodNotImplementedError as exc:
        raise StepMLError(f"cannot print {expr} as Go: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------- gofmt spacing
#
# gofmt decides the blanks around a binary operator from the whole expression
# (go/printer nodes.go: binaryExpr, cutoff, walkBinary, diffPrec, reduceDepth):
# ``y := 2.0 * x`` but ``y := a + 2.0*x``. GoCodePrinter prints the compact
# form; gofmt_expr re-spaces it exactly as gofmt would in a statement, so
# go_source's files are gofmt-clean without running gofmt.

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


# --------------------------------------------------------------------------- go_source


def _column(name: str) -> str:
    """Canonical (dotted) form of a symbol name written with ``__`` for its dots."""
    return name.replace("__", ".")


def _allocate(base: str, taken: set[str]) -> str:
    name, k = base, 2
    while name in taken:
        name = f"{base}{k}"
        k += 1
    taken.add(name)
    return name


def _comment_block(text: str) -> list[str]:
    """Lines of a Go doc-comment code block (verbatim under gofmt)."""
    return ["//\t" + line.rstrip() if line.strip() else "//" for line in text.strip("\n").splitlines()]


def _not_exportable(column: str, owner: str) -> StepMLError:
    hint = ""
    if column.split(".", 1)[0] in ("arch", "hw"):
        hint = " (substitute the model and hardware constants before export)"
    return StepMLError(
        f"{owner} needs column '{column}', which is not a per-batch aggregate the simulator computes "
        f"(aggregates: {', '.join(AGGREGATE_RULES)}){hint}; only simulator-available features can be "
        "exported to Go"
    )


def go_source(
    formula: Any,
    feature_defs: Mapping[str, Any],
    constants_comment: str,
    package: str = "stepml",
    name: str = "StepTime",
) -> str:
    """A complete, gofmt-clean Go file predicting BLIS step times with ``formula``.

    Parameters
    ----------
    formula : sympy.Expr or str
        The step time in µs over feature-name symbols (``prefill_tokens``; a
        name written with ``__`` for dots is accepted) and/or aggregate-column
        symbols (``batch.prefill_tokens``).
    feature_defs : mapping
        Feature name → sympy expression (or string) over aggregate-column
        symbols only (``batch.prefill_tokens`` or ``batch__prefill_tokens``),
        model and hardware constants already substituted. Only the features
        the formula uses are emitted.
    constants_comment : str
        Free text for the doc comment: which model/hardware constants were
        substituted (printed verbatim in a comment code block).
    package : str
        The Go package name.
    name : str
        The integer step-time function; the float64 one is ``name + "Us"``.

    Returns
    -------
    str
        Go source: package ``package`` importing ``math`` and
        ``github.com/inference-sim/inference-sim/sim``, with
        ``func <name>Us(batch []*sim.Request) float64`` (µs, 0 for the empty
        batch; one pass over the batch computes every needed aggregate) and
        ``func <name>(batch []*sim.Request) int64`` (whole µs ticks,
        ``math.Round``-ed, 0 when the prediction is not positive).

    Raises
    ------
    StepMLError
        If a feature or the formula needs a column that is not in
        :data:`features.aggregates.AGGREGATE_RULES` (trace-only columns such
        as ``queue.waiting_depth`` or ``kv.usage_gpu_ratio``, or unsubstituted
        ``arch.*``/``hw.*`` constants), if the formula uses a feature with no
        definition, if a name is not a Go identifier, or if an expression has
        no Go form.
    """
    formula = sympy.sympify(formula)
    if not isinstance(formula, sympy.Expr):
        raise StepMLError(f"formula {formula!r} is not a scalar expression")
    for label, ident in (("package", package), ("name", name)):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ident or "") or ident in GO_KEYWORDS:
            raise StepMLError(f"{label} {ident!r} is not a Go identifier")
    defs: dict[str, sympy.Expr] = {}
    for feature, expr in feature_defs.items():
        expr = sympy.sympify(expr)
        if not isinstance(expr, sympy.Expr):
            raise StepMLError(f"definition of feature '{feature}' is not a scalar expression: {expr!r}")
        defs[_column(feature)] = expr

    # Which features and aggregates the formula needs, in a stable order.
    used_features: list[str] = []
    used_columns: set[str] = set()
    formula_symbols = sorted(formula.free_symbols, key=lambda s: s.name)
    for sym in formula_symbols:
        key = _column(sym.name)
        if key in defs:
            used_features.append(key)
        elif key in AGGREGATE_RULES:
            used_columns.add(key)
        elif "." in key:
            raise _not_exportable(key, "the formula")
        else:
            raise StepMLError(
                f"the formula uses feature '{key}' that has no definition in feature_defs "
                f"(defined: {', '.join(defs) or '(none)'})"
            )
    for feature in used_features:
        for sym in sorted(defs[feature].free_symbols, key=lambda s: s.name):
            column = _column(sym.name)
            if column not in AGGREGATE_RULES:
                raise _not_exportable(column, f"feature '{feature}'")
            used_columns.add(column)
    columns = [c for c in AGGREGATE_RULES if c in used_columns]  # AGGREGATE_RULES order

    # Go identifiers: aggregates, then features; never a name the file itself uses.
    taken = set(_GO_TAKEN) | {name, name + "Us", package}
    column_ident = {c: _allocate(go_identifier(c), taken) for c in columns}
    feature_ident = {f: _allocate(go_identifier(f), taken) for f in used_features}

    def names_for(symbols: Iterable[sympy.Symbol]) -> dict[str, str]:
        out = {}
        for sym in symbols:
            key = _column(sym.name)
            out[sym.name] = feature_ident.get(key) or column_ident[key]
        return out

    # The loop over the batch: one accumulator per aggregate, grouped by rule.
    by_rule: dict[str, list[str]] = {"all": [], "prefill": [], "decode": []}
    loop_vars: set[str] = set()
    for column in columns:
        rule, go_expr, _ = AGGREGATE_RULES[column]
        if rule not in by_rule:
            raise StepMLError(f"aggregate '{column}' has unknown rule {rule!r} (prefill, decode or all)")
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", go_expr))
        unknown = sorted(words - set(_LOOP_VARS))
        if unknown:
            raise StepMLError(
                f"aggregate '{column}' Go expression {go_expr!r} uses {', '.join(unknown)}; "
                f"loop variables: {', '.join(_LOOP_VARS)}"
            )
        loop_vars |= words
        if rule != "all":
            loop_vars |= {"ctx", "prompt"}
        by_rule[rule].append(f"{column_ident[column]} += {gofmt_expr(go_expr)}")

    us_name = name + "Us"
    formula_text = sympy.sstr(formula)
    lines: list[str] = [
        "// Code generated by StepML Discovery (discovery/printers/go.py). DO NOT EDIT.",
        "",
        f"// Package {package} predicts the duration of one BLIS simulator step, in",
        "// microseconds (µs), with a closed-form formula discovered by StepML Discovery:",
        "//",
        *_comment_block(f"step_time_us = {formula_text}"),
    ]
    if used_features:
        lines += ["//", "// over the per-batch features", "//"]
        lines += _comment_block("\n".join(f"{f} = {sympy.sstr(defs[f])}" for f in used_features))
    if constants_comment and constants_comment.strip():
        lines += ["//", "// Model and hardware constants:", "//"]
        lines += _comment_block(constants_comment)
    lines += [
        "//",
        "// Aggregates follow features/aggregates.py over each sim.Request: ctx is",
        "// ProgressIndex, n is NumNewTokens, prompt is len(InputTokens); a request is",
        "// in prefill when ctx < prompt, else in decode.",
        f"package {package}",
        "",
        "import (",
        '\t"math"',
        "",
        f'\t"{BLIS_SIM_PACKAGE}"',
        ")",
        "",
        f"// {us_name} returns the predicted duration of one step of batch in",
        "// microseconds (µs); it returns 0 for the empty batch.",
        f"func {us_name}(batch []*sim.Request) float64 {{",
        "\tif len(batch) == 0 {",
        "\t\treturn 0",
        "\t}",
    ]
    for column in columns:
        lines.append(f"\tvar {column_ident[column]} float64")
    if columns:
        lines.append("\tfor _, r := range batch {")
        if "ctx" in loop_vars:
            lines.append("\t\tctx := float64(r.ProgressIndex)")
        if "n" in loop_vars:
            lines.append("\t\tn := float64(r.NumNewTokens)")
        if "prompt" in loop_vars:
            lines.append("\t\tprompt := float64(len(r.InputTokens))")
        if by_rule["prefill"]:
            lines.append("\t\tif ctx < prompt {")
            lines += [f"\t\t\t{s}" for s in by_rule["prefill"]]
            if by_rule["decode"]:
                lines.append("\t\t} else {")
                lines += [f"\t\t\t{s}" for s in by_rule["decode"]]
            lines.append("\t\t}")
        elif by_rule["decode"]:
            lines.append("\t\tif ctx >= prompt {")
            lines += [f"\t\t\t{s}" for s in by_rule["decode"]]
            lines.append("\t\t}")
        lines += [f"\t\t{s}" for s in by_rule["all"]]
        lines.append("\t}")
    for feature in used_features:
        expr = defs[feature]
        code = gofmt_expr(go_code(expr, names_for(expr.free_symbols)))
        lines.append(f"\t{feature_ident[feature]} := {code}")
    lines += [
        f"\treturn {gofmt_expr(go_code(formula, names_for(formula.free_symbols)))}",
        "}",
        "",
        f"// {name} returns {us_name} rounded to whole microseconds, the tick unit of",
        "// BLIS's sim.LatencyModel.StepTime; a prediction that is not positive gives 0.",
        f"func {name}(batch []*sim.Request) int64 {{",
        f"\tus := {us_name}(batch)",
        "\tif !(us > 0) {",
        "\t\treturn 0",
        "\t}",
        "\treturn int64(math.Round(us))",
        "}",
    ]
    return "\n".join(lines) + "\n"
