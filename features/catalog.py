"""The feature libraries: every feature declared once, with unit and availability.

A feature is a named, vectorised function of canonical columns
(:mod:`features.schema`). Availability says where it can be computed:

``simulator``
    From the batch's per-request state inside a simulator (see
    :mod:`features.aggregates`) plus model/hardware constants. Only these can be
    exported to a simulator's latency interface.
``trace``
    Only measurable in traces (queue depth, KV usage ratio).
``leaky``
    Known only after the step ran (finished/preempted counts, timestamps).
    Never allowed into a search.

Libraries: ``batch`` (composition), ``kv`` (KV lengths and attention work),
``moe`` (expert routing), ``arch`` (HF config), ``hardware`` (datasheet),
``roofline`` (physically motivated time terms in µs), ``physics`` (the
cross-model basis of the README's "Fit once, predict every model": bytes and FLOPs of one step at the
hardware's peak rates, collective and layer counts, and the roofline lower bound),
``operator`` (an operator table's own work: the FLOPs and HBM bytes of one call
on one GPU, ``op.flops`` and ``op.bytes``, and the weights' share of the bytes,
``op.weight_bytes``, which a column map derives from the table's columns, at the
datasheet's peak rates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from features.errors import StepMLError
from features.registry import Registry

if TYPE_CHECKING:
    import sympy

Columns = Mapping[str, "np.ndarray | pd.Series | float"]
AVAILABILITY = ("simulator", "trace", "leaky")


@dataclass(frozen=True)
class Feature:
    """One feature, declared by a formula over canonical columns.

    ``definition`` is a sympy-parsable formula in which a canonical column is
    written with ``__`` for its dots (``batch__prefill_tokens``). The numpy
    evaluator (:meth:`compute`), the input list and the sympy form used by
    export (:meth:`sympy_expr`) all derive from this one string.
    """

    name: str
    unit: str
    description: str
    availability: str
    library: str
    definition: str

    @property
    def inputs(self) -> tuple[str, ...]:
        """Canonical columns the definition reads, sorted."""
        return _compiled(self.definition)[1]

    def sympy_expr(self) -> "sympy.Expr":
        """The definition as a sympy expression over canonical-column symbols (dots kept)."""
        return _compiled(self.definition)[2]

    def compute(self, columns: Columns) -> np.ndarray:
        """Evaluate on canonical columns (a DataFrame, a dict of arrays, or one step's floats)."""
        fn, inputs, _ = _compiled(self.definition)
        return fn(*[_c(columns, c) for c in inputs])

    def available_in(self, columns: Iterable[str]) -> bool:
        """True when every input column is present."""
        have = set(columns)
        return all(c in have for c in self.inputs)


def _c(cols: Columns, name: str) -> np.ndarray:
    value = cols[name]
    if isinstance(value, float):  # one simulated step: numpy scalars are far cheaper than arrays
        return np.float64(value)  # type: ignore[return-value]
    return np.asarray(value, dtype=float)


_COMPILED: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...], object]] = {}


def _compiled(definition: str) -> tuple[Callable[..., np.ndarray], tuple[str, ...], object]:
    """(numpy function, input columns, sympy expression) of a definition, built once."""
    if definition not in _COMPILED:
        import sympy

        parsed = sympy.sympify(definition)
        symbols = sorted(parsed.free_symbols, key=lambda s: s.name)
        inputs = tuple(s.name.replace("__", ".") for s in symbols)
        fn = sympy.lambdify(symbols, parsed, modules=[{"Max": np.maximum, "Min": np.minimum}, "numpy"],
                            docstring_limit=0)
        expr = parsed.xreplace({s: sympy.Symbol(s.name.replace("__", ".")) for s in symbols})
        _COMPILED[definition] = (fn, inputs, expr)
    return _COMPILED[definition]


# Canonical columns as they are written in definitions.
_PRE, _DEC = "batch__num_prefill_reqs", "batch__num_decode_reqs"
_BS = f"({_PRE} + {_DEC})"
_T = "batch__scheduled_tokens"
_E, _K = "arch__num_experts", "arch__experts_per_token"
_ACTIVE = f"{_E}*(1 - (1 - {_K}/{_E})**{_T})"
_EXPERT = "3*arch__hidden_size*arch__intermediate_size"
_KV_BYTES = "2*arch__num_layers*arch__num_kv_heads*arch__head_dim*arch__bytes_per_param"
#: Bytes (×1e6, for µs) one GPU sends in the step's 2 ring all-reduces per layer: 2·(tp−1)/tp of each message.
_ALLREDUCE_BYTES = f"1e6*4*arch__num_layers*{_T}*arch__hidden_size*arch__bytes_per_param*(arch__tp - 1)/arch__tp"
#: Weights streamed from HBM in one step: all but the input embedding (a lookup) and the experts no token hit.
_STREAMED = f"(arch__total_params - arch__vocab_size*arch__hidden_size - arch__num_layers*{_EXPERT}*({_E} - {_ACTIVE}))"
_PER_GPU_BW = "(arch__tp*hw__hbm_bw)"
_WEIGHT_READ = f"1e6*{_STREAMED}*arch__bytes_per_param/{_PER_GPU_BW}"
_KV_READ = f"1e6*kv__tokens_in_use*{_KV_BYTES}/{_PER_GPU_BW}"
_KV_WRITE = f"1e6*{_T}*{_KV_BYTES}/{_PER_GPU_BW}"
_LINEAR_COMPUTE = "1e6*2*(arch__active_params - arch__vocab_size*arch__hidden_size)*batch__scheduled_tokens/(arch__tp*hw__flops)"


def _declare() -> tuple[Feature, ...]:
    F = Feature
    return (
        # -- batch composition -------------------------------------------------------------
        F("prefill_tokens", "tokens", "prompt tokens processed this step", "simulator", "batch", "batch__prefill_tokens"),
        F("decode_tokens", "tokens", "decode tokens processed this step", "simulator", "batch", "batch__decode_tokens"),
        F("scheduled_tokens", "tokens", "all tokens processed this step", "simulator", "batch", _T),
        F("num_prefill_reqs", "requests", "requests in prefill this step", "simulator", "batch", _PRE),
        F("num_decode_reqs", "requests", "requests decoding this step", "simulator", "batch", _DEC),
        F("batch_size", "requests", "requests in the batch (prefill + decode)", "simulator", "batch", _BS),
        F("is_mixed", "flag", "1 when the batch holds both prefill and decode requests", "simulator", "batch",
          f"Min(1, {_PRE})*Min(1, {_DEC})"),
        # -- trace-only and leaky ------------------------------------------------------------
        F("running_depth", "requests", "scheduler running-queue depth", "trace", "batch", "queue__running_depth"),
        F("waiting_depth", "requests", "scheduler waiting-queue depth", "trace", "batch", "queue__waiting_depth"),
        F("kv_usage", "ratio", "fraction of GPU KV blocks in use", "trace", "kv", "kv__usage_gpu_ratio"),
        F("num_finished", "requests", "requests that finished in this step (known after it)", "leaky", "batch",
          "batch__num_finished"),
        F("num_preempted", "requests", "requests preempted in this step (known after it)", "leaky", "batch",
          "batch__num_preempted"),
        F("recorded_duration", "us", "step.duration_us as recorded (timing)", "leaky", "batch", "step__duration_us"),
        # -- KV lengths ---------------------------------------------------------------------
        F("kv_tokens", "tokens", "KV tokens held by the batch", "simulator", "kv", "kv__tokens_in_use"),
        F("kv_per_req", "tokens", "mean KV length per request in the batch (0 for an empty batch)", "simulator", "kv",
          f"kv__tokens_in_use/Max(1, {_BS})*Min(1, {_BS})"),
        F("decode_ctx_sum", "tokens", "Σ KV length over decode requests (decode attention work)", "simulator", "kv",
          "batch__decode_context_sum"),
        F("prefill_attn_work", "token²", "Σ over prefill chunks of new·ctx + new·(new+1)/2", "simulator", "kv",
          "batch__prefill_context_sum"),
        # -- MoE --------------------------------------------------------------------------------
        F("is_moe", "flag", "1 for a mixture-of-experts model", "simulator", "moe", f"Min(1, Max(0, {_E} - 1))"),
        F("num_experts", "experts", "experts per MoE layer (E; 1 for dense)", "simulator", "moe", _E),
        F("experts_per_token", "experts", "experts each token is routed to (k)", "simulator", "moe", _K),
        F("active_experts", "experts", "expected distinct experts hit by T tokens: E·(1−(1−k/E)^T)", "simulator", "moe",
          _ACTIVE),
        F("tokens_per_expert", "tokens", "T·k/E routed tokens per expert", "simulator", "moe", f"{_T}*{_K}/{_E}"),
        F("ep_size", "GPUs", "expert-parallel degree", "simulator", "moe", "arch__ep"),
        # -- architecture ----------------------------------------------------------------------
        F("num_layers", "layers", "transformer layers", "simulator", "arch", "arch__num_layers"),
        F("hidden_size", "units", "model width", "simulator", "arch", "arch__hidden_size"),
        F("num_heads", "heads", "attention heads", "simulator", "arch", "arch__num_heads"),
        F("num_kv_heads", "heads", "KV heads", "simulator", "arch", "arch__num_kv_heads"),
        F("head_dim", "units", "attention head dimension", "simulator", "arch", "arch__head_dim"),
        F("intermediate_size", "units", "MLP (expert) width", "simulator", "arch", "arch__intermediate_size"),
        F("vocab_size", "tokens", "vocabulary size", "simulator", "arch", "arch__vocab_size"),
        F("total_params", "params", "all weights", "simulator", "arch", "arch__total_params"),
        F("active_params", "params", "weights one token touches", "simulator", "arch", "arch__active_params"),
        F("bytes_per_param", "bytes", "bytes per weight", "simulator", "arch", "arch__bytes_per_param"),
        F("tp", "GPUs", "tensor-parallel degree", "simulator", "arch", "arch__tp"),
        # -- hardware ------------------------------------------------------------------------
        F("hw_flops", "FLOP/s", "dense bf16 tensor FLOP/s (datasheet sparse figure halved)", "simulator", "hardware",
          "hw__flops"),
        F("hbm_bw", "B/s", "HBM bandwidth", "simulator", "hardware", "hw__hbm_bw"),
        F("interconnect_bw", "B/s", "NVLink bandwidth", "simulator", "hardware", "hw__interconnect_bw"),
        # -- roofline basis terms (µs) ------------------------------------------------------------
        F("rl_prefill_compute", "us", "2·active_params·prefill_tokens / (tp·FLOP/s)", "simulator", "roofline",
          "1e6*2*arch__active_params*batch__prefill_tokens/(arch__tp*hw__flops)"),
        F("rl_decode_compute", "us", "2·active_params·decode_tokens / (tp·FLOP/s)", "simulator", "roofline",
          "1e6*2*arch__active_params*batch__decode_tokens/(arch__tp*hw__flops)"),
        F("rl_weight_load", "us", "bytes of the weights the step touches (non-expert + active experts) / (tp·HBM B/s)",
          "simulator", "roofline",
          f"1e6*(arch__total_params - arch__num_layers*{_EXPERT}*({_E} - {_ACTIVE}))*arch__bytes_per_param"
          "/(arch__tp*hw__hbm_bw)"),
        F("rl_kv_read", "us", "KV bytes of the batch / (tp·HBM B/s)", "simulator", "roofline",
          f"1e6*kv__tokens_in_use*{_KV_BYTES}/(arch__tp*hw__hbm_bw)"),
        F("rl_attn_compute", "us", "4·layers·heads·head_dim·prefill_attn_work / (tp·FLOP/s)", "simulator", "roofline",
          "1e6*4*arch__num_layers*arch__num_heads*arch__head_dim*batch__prefill_context_sum/(arch__tp*hw__flops)"),
        F("rl_allreduce", "us", "2 ring all-reduces per layer: 4·layers·tokens·hidden·bytes·(tp−1)/tp / NVLink B/s",
          "simulator", "roofline",
          f"{_ALLREDUCE_BYTES}/hw__interconnect_bw"),
        F("rl_expert_compute", "us", "2·T·k·3·hidden·inter·layers / (tp·ep·FLOP/s): routed-expert FLOPs",
          "simulator", "roofline",
          f"1e6*2*{_T}*{_K}*{_EXPERT}*arch__num_layers/(arch__tp*arch__ep*hw__flops)"),
        F("rl_expert_weights", "us", "active_experts·3·hidden·inter·layers·bytes / (tp·ep·HBM B/s)",
          "simulator", "roofline",
          f"1e6*{_ACTIVE}*{_EXPERT}*arch__num_layers*arch__bytes_per_param/(arch__tp*arch__ep*hw__hbm_bw)"),
        # -- physics basis (README, "Fit once, predict every model"): per GPU, at the datasheet's peak rates --
        F("rl_weight_read", "us", "weights streamed per step (all but the input embedding and unhit experts) "
          "/ (tp·HBM B/s)", "simulator", "physics", _WEIGHT_READ),
        F("rl_kv_write", "us", "KV bytes written per step (scheduled tokens × KV bytes per token) / (tp·HBM B/s)",
          "simulator", "physics", _KV_WRITE),
        F("rl_memory", "us", "all HBM bytes of the step (weights + KV read + KV write) / (tp·HBM B/s)",
          "simulator", "physics", f"{_WEIGHT_READ} + {_KV_READ} + {_KV_WRITE}"),
        F("rl_linear_compute", "us", "2·(active params − embedding)·scheduled tokens / (tp·FLOP/s): the GEMM FLOPs",
          "simulator", "physics", _LINEAR_COMPUTE),
        F("rl_bound", "us", "roofline lower bound: max(GEMM FLOPs at peak FLOP/s, HBM bytes at peak bandwidth)",
          "simulator", "physics", f"Max({_LINEAR_COMPUTE}, {_WEIGHT_READ} + {_KV_READ} + {_KV_WRITE})"),
        F("n_allreduce", "collectives", "tensor-parallel all-reduces per step: 2 per layer when tp > 1, else 0",
          "simulator", "physics", "2*arch__num_layers*Min(1, Max(0, arch__tp - 1))"),
        F("allreduce_rounds", "rounds", "latency rounds of the step's all-reduces: 2 per layer × log2(tp) "
          "(the depth of NCCL's tree for small messages; 0 at tp = 1)", "simulator", "physics",
          "2*arch__num_layers*log(arch__tp)/log(2)"),
        F("rl_tp_comm", "us", "bytes of the step's tensor-parallel all-reduces (2 ring all-reduces per layer: "
          "4·layers·tokens·hidden·bytes·(tp−1)/tp) at the HBM bandwidth, as BLIS's trained-physics basis: the "
          "multiplier is the HBM/NVLink bandwidth ratio over the collective's efficiency (0 at tp = 1)",
          "simulator", "physics",
          f"{_ALLREDUCE_BYTES}/hw__hbm_bw"),
        F("num_moe_layers", "layers", "layers whose MLP is a mixture of experts (0 for dense)", "simulator", "physics",
          f"arch__num_layers*Min(1, Max(0, {_E} - 1))"),
        # -- operator tables: one call's own FLOPs and bytes (column maps), at peak rates ----------------
        F("op_compute", "us", "the operator's FLOPs (op.flops, one GPU) at the datasheet's peak FLOP/s", "simulator",
          "operator", "1e6*op__flops/hw__flops"),
        F("op_memory", "us", "the operator's HBM bytes (op.bytes, one GPU) at the datasheet's peak bandwidth",
          "simulator", "operator", "1e6*op__bytes/hw__hbm_bw"),
        F("op_bound", "us", "the operator's roofline time: max(op_compute, op_memory)", "simulator", "operator",
          "Max(1e6*op__flops/hw__flops, 1e6*op__bytes/hw__hbm_bw)"),
        F("op_intensity", "FLOP/B", "arithmetic intensity of the operator: op.flops / op.bytes", "simulator",
          "operator", "op__flops/op__bytes"),
        F("op_weight_memory", "us", "the operator's weight bytes (op.weight_bytes, the part of op.bytes that is "
          "stored operands: the weights one GPU reads) at the datasheet's peak bandwidth", "simulator", "operator",
          "1e6*op__weight_bytes/hw__hbm_bw"),
        F("op_act_memory", "us", "the operator's other HBM bytes (op.bytes − op.weight_bytes: activations read and "
          "written, intermediates) at the datasheet's peak bandwidth", "simulator", "operator",
          "1e6*(op__bytes - op__weight_bytes)/hw__hbm_bw"),
    )


FEATURES: Registry[Feature] = Registry("feature", lambda: ((f.name, f) for f in _declare()))


def registry() -> Mapping[str, Feature]:
    """All declared features by name (built on first use)."""
    return FEATURES


def get_feature(name: str) -> Feature:
    """Look a feature up by name; an unknown name lists the valid ones."""
    return FEATURES.get(name)


def available_features(columns: Iterable[str], allow: Iterable[str] = ("simulator", "trace")) -> list[Feature]:
    """Features computable from ``columns`` with an availability in ``allow`` (never leaky)."""
    allowed = set(allow) - {"leaky"}
    cols = list(columns)
    return [f for f in registry().values() if f.availability in allowed and f.available_in(cols)]


def compute_features(columns: Columns, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Compute the named features from canonical columns (a DataFrame or a dict of arrays)."""
    out = {}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for name in names:
            feature = get_feature(name)
            missing = [c for c in feature.inputs if c not in columns]
            if missing:
                raise StepMLError(f"feature '{name}' needs column(s) {', '.join(missing)} that the data lacks")
            out[name] = np.asarray(feature.compute(columns), dtype=float)
    return out


def feature_frame(frame: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """The named features of a table as a DataFrame aligned with its index."""
    values = compute_features(frame, names)
    return pd.DataFrame({k: np.broadcast_to(v, (len(frame),)) for k, v in values.items()}, index=frame.index)
