"""Architecture and hardware columns from BLIS's ``sim.ModelHardwareConfig``.

A formula fitted on several models keeps the per-model constants of its
features (``arch.*``, ``hw.*``; :func:`features.metadata.arch_columns`) as
symbols. Inside BLIS they are computed once, when the latency model is
constructed, from the ``sim.ModelHardwareConfig`` BLIS builds for the run
(``ModelConfig`` parsed from the HF ``config.json``, ``HWConfig`` from
``hardware_config.json``, ``TP``, ...). This module is that mapping, as data:

* :data:`INPUTS` — the values a StepML model reads from the configuration,
  each with its Go accessor and the field named in error messages, and how a
  known model's canonical columns give it back (for the Go test configs);
* :data:`COLUMNS` — one row per canonical constant column: a sympy definition
  over the inputs and other columns, or ``None`` with the reason when BLIS's
  configuration does not carry what the column needs.

A new canonical column is one :class:`Column` row (and, if it reads a
configuration field not used yet, one :class:`BlisInput` row).

Definitions mirror :class:`features.metadata.ModelArch` and ``load_hardware``:
BLIS's ``ModelConfig`` says ``NumLocalExperts = 0`` for a dense model where
the project says ``num_experts = 1`` (hence ``Max(1, ...)``); it has no
``tie_word_embeddings``, so ``arch.total_params`` / ``arch.active_params``
count the input embedding and the LM head separately (true of Llama-2, CodeLlama
and Mixtral); :func:`check_reproducible` refuses a formula whose training models
BLIS would describe differently; and ``sim.HardwareCalib`` has no interconnect
bandwidth, so ``hw.interconnect_bw`` (the all-reduce term) cannot be evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import sympy

from features.aggregates import AGGREGATE_RULES
from features.errors import StepMLError

__all__ = ["BlisInput", "Column", "INPUTS", "COLUMNS", "column", "column_expr", "column_inputs",
           "constant_columns", "blis_refusal", "blis_values", "check_reproducible", "config_literal"]

Values = Mapping[str, float]


@dataclass(frozen=True)
class BlisInput:
    """One value a StepML model reads from ``sim.ModelHardwareConfig``.

    Attributes
    ----------
    name : str
        Symbol name used in :data:`COLUMNS` definitions.
    go : str
        Go float64 expression over ``hw *sim.ModelHardwareConfig``.
    field : str
        The configuration field(s), as error messages name them.
    literal : str
        Where the value goes in a Go ``sim.ModelHardwareConfig`` literal
        (``ModelConfig.NumLayers``), empty when it is derived by BLIS.
    kind : str
        ``int`` or ``float`` (the Go field's type).
    given : callable
        A known model's canonical columns → the field's value.
    """

    name: str
    go: str
    field: str
    literal: str
    kind: str
    given: Callable[[Values], float]


def _dense_zero(values: Values, column: str) -> float:
    return values[column] if values["arch.num_experts"] > 1 else 0.0


def _model(name: str, go_field: str, column: str, kind: str = "int") -> BlisInput:
    go = f"float64(hw.ModelConfig.{go_field})" if kind == "int" else f"hw.ModelConfig.{go_field}"
    return BlisInput(name, go, f"ModelConfig.{go_field}", f"ModelConfig.{go_field}", kind, lambda v: v[column])


#: What a StepML model reads from the configuration.
INPUTS: tuple[BlisInput, ...] = (
    BlisInput("TP", "float64(hw.TP)", "TP", "TP", "int", lambda v: v["arch.tp"]),
    BlisInput("EP", "float64(hw.EffectiveEP())", "EffectiveEP() (EnableExpertParallel, DP, TP)", "", "int",
              lambda v: v["arch.ep"]),
    _model("NumLayers", "NumLayers", "arch.num_layers"),
    _model("HiddenDim", "HiddenDim", "arch.hidden_size"),
    _model("NumHeads", "NumHeads", "arch.num_heads"),
    _model("NumKVHeads", "NumKVHeads", "arch.num_kv_heads"),
    BlisInput("HeadDim", "float64(hw.ModelConfig.EffectiveHeadDim())", "ModelConfig.EffectiveHeadDim()",
              "ModelConfig.HeadDim", "int", lambda v: v["arch.head_dim"]),
    _model("IntermediateDim", "IntermediateDim", "arch.intermediate_size"),
    _model("VocabSize", "VocabSize", "arch.vocab_size"),
    BlisInput("NumLocalExperts", "float64(hw.ModelConfig.NumLocalExperts)", "ModelConfig.NumLocalExperts",
              "ModelConfig.NumLocalExperts", "int", lambda v: _dense_zero(v, "arch.num_experts")),
    BlisInput("NumExpertsPerTok", "float64(hw.ModelConfig.NumExpertsPerTok)", "ModelConfig.NumExpertsPerTok",
              "ModelConfig.NumExpertsPerTok", "int", lambda v: _dense_zero(v, "arch.experts_per_token")),
    _model("BytesPerParam", "BytesPerParam", "arch.bytes_per_param", kind="float"),
    BlisInput("TFlopsPeak", "hw.HWConfig.TFlopsPeak", "HWConfig.TFlopsPeak", "HWConfig.TFlopsPeak", "float",
              lambda v: v["hw.flops"] / 1e12),
    BlisInput("BwPeakTBs", "hw.HWConfig.BwPeakTBs", "HWConfig.BwPeakTBs", "HWConfig.BwPeakTBs", "float",
              lambda v: v["hw.hbm_bw"] / 1e12),
)


@dataclass(frozen=True)
class Column:
    """One canonical constant column as BLIS computes it.

    ``definition`` is sympy text over :data:`INPUTS` names and other columns
    (dots written ``__``); ``None`` when BLIS lacks what it needs, ``missing``
    saying what.
    """

    name: str
    definition: str | None
    missing: str = ""


_ROUTER = "arch__hidden_size*arch__num_experts*Min(1, Max(0, arch__num_experts - 1))"
_EMBED = "2*arch__vocab_size*arch__hidden_size"

#: One row per canonical constant column (features.metadata.arch_columns).
COLUMNS: tuple[Column, ...] = (
    Column("arch.tp", "TP"),
    Column("arch.ep", "EP"),
    Column("arch.num_layers", "NumLayers"),
    Column("arch.hidden_size", "HiddenDim"),
    Column("arch.num_heads", "NumHeads"),
    Column("arch.num_kv_heads", "NumKVHeads"),
    Column("arch.head_dim", "HeadDim"),
    Column("arch.intermediate_size", "IntermediateDim"),
    Column("arch.vocab_size", "VocabSize"),
    Column("arch.num_experts", "Max(1, NumLocalExperts)"),
    Column("arch.experts_per_token", "Max(1, NumExpertsPerTok)"),
    Column("arch.bytes_per_param", "BytesPerParam"),
    Column("arch.attention_params",
           "2*arch__hidden_size*arch__num_heads*arch__head_dim + 2*arch__hidden_size*arch__num_kv_heads*arch__head_dim"),
    Column("arch.expert_params", "3*arch__hidden_size*arch__intermediate_size"),
    Column("arch.total_params", "arch__num_layers*(arch__attention_params + arch__num_experts*arch__expert_params + "
           f"{_ROUTER} + 2*arch__hidden_size) + {_EMBED}"),
    Column("arch.active_params", "arch__num_layers*(arch__attention_params + arch__experts_per_token*arch__expert_params"
           f" + {_ROUTER} + 2*arch__hidden_size) + {_EMBED}"),
    Column("hw.flops", "1e12*TFlopsPeak"),
    Column("hw.hbm_bw", "1e12*BwPeakTBs"),
    Column("hw.interconnect_bw", None, "sim.HardwareCalib has no interconnect (NVLink) bandwidth"),
)

_BY_NAME = {c.name: c for c in COLUMNS}
_INPUTS = {i.name: i for i in INPUTS}


def column(name: str) -> Column:
    """The row of a canonical constant column; an unknown name lists the known ones."""
    if name not in _BY_NAME:
        raise StepMLError(f"unknown constant column '{name}'; known: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def column_expr(name: str) -> sympy.Expr:
    """A column's definition over :data:`INPUTS` symbols only (other columns substituted)."""
    row = column(name)
    if row.definition is None:
        raise StepMLError(f"{name}: BLIS cannot compute it ({row.missing})")
    # Trusted text: the definitions above are this module's own constants, never read from a file.
    expr = sympy.sympify(row.definition, locals={n: sympy.Symbol(n) for n in _INPUTS})
    subs = {s: column_expr(s.name.replace("__", ".")) for s in expr.free_symbols if s.name not in _INPUTS}
    return expr.xreplace(subs) if subs else expr


def column_inputs(name: str) -> list[BlisInput]:
    """The configuration inputs a column reads, in :data:`INPUTS` order."""
    used = {s.name for s in column_expr(name).free_symbols}
    return [i for i in INPUTS if i.name in used]


def constant_columns(symbols: Iterable[str]) -> list[str]:
    """The names among ``symbols`` that are canonical constant columns, in :data:`COLUMNS` order."""
    wanted = set(symbols)
    return [c.name for c in COLUMNS if c.name in wanted]


def blis_refusal(feature_defs: Mapping[str, sympy.Expr]) -> str | None:
    """Why BLIS cannot evaluate these feature definitions (one line), or None.

    Every symbol of a definition must be a per-batch aggregate
    (:data:`features.aggregates.AGGREGATE_RULES`) or a constant column BLIS can
    compute (:data:`COLUMNS`).
    """
    for feature, expr in feature_defs.items():
        for name in sorted(s.name.replace("__", ".") for s in expr.free_symbols):
            if name in AGGREGATE_RULES:
                continue
            row = _BY_NAME.get(name)
            if row is None:
                return (f"feature '{feature}' needs column '{name}', which neither a batch of sim.Request "
                        f"(aggregates: {', '.join(AGGREGATE_RULES)}) nor sim.ModelHardwareConfig provides; "
                        "BLIS cannot evaluate this formula")
            if row.definition is None:
                return f"feature '{feature}' needs {name}, which BLIS cannot provide: {row.missing}"
    return None


def blis_values(canonical: Values) -> dict[str, float]:
    """The configuration values (:data:`INPUTS` names) of a model known by its canonical columns."""
    return {i.name: float(i.given(canonical)) for i in INPUTS}


def evaluate_column(name: str, inputs: Mapping[str, float]) -> float:
    """A column's value for configuration values ``inputs`` (as the generated Go computes it)."""
    from search_spaces.numeric import lambdify_formula

    expr = column_expr(name)
    used = sorted(s.name for s in expr.free_symbols)
    if not used:
        return float(expr)
    import numpy as np

    return float(lambdify_formula(expr, used)({k: np.array([inputs[k]], dtype=float) for k in used})[0])


def check_reproducible(models: Mapping[str, Values], columns: Iterable[str], rtol: float = 1e-9) -> None:
    """Refuse when BLIS would give a training model other values than the data did.

    ``models`` maps a model label to its canonical columns. For each model the
    configuration BLIS would hold is rebuilt (:func:`blis_values`) and each
    column is recomputed from it; a value that differs (a tied-embedding
    model's ``arch.total_params``) is a one-line :class:`StepMLError`.
    """
    for label, canonical in models.items():
        inputs = blis_values(canonical)
        for name in columns:
            got, want = evaluate_column(name, inputs), float(canonical[name])
            if abs(got - want) > rtol * max(abs(want), 1e-300):
                raise StepMLError(f"{name} of {label}: sim.ModelConfig would give {got:.6g}, the training data has "
                                  f"{want:.6g} (BLIS's ModelConfig has no tie_word_embeddings and counts a dense "
                                  "model's experts as 0); BLIS cannot evaluate this formula for that model")


def config_literal(canonical: Values) -> str:
    """A Go ``sim.ModelHardwareConfig`` literal for a model known by its canonical columns.

    Only the fields :data:`INPUTS` read are set (``Backend: "stepml"``). A
    model with expert parallelism (``arch.ep != 1``) is refused.
    """
    if canonical.get("arch.ep", 1.0) != 1.0:
        raise StepMLError(f"a test configuration with arch.ep = {canonical['arch.ep']} is not supported")
    values = blis_values(canonical)
    groups: dict[str, list[str]] = {"ModelConfig": [], "HWConfig": [], "": []}
    for i in INPUTS:
        if not i.literal:
            continue
        v = values[i.name]
        text = str(int(round(v))) if i.kind == "int" else repr(float(v))
        group, _, field = i.literal.rpartition(".")
        groups[group].append(f"{field}: {text}")
    parts = [f"ModelConfig: sim.ModelConfig{{{', '.join(groups['ModelConfig'])}}}",
             f"HWConfig: sim.HardwareCalib{{{', '.join(groups['HWConfig'])}}}", *groups[""],
             "DP: 1", 'Backend: "stepml"']
    return "sim.ModelHardwareConfig{" + ", ".join(parts) + "}"
