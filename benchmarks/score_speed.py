"""Time to score 1,000 candidate formulas on 20,000 rows (goal < 5 s).

Candidates are random formulas over batch and KV features, evaluated with the
operator table's vectorised evaluator and ranked by the harness's vectorised
loss (:func:`search_spaces.objective.relative_error`, in %).
"""
from __future__ import annotations

import time

import numpy as np
import sympy
from _common import data_root_or_exit

from features.dataset import load_dataset
from search_spaces.numeric import lambdify_formula
from search_spaces.objective import relative_error


def main() -> None:
    root = data_root_or_exit()
    dataset = load_dataset(root / "blis/steps/enriched_steps.parquet", max_gap=100)
    names = ["prefill_tokens", "decode_tokens", "kv_tokens", "batch_size", "num_prefill_reqs"]
    X = dataset.features(names)
    n = min(20_000, len(dataset.frame))
    X = {k: v[:n] for k, v in X.items()}
    y = dataset.y[:n]
    rng = np.random.default_rng(0)
    syms = [sympy.Symbol(s) for s in names]
    exprs = []
    for _ in range(1000):
        k = rng.integers(2, 5)
        picks = rng.choice(len(syms), size=k, replace=False)
        expr = sympy.Float(float(rng.uniform(1e3, 2e4)))
        for j in picks:
            term = syms[j] * sympy.Float(float(rng.uniform(0.1, 50)))
            expr = sympy.Max(expr, term) if rng.random() < 0.2 else expr + term
        exprs.append(expr)
    start = time.perf_counter()
    fns = [lambdify_formula(e, names) for e in exprs]
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    preds = np.vstack([f(X) for f in fns])
    losses = np.array([relative_error(p, y) for p in preds]) * 100.0
    evaluated = time.perf_counter() - start
    total = compiled + evaluated
    print(f"rows {n}, candidates {len(exprs)}: compile {compiled:.2f} s + evaluate/score {evaluated:.2f} s "
          f"= {total:.2f} s   (goal < 5 s: ratio {total / 5:.2f}); best MAPE {np.min(losses):.2f} %")


if __name__ == "__main__":
    main()
