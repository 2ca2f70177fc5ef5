"""Time to replay the 16,800-request Llama-2-70B general experiment (goal < 20 s).

Replays ``20260217-202857-llama-2-70b-tp4-general`` (2 stages, 8 and 20 req/s for
600 s each) with several step-time predictors and prints the wall time, the
simulated steps and the time per step. No assertions.

Run: ``python benchmarks/replay_speed.py``. The ``gbt`` baseline is not replayed:
scikit-learn's one-row ``predict`` costs ~2 ms single-threaded and ~45 ms with its
default thread pool on 2 cores, i.e. minutes to an hour per replay; its per-call
time is measured and the replay time extrapolated instead.
"""
from __future__ import annotations

import time

from _common import data_root_or_exit

import numpy as np
import sympy

GOAL_S = 20.0
EXPERIMENT = "20260217-202857-llama-2-70b-tp4-general"


class Constant:
    name = "constant 19 ms"

    def predict(self, columns):
        return np.array([19_000.0])


def main() -> None:
    root = data_root_or_exit()
    from evaluation.baselines import fit_baseline
    from evaluation.predictors import FormulaPredictor
    from evaluation.replay import replay_experiment
    from features import catalog
    from features.dataset import load_dataset

    exp = root / "blis" / "experiments" / EXPERIMENT
    t = time.perf_counter()
    data = load_dataset(root / "blis" / "steps" / "enriched_steps.parquet", "cycle")
    rows = np.flatnonzero(data.frame["experiment_id"].to_numpy() == EXPERIMENT)
    print(f"fit data loaded in {time.perf_counter() - t:.1f} s ({len(rows)} rows of {EXPERIMENT})")
    formula = sympy.sympify("17391.0 + 28.01*prefill_tokens + 40.38*decode_tokens")
    predictors = [Constant(), fit_baseline("blackbox", data, rows),
                  FormulaPredictor(formula, tuple(catalog.registry()), name="formula (blackbox coefficients)"),
                  fit_baseline("roofline-cal", data, rows)]
    print(f"{'predictor':<34} {'requests':>8} {'steps':>7} {'wall s':>7} {'sim s':>7} {'us/step':>8}  goal < {GOAL_S:.0f} s")
    for pred in predictors:
        res = replay_experiment(exp, pred)
        per_step = res.sim_seconds / max(res.num_steps, 1) * 1e6
        verdict = "ok" if res.wall_seconds < GOAL_S else "SLOW"
        print(f"{pred.name:<34} {len(res.requests):>8} {res.num_steps:>7} {res.wall_seconds:>7.2f} "
              f"{res.sim_seconds:>7.2f} {per_step:>8.1f}  {verdict}")
        steps = res.num_steps
    # gbt: time one-row predictions only and extrapolate
    from evaluation.replay import step_time_function
    from evaluation.scheduler import STEP_FEATURE_KEYS

    gbt = fit_baseline("gbt", data, rows)
    const = {k: float(data.frame[k].iloc[rows[0]]) for k in data.frame.columns if k.startswith(("arch.", "hw."))}
    fn = step_time_function(gbt, {**const, "experiment_id": EXPERIMENT, "model": "m", "workload": "w"})
    feats = {k: 10.0 for k in STEP_FEATURE_KEYS}
    fn(feats)
    n = 20
    t = time.perf_counter()
    for _ in range(n):
        fn(feats)
    per_call = (time.perf_counter() - t) / n
    print(f"{'gbt (extrapolated)':<34} {'':>8} {steps:>7} {per_call * steps:>7.0f} {'':>7} {per_call * 1e6:>8.0f}  "
          f"{'ok' if per_call * steps < GOAL_S else 'SLOW'} (one-row sklearn predict)")


if __name__ == "__main__":
    main()
