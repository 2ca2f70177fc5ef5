"""DEAP on the three BLIS experiments: `dense` space, cycle target, temporal split.

For each experiment a search (default 120 s budget) runs on that experiment's
training part; the `best` front member's test MAPE is compared with the
gradient-boosted baseline and with `poly2` (a quadratic in the features' logs,
the smooth reference) fitted on the same training part. Also runs one
pooled search over all three experiments. Prints the ratio formula/GBT
(goal ≤ 1.0 with complexity ≤ 15) and node evaluations per second.

Usage: python benchmarks/search_blis.py [--budget 120] [--seed 0] [--pooled-only]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import data_root_or_exit

from discovery import run_search
from evaluation.baselines import fit_baseline
from evaluation.scorer import score
from features.dataset import load_dataset
from features.splits import make_splits

EXPERIMENTS = ("20260217-202857-llama-2-70b-tp4-general", "20260217-203421-llama-2-70b-hf-tp4-codegen",
               "20260218-150304-codellama-34b-tp2-general")


def run_one(data: Path, experiments: list[str], budget: float, seed: int, out: Path) -> dict:
    result = run_search(space="dense", data=str(data), experiments=",".join(experiments), budget_s=budget,
                        generations=1000, seed=seed, run_dir=str(out))
    best = result.pick("best")
    dataset = load_dataset(data, experiments=experiments)
    split = make_splits(dataset.frame, "temporal")[0]
    gbt = score(fit_baseline("gbt", dataset, split.train), dataset, split)
    poly = score(fit_baseline("poly2", dataset, split.train), dataset, split)
    from evaluation.predictors import FormulaPredictor
    card = score(FormulaPredictor(best.expression(), tuple(dataset.feature_names())), dataset, split)
    stats = result.info.get("engine_stats", {}).get("deap", {})
    return {"best": best, "card": card, "gbt": gbt, "poly2": poly, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pooled-only", action="store_true")
    args = parser.parse_args()
    data = data_root_or_exit() / "blis/steps/enriched_steps.parquet"
    tmp = Path(tempfile.mkdtemp(prefix="stepml-bench-"))
    print(f"dense space, cycle target, temporal split, budget {args.budget:.0f} s per search, seed {args.seed}")
    print(f"{'experiment':<46} {'cx':>3} {'formula test%':>13} {'GBT test%':>9} {'poly2%':>7} {'ratio':>6} "
          f"{'node evals/s':>13}  formula")
    groups = [] if args.pooled_only else [[e] for e in EXPERIMENTS]
    for k, exps in enumerate(groups + [list(EXPERIMENTS)]):
        res = run_one(data, exps, args.budget, args.seed, tmp / f"run{k}")
        pooled = len(exps) > 1
        for exp in exps:
            f = res["card"].groups[("test", "experiment_id")][exp]["mape"]
            g = res["gbt"].groups[("test", "experiment_id")][exp]["mape"]
            q = res["poly2"].groups[("test", "experiment_id")][exp]["mape"]
            label = ("pooled: " if pooled else "") + exp
            print(f"{label[:46]:<46} {int(res['best'].complexity):>3} {f:>13.2f} {g:>9.2f} {q:>7.2f} {f / g:>6.2f} "
                  f"{res['stats'].get('node_evals_per_s', float('nan')):>13.3g}  {res['best'].equation}")
    print(f"runs kept in {tmp}")


if __name__ == "__main__":
    main()
