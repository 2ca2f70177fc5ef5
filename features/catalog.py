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
``roofline`` (physically motivated time terms in µs).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from features.errors import StepMLError

Columns = Mapping[str, "np.ndarray | pd.Series | float"]
AVAILABILITY = ("simulator", "trace", "leaky")


@dataclass(frozen=True)
class Feature:
    """One feature: ``compute(columns)`` returns a float array."""

    name: str
    unit: str
    description: str
    availability: str
    library: str
    inputs: tuple[str, ...]
    compute: Callable[[Columns], np.ndarray]

    def available_in(self, columns: Iterable[str]) -> bool:
        """True when every input column is present."""
        have = set(columns)
        return all(c in have for c in self.inputs)


def _c(cols: Columns, name: str) -> np.ndarray:
    value = cols[name]
    if isinstance(value, float):  # one simulated step: numpy scalars are far cheaper than arrays
        return np.float64(value)  # type: ignore[return-value]
    return np.asarray(value, dtype=float)


def _col(name: str) -> Callable[[Columns], np.ndarray]:
    return lambda cols: _c(cols, name)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=float)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _active_experts(cols: Columns) -> np.ndarray:
    e = _c(cols, "arch.num_experts")
    k = _c(cols, "arch.experts_per_token")
    t = _c(cols, "batch.scheduled_tokens")
    return e * (1.0 - np.power(np.clip(1.0 - k / e, 0.0, 1.0), t))


def _expert_params(cols: Columns) -> np.ndarray:
    return 3.0 * _c(cols, "arch.hidden_size") * _c(cols, "arch.intermediate_size")


def _kv_bytes_per_token(cols: Columns) -> np.ndarray:
    return (2.0 * _c(cols, "arch.num_layers") * _c(cols, "arch.num_kv_heads") * _c(cols, "arch.head_dim")
            * _c(cols, "arch.bytes_per_param"))


def _us(seconds: np.ndarray) -> np.ndarray:
    return seconds * 1e6


_MOE = ("arch.num_experts", "arch.experts_per_token", "batch.scheduled_tokens")
_PARAMS = ("arch.active_params", "arch.tp", "hw.flops")
_BATCH = ("batch.num_prefill_reqs", "batch.num_decode_reqs")


def _declare() -> tuple[Feature, ...]:
    F = Feature
    return (
        # -- batch composition -------------------------------------------------------------
        F("prefill_tokens", "tokens", "prompt tokens processed this step", "simulator", "batch",
          ("batch.prefill_tokens",), _col("batch.prefill_tokens")),
        F("decode_tokens", "tokens", "decode tokens processed this step", "simulator", "batch",
          ("batch.decode_tokens",), _col("batch.decode_tokens")),
        F("scheduled_tokens", "tokens", "all tokens processed this step", "simulator", "batch",
          ("batch.scheduled_tokens",), _col("batch.scheduled_tokens")),
        F("num_prefill_reqs", "requests", "requests in prefill this step", "simulator", "batch",
          ("batch.num_prefill_reqs",), _col("batch.num_prefill_reqs")),
        F("num_decode_reqs", "requests", "requests decoding this step", "simulator", "batch",
          ("batch.num_decode_reqs",), _col("batch.num_decode_reqs")),
        F("batch_size", "requests", "requests in the batch (prefill + decode)", "simulator", "batch",
          _BATCH, lambda c: _c(c, "batch.num_prefill_reqs") + _c(c, "batch.num_decode_reqs")),
        F("is_mixed", "flag", "1 when the batch holds both prefill and decode requests", "simulator", "batch",
          _BATCH, lambda c: 1.0 * ((_c(c, "batch.num_prefill_reqs") > 0) & (_c(c, "batch.num_decode_reqs") > 0))),
        # -- trace-only and leaky ------------------------------------------------------------
        F("running_depth", "requests", "scheduler running-queue depth", "trace", "batch",
          ("queue.running_depth",), _col("queue.running_depth")),
        F("waiting_depth", "requests", "scheduler waiting-queue depth", "trace", "batch",
          ("queue.waiting_depth",), _col("queue.waiting_depth")),
        F("kv_usage", "ratio", "fraction of GPU KV blocks in use", "trace", "kv",
          ("kv.usage_gpu_ratio",), _col("kv.usage_gpu_ratio")),
        F("num_finished", "requests", "requests that finished in this step (known after it)", "leaky", "batch",
          ("batch.num_finished",), _col("batch.num_finished")),
        F("num_preempted", "requests", "requests preempted in this step (known after it)", "leaky", "batch",
          ("batch.num_preempted",), _col("batch.num_preempted")),
        F("recorded_duration", "us", "step.duration_us as recorded (timing)", "leaky", "batch",
          ("step.duration_us",), _col("step.duration_us")),
        # -- KV lengths ---------------------------------------------------------------------
        F("kv_tokens", "tokens", "KV tokens held by the batch", "simulator", "kv",
          ("kv.tokens_in_use",), _col("kv.tokens_in_use")),
        F("kv_per_req", "tokens", "mean KV length per request in the batch", "simulator", "kv",
          ("kv.tokens_in_use",) + _BATCH,
          lambda c: _safe_div(_c(c, "kv.tokens_in_use"), _c(c, "batch.num_prefill_reqs") + _c(c, "batch.num_decode_reqs"))),
        F("decode_ctx_sum", "tokens", "Σ KV length over decode requests (decode attention work)", "simulator", "kv",
          ("batch.decode_context_sum",), _col("batch.decode_context_sum")),
        F("prefill_attn_work", "token²", "Σ over prefill chunks of new·ctx + new·(new+1)/2", "simulator", "kv",
          ("batch.prefill_context_sum",), _col("batch.prefill_context_sum")),
        # -- MoE --------------------------------------------------------------------------------
        F("is_moe", "flag", "1 for a mixture-of-experts model", "simulator", "moe",
          ("arch.num_experts",), lambda c: 1.0 * (_c(c, "arch.num_experts") > 1)),
        F("num_experts", "experts", "experts per MoE layer (E; 1 for dense)", "simulator", "moe",
          ("arch.num_experts",), _col("arch.num_experts")),
        F("experts_per_token", "experts", "experts each token is routed to (k)", "simulator", "moe",
          ("arch.experts_per_token",), _col("arch.experts_per_token")),
        F("active_experts", "experts", "expected distinct experts hit by T tokens: E·(1−(1−k/E)^T)", "simulator", "moe",
          _MOE, _active_experts),
        F("tokens_per_expert", "tokens", "T·k/E routed tokens per expert", "simulator", "moe",
          _MOE, lambda c: _c(c, "batch.scheduled_tokens") * _c(c, "arch.experts_per_token") / _c(c, "arch.num_experts")),
        F("ep_size", "GPUs", "expert-parallel degree", "simulator", "moe", ("arch.ep",), _col("arch.ep")),
        # -- architecture ----------------------------------------------------------------------
        F("num_layers", "layers", "transformer layers", "simulator", "arch", ("arch.num_layers",), _col("arch.num_layers")),
        F("hidden_size", "units", "model width", "simulator", "arch", ("arch.hidden_size",), _col("arch.hidden_size")),
        F("num_heads", "heads", "attention heads", "simulator", "arch", ("arch.num_heads",), _col("arch.num_heads")),
        F("num_kv_heads", "heads", "KV heads", "simulator", "arch", ("arch.num_kv_heads",), _col("arch.num_kv_heads")),
        F("head_dim", "units", "attention head dimension", "simulator", "arch", ("arch.head_dim",), _col("arch.head_dim")),
        F("intermediate_size", "units", "MLP (expert) width", "simulator", "arch",
          ("arch.intermediate_size",), _col("arch.intermediate_size")),
        F("vocab_size", "tokens", "vocabulary size", "simulator", "arch", ("arch.vocab_size",), _col("arch.vocab_size")),
        F("total_params", "params", "all weights", "simulator", "arch", ("arch.total_params",), _col("arch.total_params")),
        F("active_params", "params", "weights one token touches", "simulator", "arch",
          ("arch.active_params",), _col("arch.active_params")),
        F("bytes_per_param", "bytes", "bytes per weight", "simulator", "arch",
          ("arch.bytes_per_param",), _col("arch.bytes_per_param")),
        F("tp", "GPUs", "tensor-parallel degree", "simulator", "arch", ("arch.tp",), _col("arch.tp")),
        # -- hardware ------------------------------------------------------------------------
        F("hw_flops", "FLOP/s", "dense bf16 tensor FLOP/s (datasheet sparse figure halved)", "simulator", "hardware",
          ("hw.flops",), _col("hw.flops")),
        F("hbm_bw", "B/s", "HBM bandwidth", "simulator", "hardware", ("hw.hbm_bw",), _col("hw.hbm_bw")),
        F("interconnect_bw", "B/s", "NVLink bandwidth", "simulator", "hardware",
          ("hw.interconnect_bw",), _col("hw.interconnect_bw")),
        # -- roofline basis terms (µs) ------------------------------------------------------------
        F("rl_prefill_compute", "us", "2·active_params·prefill_tokens / (tp·FLOP/s)", "simulator", "roofline",
          _PARAMS + ("batch.prefill_tokens",),
          lambda c: _us(2 * _c(c, "arch.active_params") * _c(c, "batch.prefill_tokens") / (_c(c, "arch.tp") * _c(c, "hw.flops")))),
        F("rl_decode_compute", "us", "2·active_params·decode_tokens / (tp·FLOP/s)", "simulator", "roofline",
          _PARAMS + ("batch.decode_tokens",),
          lambda c: _us(2 * _c(c, "arch.active_params") * _c(c, "batch.decode_tokens") / (_c(c, "arch.tp") * _c(c, "hw.flops")))),
        F("rl_weight_load", "us", "bytes of the weights the step touches (non-expert + active experts) / (tp·HBM B/s)",
          "simulator", "roofline",
          ("arch.total_params", "arch.num_layers", "arch.hidden_size", "arch.intermediate_size", "arch.bytes_per_param",
           "arch.tp", "hw.hbm_bw") + _MOE,
          lambda c: _us((_c(c, "arch.total_params") - _c(c, "arch.num_layers") * _expert_params(c)
                         * (_c(c, "arch.num_experts") - _active_experts(c)))
                        * _c(c, "arch.bytes_per_param") / (_c(c, "arch.tp") * _c(c, "hw.hbm_bw")))),
        F("rl_kv_read", "us", "KV bytes of the batch / (tp·HBM B/s)", "simulator", "roofline",
          ("kv.tokens_in_use", "arch.num_layers", "arch.num_kv_heads", "arch.head_dim", "arch.bytes_per_param",
           "arch.tp", "hw.hbm_bw"),
          lambda c: _us(_c(c, "kv.tokens_in_use") * _kv_bytes_per_token(c) / (_c(c, "arch.tp") * _c(c, "hw.hbm_bw")))),
        F("rl_attn_compute", "us", "4·layers·heads·head_dim·prefill_attn_work / (tp·FLOP/s)", "simulator", "roofline",
          ("batch.prefill_context_sum", "arch.num_layers", "arch.num_heads", "arch.head_dim", "arch.tp", "hw.flops"),
          lambda c: _us(4 * _c(c, "arch.num_layers") * _c(c, "arch.num_heads") * _c(c, "arch.head_dim")
                        * _c(c, "batch.prefill_context_sum") / (_c(c, "arch.tp") * _c(c, "hw.flops")))),
        F("rl_allreduce", "us", "2 ring all-reduces per layer: 4·layers·tokens·hidden·bytes·(tp−1)/tp / NVLink B/s",
          "simulator", "roofline",
          ("arch.num_layers", "batch.scheduled_tokens", "arch.hidden_size", "arch.bytes_per_param", "arch.tp",
           "hw.interconnect_bw"),
          lambda c: _us(4 * _c(c, "arch.num_layers") * _c(c, "batch.scheduled_tokens") * _c(c, "arch.hidden_size")
                        * _c(c, "arch.bytes_per_param") * (_c(c, "arch.tp") - 1) / _c(c, "arch.tp")
                        / _c(c, "hw.interconnect_bw"))),
        F("rl_expert_compute", "us", "2·T·k·3·hidden·inter·layers / (tp·ep·FLOP/s): routed-expert FLOPs",
          "simulator", "roofline",
          _MOE + ("arch.hidden_size", "arch.intermediate_size", "arch.num_layers", "arch.tp", "arch.ep", "hw.flops"),
          lambda c: _us(2 * _c(c, "batch.scheduled_tokens") * _c(c, "arch.experts_per_token") * _expert_params(c)
                        * _c(c, "arch.num_layers") / (_c(c, "arch.tp") * _c(c, "arch.ep") * _c(c, "hw.flops")))),
        F("rl_expert_weights", "us", "active_experts·3·hidden·inter·layers·bytes / (tp·ep·HBM B/s)",
          "simulator", "roofline",
          _MOE + ("arch.hidden_size", "arch.intermediate_size", "arch.num_layers", "arch.bytes_per_param",
                  "arch.tp", "arch.ep", "hw.hbm_bw"),
          lambda c: _us(_active_experts(c) * _expert_params(c) * _c(c, "arch.num_layers") * _c(c, "arch.bytes_per_param")
                        / (_c(c, "arch.tp") * _c(c, "arch.ep") * _c(c, "hw.hbm_bw")))),
    )


_REGISTRY: dict[str, Feature] | None = None


def registry() -> Mapping[str, Feature]:
    """All declared features by name (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = {f.name: f for f in _declare()}
    return MappingProxyType(_REGISTRY)


def get_feature(name: str) -> Feature:
    """Look a feature up by name; an unknown name lists the valid ones."""
    reg = registry()
    if name not in reg:
        raise StepMLError(f"unknown feature '{name}'; valid: {', '.join(reg)}")
    return reg[name]


def available_features(columns: Iterable[str], allow: Iterable[str] = ("simulator", "trace")) -> list[Feature]:
    """Features computable from ``columns`` with an availability in ``allow`` (never leaky)."""
    allowed = set(allow) - {"leaky"}
    cols = list(columns)
    return [f for f in registry().values() if f.availability in allowed and f.available_in(cols)]


def compute_features(columns: Columns, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Compute the named features from canonical columns (a DataFrame or a dict of arrays)."""
    out = {}
    for name in names:
        feature = get_feature(name)
        missing = [c for c in feature.inputs if c not in columns]
        if missing:
            raise StepMLError(f"feature '{name}' needs column(s) {', '.join(missing)} that the data lacks")
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out[name] = np.asarray(feature.compute(columns), dtype=float)
    return out


def feature_frame(frame: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """The named features of a table as a DataFrame aligned with its index."""
    values = compute_features(frame, names)
    return pd.DataFrame({k: np.broadcast_to(v, (len(frame),)) for k, v in values.items()}, index=frame.index)
