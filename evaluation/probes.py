"""Probe pairs for the monotonicity and positivity constraints.

A step-time formula must not predict a shorter step when the batch grows.
Probes are built at the level of canonical columns, so every derived feature
(batch size, KV per request, active experts, roofline terms…) moves
consistently: ``hi`` is ``lo`` with more prefill tokens, more decode tokens,
or more KV tokens. Search uses pairs built from training rows; the audit
uses an extrapolation grid over the server's limits.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

AXES = ("prefill_tokens", "decode_tokens", "kv_tokens")


def _add(frame: pd.DataFrame, column: str, delta: np.ndarray) -> None:
    if column in frame.columns:
        frame[column] = frame[column].to_numpy(float) + delta


def perturb(frame: pd.DataFrame, axis: str) -> pd.DataFrame:
    """A copy of ``frame`` with more work along ``axis`` (canonical columns kept consistent)."""
    hi = frame.copy()
    for col in hi.columns:
        if col.startswith(("batch.", "kv.")) and hi[col].dtype.kind in "iu":
            hi[col] = hi[col].astype(float)
    kv = hi["kv.tokens_in_use"].to_numpy(float) if "kv.tokens_in_use" in hi.columns else None
    if axis == "prefill_tokens":
        base = hi["batch.prefill_tokens"].to_numpy(float)
        d = np.maximum(16.0, np.round(0.25 * base))
        _add(hi, "batch.prefill_tokens", d)
        _add(hi, "batch.scheduled_tokens", d)
        if "batch.num_prefill_reqs" in hi.columns:
            hi["batch.num_prefill_reqs"] = np.maximum(1.0, hi["batch.num_prefill_reqs"].to_numpy(float))
        _add(hi, "kv.tokens_in_use", d)
        _add(hi, "batch.prefill_context_sum", d * (d + 1) / 2)
    elif axis == "decode_tokens":
        base = hi["batch.decode_tokens"].to_numpy(float)
        d = np.maximum(1.0, np.round(0.25 * base))
        reqs = (hi.get("batch.num_prefill_reqs", 0) + hi.get("batch.num_decode_reqs", 0))
        ctx = np.divide(kv, np.asarray(reqs, float), out=np.full(len(hi), 512.0),
                        where=np.asarray(reqs, float) > 0) if kv is not None else np.full(len(hi), 512.0)
        _add(hi, "batch.decode_tokens", d)
        _add(hi, "batch.scheduled_tokens", d)
        _add(hi, "batch.num_decode_reqs", d)
        _add(hi, "kv.tokens_in_use", d * ctx)
        _add(hi, "batch.decode_context_sum", d * ctx)
    elif axis == "kv_tokens":
        if kv is not None:
            hi["kv.tokens_in_use"] = kv * 1.25 + 16.0
        if "batch.decode_context_sum" in hi.columns:
            hi["batch.decode_context_sum"] = hi["batch.decode_context_sum"].to_numpy(float) * 1.25 + 16.0
    else:
        raise ValueError(f"unknown probe axis '{axis}'; valid: {', '.join(AXES)}")
    return hi


def probe_pairs(frame: pd.DataFrame, rng: np.random.Generator, n: int = 256,
                axes: tuple[str, ...] = AXES) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``axis → (lo, hi)`` canonical frames from ``n`` rows drawn from ``frame``.

    Axes whose columns the data lacks are left out.
    """
    need = {"prefill_tokens": "batch.prefill_tokens", "decode_tokens": "batch.decode_tokens",
            "kv_tokens": "kv.tokens_in_use"}
    rows = rng.choice(len(frame), size=min(n, len(frame)), replace=False) if len(frame) else np.zeros(0, int)
    lo = frame.iloc[np.sort(rows)].reset_index(drop=True)
    return {axis: (lo, perturb(lo, axis)) for axis in axes if need[axis] in frame.columns}


def extrapolation_grid(template: Mapping[str, float], max_num_seqs: int = 128, max_batched_tokens: int = 2048,
                       max_model_len: int = 4096, points: int = 9) -> pd.DataFrame:
    """Synthetic batches over the server's limits, with the constant columns of ``template``.

    Batch size from 1 to ``max_num_seqs`` decodes, prefill chunks up to
    ``max_batched_tokens``, KV up to ``max_model_len × seqs``; batches whose
    scheduled tokens exceed ``max_batched_tokens`` are left out.
    """
    seqs = np.unique(np.round(np.geomspace(1, max_num_seqs, points)).astype(int))
    prefill = np.unique(np.concatenate([[0], np.round(np.geomspace(16, max_batched_tokens, points)).astype(int)]))
    ctx_frac = np.linspace(0.05, 1.0, 4)
    rows = []
    for s in seqs:
        for p in prefill:
            n_pre = 1 if p > 0 else 0
            decodes = int(s) - n_pre
            if p + decodes > max_batched_tokens:  # over the step's token budget: no server schedules it
                continue
            for f in ctx_frac:
                kv = f * max_model_len * s
                rows.append({"batch.prefill_tokens": float(p), "batch.decode_tokens": float(decodes),
                             "batch.scheduled_tokens": float(p + decodes), "batch.num_prefill_reqs": float(n_pre),
                             "batch.num_decode_reqs": float(decodes), "kv.tokens_in_use": float(kv + p),
                             "batch.decode_context_sum": float(kv * decodes / max(s, 1)),
                             "batch.prefill_context_sum": float(p * (p + 1) / 2)})
    grid = pd.DataFrame(rows)
    for key, value in template.items():
        if key not in grid.columns:
            grid[key] = value
    return grid
