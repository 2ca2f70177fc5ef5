"""Per-step batch aggregates computed from per-request state.

This is the single definition of how a batch of requests turns into the
canonical ``batch.*`` and ``kv.*`` columns. The continuous-batching simulator
(:mod:`evaluation.scheduler`) calls it every step, and the Go exporter emits
the same definitions over BLIS's ``sim.Request`` fields, so a formula sees
identical inputs in the trace, the replay and the exported predictor.

Per request ``i`` in the batch:

- ``context[i]``: tokens already in its KV cache before the step
  (BLIS ``ProgressIndex``);
- ``new[i]``: tokens it processes this step (``NumNewTokens``);
- ``prompt[i]``: its prompt length (``len(InputTokens)``).

A request is a *prefill* request when ``context < prompt``, else a decode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: name → (rule, Go expression over the loop variables ``ctx``, ``n``, ``prompt``, ``pre``).
#: ``rule`` says which requests contribute: "prefill", "decode" or "all".
AGGREGATE_RULES: dict[str, tuple[str, str, str]] = {
    "batch.num_prefill_reqs": ("prefill", "1", "count of prefill requests"),
    "batch.num_decode_reqs": ("decode", "1", "count of decode requests"),
    "batch.prefill_tokens": ("prefill", "n", "prefill tokens scheduled"),
    "batch.decode_tokens": ("decode", "n", "decode tokens scheduled"),
    "batch.scheduled_tokens": ("all", "n", "all tokens scheduled"),
    "batch.decode_context_sum": ("decode", "ctx + n", "Σ KV length over decode requests"),
    "batch.prefill_context_sum": ("prefill", "n*ctx + n*(n+1)/2", "attention work of prefill chunks"),
    "kv.tokens_in_use": ("all", "ctx + n", "KV tokens held by the batch after the step"),
}


@dataclass(frozen=True)
class RequestState:
    """Per-request arrays of one batch (all the same length)."""

    context: np.ndarray
    new: np.ndarray
    prompt: np.ndarray


def batch_aggregates(context: np.ndarray, new: np.ndarray, prompt: np.ndarray) -> dict[str, float]:
    """Canonical aggregate columns of one batch.

    Parameters
    ----------
    context, new, prompt : array_like
        Per-request KV length before the step, tokens processed this step and
        prompt length (see the module docstring).

    Returns
    -------
    dict
        One float per name in :data:`AGGREGATE_RULES`.
    """
    ctx = np.asarray(context, dtype=float)
    n = np.asarray(new, dtype=float)
    pre = ctx < np.asarray(prompt, dtype=float)
    dec = ~pre
    return {
        "batch.num_prefill_reqs": float(pre.sum()),
        "batch.num_decode_reqs": float(dec.sum()),
        "batch.prefill_tokens": float(n[pre].sum()),
        "batch.decode_tokens": float(n[dec].sum()),
        "batch.scheduled_tokens": float(n.sum()),
        "batch.decode_context_sum": float((ctx[dec] + n[dec]).sum()),
        "batch.prefill_context_sum": float((n[pre] * ctx[pre] + n[pre] * (n[pre] + 1) / 2).sum()),
        "kv.tokens_in_use": float((ctx + n).sum()),
    }
