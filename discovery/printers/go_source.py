"""Go export, part 3: the BLIS latency-model file of a formula.

:func:`go_source` writes ``stepml.go`` for BLIS's package ``sim/latency``: a
type ``StepMLModel`` implementing every method of ``sim.LatencyModel``, built
in named phases (each a small function returning lines):

1. :func:`plan_formula` — which features, per-batch aggregates and constant
   columns the formula needs, their Go identifiers; refuses what BLIS cannot
   evaluate (:func:`discovery.printers.blis_columns.blis_refusal`);
2. :func:`doc_lines` — the header: formula, features, semantics, overheads;
3. :func:`column_table_lines` — one Go function and one table row per
   architecture/hardware column (:mod:`discovery.printers.blis_columns`);
4. :func:`model_lines` — the type and ``NewStepMLModel`` (computes and checks
   the columns once, from ``sim.ModelHardwareConfig``);
5. :func:`step_time_lines` — ``StepTimeUs``: one pass over the batch for the
   aggregates (:data:`features.aggregates.AGGREGATE_RULES`), then the
   features, then the formula;
6. :func:`interface_lines` — ``StepTime`` and the request-level overheads;
7. :func:`helper_lines` — ``stepMLDiv`` (the table's protected division) and
   ``stepMLTicks``.

Semantics: ``StepTime(batch) = max(1, round(StepTimeUs(batch)))`` µs for
every batch, the empty batch included (its aggregates are 0), as BLIS's
interface requires; :class:`discovery.formula.ArtifactPredictor` applies the
same floor. The file is gofmt-clean (expressions laid out by
:func:`discovery.printers.gofmt.gofmt_expr`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import sympy

from discovery.printers.blis_columns import INPUTS, blis_refusal, column_expr, column_inputs, constant_columns
from discovery.printers.go import BLIS_SIM_PACKAGE, DIV_FUNCTION, GO_KEYWORDS, go_code, go_identifier
from discovery.printers.gofmt import gofmt_expr
from discovery.printers.semantics import DIV_RULE
from features.aggregates import AGGREGATE_RULES
from features.errors import StepMLError

__all__ = ["GoPlan", "Overheads", "go_source", "plan_formula", "MODEL_TYPE", "CONSTRUCTOR"]

#: The generated type and its constructor (the names the BLIS factory patch calls).
MODEL_TYPE = "StepMLModel"
CONSTRUCTOR = "NewStepMLModel"

#: Predeclared identifiers and the names the generated file uses itself: never a variable name.
_GO_TAKEN = frozenset(
    "bool byte complex64 complex128 error float32 float64 int int8 int16 int32 int64 rune string "
    "uint uint8 uint16 uint32 uint64 uintptr any comparable true false iota nil append cap clear "
    "close complex copy delete imag len make max min new panic print println real recover "
    "math sim fmt logrus batch r m hw c i v ctx n prompt us".split()
) | GO_KEYWORDS | {DIV_FUNCTION, "stepMLTicks", "stepMLColumns", "stepMLColumn", MODEL_TYPE, CONSTRUCTOR}

#: Loop variables the Go expressions of AGGREGATE_RULES may use.
_LOOP_VARS = ("ctx", "n", "prompt")


@dataclass(frozen=True)
class Overheads:
    """Request-level overheads of an artifact (µs, >= 0) and where they came from.

    ``given`` lists the keys the artifact had; the others are 0 and the
    generated file says so.
    """

    queueing_us: float = 0.0
    output_token_us: float = 0.0
    post_decode_us: float = 0.0
    source: str = ""
    given: tuple[str, ...] = ()

    KEYS = ("queueing_us", "output_token_us", "post_decode_us")

    @property
    def absent(self) -> tuple[str, ...]:
        """The keys the artifact did not give (0 in the model)."""
        return tuple(k for k in self.KEYS if k not in self.given)


@dataclass(frozen=True)
class GoPlan:
    """What :func:`go_source` emits for one formula.

    Attributes
    ----------
    formula : sympy.Expr
        The step time (µs) over feature and/or canonical-column symbols.
    features : tuple of str
        The features the formula uses, sorted.
    defs : dict
        Feature → definition over canonical columns (dotted symbol names).
    aggregates : tuple of str
        Per-batch aggregate columns needed, in :data:`AGGREGATE_RULES` order.
    constants : tuple of str
        Constant columns needed, in :data:`~discovery.printers.blis_columns.COLUMNS` order.
    names : dict
        Symbol name (feature or dotted column, also its ``__`` spelling) → Go identifier.
    """

    formula: sympy.Expr
    features: tuple[str, ...]
    defs: Mapping[str, sympy.Expr]
    aggregates: tuple[str, ...]
    constants: tuple[str, ...]
    names: Mapping[str, str]


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


def _expr(value: Any, what: str) -> sympy.Expr:
    value = sympy.sympify(value)
    if not isinstance(value, sympy.Expr):
        raise StepMLError(f"{what} is not a scalar expression: {value!r}")
    return value


def plan_formula(formula: Any, feature_defs: Mapping[str, Any]) -> GoPlan:
    """Analyse a formula for :func:`go_source` (phase 1).

    Raises
    ------
    StepMLError
        If the formula uses a feature with no definition, or a definition
        needs a column BLIS cannot give (one line naming it).
    """
    formula = _expr(formula, "formula")
    defs = {_column(f): _expr(e, f"definition of feature '{f}'") for f, e in feature_defs.items()}
    features: list[str] = []
    direct: dict[str, sympy.Expr] = {}
    for sym in sorted(formula.free_symbols, key=lambda s: s.name):
        key = _column(sym.name)
        if key in defs:
            features.append(key)
        elif "." in key:
            direct[key] = sympy.Symbol(key)        # a column used directly by the formula
        else:
            raise StepMLError(f"the formula uses feature '{key}' that has no definition in feature_defs "
                              f"(defined: {', '.join(defs) or '(none)'})")
    used_defs = {f: defs[f] for f in features}
    reason = blis_refusal({**used_defs, **({"(the formula)": sympy.Add(*direct.values())} if direct else {})})
    if reason:
        raise StepMLError(reason)
    columns = {_column(s.name) for e in [*used_defs.values(), *direct.values()] for s in e.free_symbols}
    aggregates = tuple(c for c in AGGREGATE_RULES if c in columns)
    constants = tuple(constant_columns(columns))
    taken = set(_GO_TAKEN)
    names: dict[str, str] = {}
    for key in [*aggregates, *constants, *features]:
        ident = _allocate(go_identifier(key), taken)
        names[key] = names[key.replace(".", "__")] = ident
    return GoPlan(formula, tuple(features), used_defs, aggregates, constants, names)


def _go(plan: GoPlan, expr: sympy.Expr) -> str:
    return gofmt_expr(go_code(expr, {s.name: plan.names[s.name] for s in expr.free_symbols}))


def _overhead_lines(overheads: Overheads) -> list[str]:
    text = (f"QueueingTime              = {overheads.queueing_us!r} µs: every request, between its arrival and its\n"
            "                            entry into the wait queue (in TTFT and E2E)\n"
            f"OutputTokenProcessingTime = {overheads.output_token_us!r} µs: added to the recorded latency of every\n"
            "                            output token (once to TTFT, once to each inter-token latency, so n times\n"
            "                            to E2E); the simulated clock does not advance by it\n"
            f"PostDecodeFixedOverhead   = {overheads.post_decode_us!r} µs: once per request, after its last token\n"
            "                            (in E2E, not in TTFT)")
    lines = ["//", f"// Request-level overheads (from {overheads.source or 'the artifact'}), whole µs in BLIS:", "//"]
    lines += _comment_block(text)
    if overheads.absent:
        lines += ["//", f"// The artifact gives no {', '.join(overheads.absent)}: 0 µs."]
    return lines


def doc_lines(plan: GoPlan, constants_comment: str, overheads: Overheads) -> list[str]:
    """Phase 2: the header comment (formula, features, semantics, overheads)."""
    lines = ["// Code generated by StepML Discovery (discovery/printers/go_source.py). DO NOT EDIT.", "",
             f"// {MODEL_TYPE} is BLIS's \"stepml\" latency backend: the duration of one simulator step,",
             "// in microseconds (µs), by a closed-form formula discovered by StepML Discovery:", "//"]
    lines += _comment_block(f"step_time_us = {sympy.sstr(plan.formula)}")
    if plan.features:
        lines += ["//", "// over the features", "//"]
        lines += _comment_block("\n".join(f"{f} = {sympy.sstr(plan.defs[f])}" for f in plan.features))
    if constants_comment.strip():
        lines += ["//"] + _comment_block(constants_comment)
    lines += [
        "//",
        "// Per-batch aggregates follow features/aggregates.py over each sim.Request: ctx is",
        "// ProgressIndex, n is NumNewTokens, prompt is len(InputTokens); a request is in",
        "// prefill when ctx < prompt, else in decode. Architecture and hardware columns are",
        "// computed once from sim.ModelHardwareConfig (stepMLColumns). Every division is the",
        f"// {DIV_RULE} ({DIV_FUNCTION}).",
        "// StepTime is max(1, round(StepTimeUs)) µs for every batch, the empty batch included.",
    ]
    return lines + _overhead_lines(overheads)


def column_table_lines(plan: GoPlan) -> list[str]:
    """Phase 3: one function and one table row per constant column the formula needs."""
    lines = ["// stepMLColumn is one architecture or hardware column of the formula, computed from",
             "// BLIS's configuration (discovery/printers/blis_columns.py).",
             "type stepMLColumn struct {", "\tname   string", "\tsource string",
             "\tvalue  func(hw *sim.ModelHardwareConfig) float64", "}", ""]
    rows = []
    inputs = {i.name: i.go for i in INPUTS}
    for col in plan.constants:
        fn = "stepML" + plan.names[col][:1].upper() + plan.names[col][1:]
        expr = column_expr(col)
        code = gofmt_expr(go_code(expr, {s.name: inputs[s.name] for s in expr.free_symbols}))
        lines += [f"func {fn}(hw *sim.ModelHardwareConfig) float64 {{", f"\treturn {code}", "}", ""]
        source = ", ".join(i.field for i in column_inputs(col)) or "(a constant)"
        rows.append(f'\t{{name: "{col}", source: "{source}", value: {fn}}},')
    lines += ["// stepMLColumns lists the constant columns in the order of StepMLModel.cols.",
              "var stepMLColumns = []stepMLColumn{", *rows, "}"]
    return lines


def model_lines() -> list[str]:
    """Phase 4: the type and its constructor."""
    return [
        f"// {MODEL_TYPE} implements sim.LatencyModel; build it with {CONSTRUCTOR}.",
        f"type {MODEL_TYPE} struct {{",
        "\tcols        []float64       // stepMLColumns' values for this configuration",
        "\tadapterCost sim.AdapterCost // LoRA overhead accessor set by the factory (nil: none)",
        "}",
        "",
        f"// {CONSTRUCTOR} computes the formula's architecture and hardware columns from hw",
        "// and fails, naming the column and its fields, when one is not finite and > 0.",
        f"func {CONSTRUCTOR}(hw sim.ModelHardwareConfig) (*{MODEL_TYPE}, error) {{",
        f"\tm := &{MODEL_TYPE}{{cols: make([]float64, len(stepMLColumns))}}",
        "\tfor i, c := range stepMLColumns {",
        "\t\tv := c.value(&hw)",
        "\t\tif math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {",
        '\t\t\treturn nil, fmt.Errorf("latency model: stepml: %s = %v from sim.ModelHardwareConfig %s; "+',
        '\t\t\t\t"it must be finite and > 0", c.name, v, c.source)',
        "\t\t}",
        '\t\tlogrus.Infof("stepml: %s = %.17g (from %s)", c.name, v, c.source)',
        "\t\tm.cols[i] = v",
        "\t}",
        "\treturn m, nil",
        "}",
    ]


def _loop_lines(plan: GoPlan) -> list[str]:
    by_rule: dict[str, list[str]] = {"all": [], "prefill": [], "decode": []}
    loop_vars: set[str] = set()
    for col in plan.aggregates:
        rule, go_expr, _ = AGGREGATE_RULES[col]
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", go_expr))
        unknown = sorted(words - set(_LOOP_VARS))
        if rule not in by_rule or unknown:
            raise StepMLError(f"aggregate '{col}' has rule {rule!r} / Go expression {go_expr!r}; "
                              f"rules: prefill, decode, all; loop variables: {', '.join(_LOOP_VARS)}")
        loop_vars |= words | ({"ctx", "prompt"} if rule != "all" else set())
        by_rule[rule].append(f"{plan.names[col]} += {gofmt_expr(go_expr)}")
    if not plan.aggregates:
        return []
    lines = [f"\tvar {plan.names[c]} float64" for c in plan.aggregates] + ["\tfor _, r := range batch {"]
    lines += [f"\t\t{v} := {src}" for v, src in (("ctx", "float64(r.ProgressIndex)"), ("n", "float64(r.NumNewTokens)"),
                                                  ("prompt", "float64(len(r.InputTokens))")) if v in loop_vars]
    if by_rule["prefill"]:
        lines += ["\t\tif ctx < prompt {", *[f"\t\t\t{s}" for s in by_rule["prefill"]]]
        if by_rule["decode"]:
            lines += ["\t\t} else {", *[f"\t\t\t{s}" for s in by_rule["decode"]]]
        lines.append("\t\t}")
    elif by_rule["decode"]:
        lines += ["\t\tif ctx >= prompt {", *[f"\t\t\t{s}" for s in by_rule["decode"]], "\t\t}"]
    return lines + [f"\t\t{s}" for s in by_rule["all"]] + ["\t}"]


def step_time_lines(plan: GoPlan) -> list[str]:
    """Phase 5: ``StepTimeUs`` — aggregates in one pass, the features, the formula."""
    lines = ["// StepTimeUs returns the formula's step time of batch in µs (not floored).",
             f"func (m *{MODEL_TYPE}) StepTimeUs(batch []*sim.Request) float64 {{"]
    lines += _loop_lines(plan)
    lines += [f"\t{plan.names[c]} := m.cols[{k}]" for k, c in enumerate(plan.constants)]
    lines += [f"\t{plan.names[f]} := {_go(plan, plan.defs[f])}" for f in plan.features]
    formula_code = _go(plan, plan.formula)
    return lines + [f"\treturn {formula_code}", "}"]


def interface_lines(overheads: Overheads) -> list[str]:
    """Phase 6: ``StepTime`` and the three request-level overheads."""
    values = [round(max(0.0, float(getattr(overheads, k)))) for k in Overheads.KEYS]
    width = len("stepMLOutputTokenUs")
    consts = [f"\t{name:<{width}} int64 = {v}" for name, v in
              zip(("stepMLQueueingUs", "stepMLOutputTokenUs", "stepMLPostDecodeUs"), values)]
    return [
        "// Request-level overheads in whole µs (see the file comment).",
        "const (", *consts, ")", "",
        "// StepTime returns max(1, round(StepTimeUs(batch))) µs (BLIS requires >= 1 for every batch).",
        f"func (m *{MODEL_TYPE}) StepTime(batch []*sim.Request) int64 {{",
        "\treturn applyAdapterOverhead(stepMLTicks(m.StepTimeUs(batch)), batch, m.adapterCost)", "}", "",
        "// QueueingTime returns the delay between a request's arrival and its entry into the wait queue.",
        f"func (m *{MODEL_TYPE}) QueueingTime(req *sim.Request) int64 {{", "\treturn stepMLQueueingUs", "}", "",
        "// OutputTokenProcessingTime returns the latency added to every output token.",
        f"func (m *{MODEL_TYPE}) OutputTokenProcessingTime() int64 {{", "\treturn stepMLOutputTokenUs", "}", "",
        "// PostDecodeFixedOverhead returns the latency added once per request after its last token.",
        f"func (m *{MODEL_TYPE}) PostDecodeFixedOverhead() int64 {{", "\treturn stepMLPostDecodeUs", "}",
    ]


def helper_lines() -> list[str]:
    """Phase 7: the protected division and the µs → ticks conversion."""
    return [
        f"// {DIV_FUNCTION} is the {DIV_RULE}.",
        f"func {DIV_FUNCTION}(a, b float64) float64 {{",
        "\tif math.Abs(b) < 1e-12 {", "\t\treturn a", "\t}",
        "\tq := a / b",
        "\tif (math.IsInf(q, 0) || math.IsNaN(q)) && !math.IsInf(a, 0) && !math.IsNaN(a) && !math.IsInf(b, 0) &&",
        "\t\t!math.IsNaN(b) {", "\t\treturn a", "\t}",
        "\treturn q", "}", "",
        "// stepMLTicks rounds µs to whole ticks, at least 1 (NaN gives 1, +Inf the largest int64).",
        "func stepMLTicks(us float64) int64 {",
        "\tif !(us >= 1) {", "\t\treturn 1", "\t}",
        "\tif us >= float64(math.MaxInt64) {", "\t\treturn math.MaxInt64", "\t}",
        "\treturn int64(math.Round(us))", "}",
    ]


def go_source(formula: Any, feature_defs: Mapping[str, Any], constants_comment: str = "",
              overheads: Overheads | None = None, package: str = "latency") -> str:
    """The complete, gofmt-clean ``stepml.go`` of a formula for BLIS's ``sim/latency`` package.

    Parameters
    ----------
    formula : sympy.Expr or str
        The step time in µs over feature-name symbols (``prefill_tokens``; a
        ``__`` spelling of dots is accepted) and/or canonical columns.
    feature_defs : mapping
        Feature name → sympy expression over canonical columns: per-batch
        aggregates (``batch.prefill_tokens``) and constant columns
        (``arch.tp``, ``hw.flops``), the latter computed from
        ``sim.ModelHardwareConfig``. Only the features the formula uses are emitted.
    constants_comment : str
        Free text for the header (what was fitted on, which constants were baked in).
    overheads : Overheads, optional
        The request-level overheads; default all 0 (and the file says so).
    package : str
        The Go package (BLIS's is ``latency``).

    Returns
    -------
    str
        Go source defining ``StepMLModel`` (``StepTime``, ``StepTimeUs``,
        ``QueueingTime``, ``OutputTokenProcessingTime``, ``PostDecodeFixedOverhead``)
        and ``NewStepMLModel(hw sim.ModelHardwareConfig) (*StepMLModel, error)``.
        It calls ``applyAdapterOverhead`` of BLIS's ``latency.go`` and logs
        the computed columns with logrus at info level.

    Raises
    ------
    StepMLError
        If BLIS cannot evaluate the formula (a trace-only column, a column
        BLIS's configuration lacks, a feature without definition), if
        ``package`` is not a Go identifier, or if an expression has no Go form.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", package or "") or package in GO_KEYWORDS:
        raise StepMLError(f"package {package!r} is not a Go identifier")
    plan = plan_formula(formula, feature_defs)
    overheads = overheads or Overheads(source="no overheads in the artifact")
    imports = ["import (", '\t"fmt"', '\t"math"', "", f'\t"{BLIS_SIM_PACKAGE}"', '\t"github.com/sirupsen/logrus"',
               ")"]
    parts: Sequence[Iterable[str]] = (
        doc_lines(plan, constants_comment, overheads), ["", f"package {package}", ""], imports, [""],
        column_table_lines(plan), [""], model_lines(), [""], step_time_lines(plan), [""],
        interface_lines(overheads), [""], helper_lines())
    return "\n".join(line for part in parts for line in part) + "\n"
