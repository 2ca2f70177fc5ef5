"""DEAP vs Operon at equal wall-clock budgets, same seeds, on real data (prints numbers, no asserts).

Cases
-----
* **BLIS**: each of the three BLIS experiments (``blis/steps/enriched_steps.parquet``), cycle target,
  temporal split, ``dense`` space.
* **MoE**: the aiconfigurator fused-MoE kernel table
  (``kernels/aiconfigurator_h100_vllm0.24/moe_perf.parquet``, loaded through the shipped ``moe_perf``
  column map: bf16, balanced routing), ``moe`` space, split ``logo:shape`` (leave one model shape out);
  one search per fold, the numbers are means over the folds run (all 16 unless ``--folds N``).
  Also, under the same folds: the gradient-boosted baseline (``evaluation.baselines`` ``gbt``) and a
  3-constant physics formula ``c0 + c1·rl_expert_compute + c2·rl_expert_weights`` (FLOPs and weight
  bytes of the expected active experts, as roofline times) fitted on each fold's training rows by
  least squares on the relative residuals.

Each search is ``python -m discovery.search`` (``discovery.run_search``) with ``--engine E
--budget B --generations 100000`` (the budget binds; DEAP may stop earlier by its early-stop rule),
the same ``--seed``; the ``best`` front member (``discovery.pareto.pick_row(front, "best")``) gives
the validation and test MAPE (%) and the complexity. Ratios are DEAP / Operon of test MAPE
(goal: ≤ 1.2). MoE goal: the best formula's mean test MAPE ≤ 12 %.

Usage: python benchmarks/engines_compare.py [--budgets 60,300] [--seed 0] [--cases blis,moe]
       [--folds N] [--engines deap,operon] [--keep DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import data_root_or_exit

import numpy as np

from discovery import run_search

BLIS_EXPERIMENTS = ("20260217-202857-llama-2-70b-tp4-general", "20260217-203421-llama-2-70b-hf-tp4-codegen",
                    "20260218-150304-codellama-34b-tp2-general")
BLIS_FILE = "blis/steps/enriched_steps.parquet"
MOE_FILE = "kernels/aiconfigurator_h100_vllm0.24/moe_perf.parquet"
PHYSICS = ("rl_expert_compute", "rl_expert_weights")


def one_search(options: dict, out: Path) -> dict:
    """One search (:func:`discovery.run_search` options); the ``best`` front member's numbers."""
    result = run_search(run_dir=str(out), **options)
    best = result.pick("best")
    stats = next(iter(result.info.get("engine_stats", {}).values()), {})
    return {"val": best.val_mape, "test": best.test_mape, "cx": best.complexity, "equation": best.equation,
            "wall": float(stats.get("wall_s", float("nan"))), "generations": stats.get("generations")}


def _line(label: str, engine: str, budget: float, r: dict) -> str:
    return (f"{label[:40]:<40} {engine:<7} {budget:>6.0f} {r['val']:>7.2f} {r['test']:>7.2f} {r['cx']:>4} "
            f"{r['wall']:>7.1f} {str(r['generations']):>6}  {r['equation'][:90]}")


HEADER = (f"{'case':<40} {'engine':<7} {'budget':>6} {'val%':>7} {'test%':>7} {'cx':>4} {'wall s':>7} {'gens':>6}"
          "  formula")


def blis(root: Path, budgets: list[float], engines: list[str], seed: int, tmp: Path) -> list[tuple]:
    rows = []
    for exp in BLIS_EXPERIMENTS:
        for budget in budgets:
            res = {}
            for engine in engines:
                options = dict(space="dense", data=str(root / BLIS_FILE), experiments=exp, target="cycle",
                               split="temporal", engine=engine, budget_s=budget, generations=100000, seed=seed)
                res[engine] = one_search(options, tmp / f"blis-{exp[:15]}-{engine}-{budget:g}")
                print(_line(exp, engine, budget, res[engine]), flush=True)
            rows.append((exp, budget, res))
    return rows


def physics_and_gbt(dataset, split) -> tuple[float, float, str]:
    """Test MAPE (%) of the 3-constant physics formula and of the GBT baseline on one fold."""
    import sympy

    from evaluation.baselines import fit_baseline
    from evaluation.predictors import FormulaPredictor
    from evaluation.scorer import score
    from features import catalog

    gbt = score(fit_baseline("gbt", dataset, split.train), dataset, split).overall["test"]["mape"]
    train = dataset.frame.iloc[split.train]
    cols = catalog.compute_features(train, PHYSICS)
    y = np.asarray(dataset.y[split.train], dtype=float)
    A = np.column_stack([np.ones_like(y)] + [np.broadcast_to(np.asarray(cols[f], float), y.shape) for f in PHYSICS])
    coef, *_ = np.linalg.lstsq(A / y[:, None], np.ones_like(y), rcond=None)  # min Σ((A·c − y)/y)²
    expr = sympy.Float(coef[0]) + sum(sympy.Float(c) * sympy.Symbol(f) for c, f in zip(coef[1:], PHYSICS))
    card = score(FormulaPredictor(expr, tuple(dataset.feature_names(("simulator", "trace")))), dataset, split)
    return float(card.overall["test"]["mape"]), float(gbt), sympy.sstr(expr, full_prec=False)


def moe(root: Path, budgets: list[float], engines: list[str], seed: int, folds: int | None, tmp: Path) -> list[tuple]:
    from features.dataset import load_dataset
    from features.splits import make_splits

    data = root / MOE_FILE
    dataset = load_dataset(data, None)
    splits = make_splits(dataset.frame, "logo:shape", dataset.content_hash())
    splits = splits[:folds] if folds else splits
    refs = []
    for split in splits:
        refs.append(physics_and_gbt(dataset, split))
        print(f"{'MoE fold ' + split.fold:<40} physics test {refs[-1][0]:6.2f}%   gbt test {refs[-1][1]:6.2f}%   "
              f"{refs[-1][2]}", flush=True)
    rows = []
    for budget in budgets:
        per = {e: [] for e in engines}
        for split in splits:
            for engine in engines:
                options = dict(space="moe", data=str(data), split="logo:shape", fold=split.fold, engine=engine,
                               budget_s=budget, generations=100000, seed=seed)
                r = one_search(options, tmp / f"moe-{split.fold}-{engine}-{budget:g}")
                per[engine].append(r)
                print(_line("MoE fold " + split.fold, engine, budget, r), flush=True)
        rows.append((budget, per))
    return [("folds", [s.fold for s in splits]), ("refs", refs)] + [("budget", b, p) for b, p in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="60,300", help="comma-separated wall-clock budgets in s (default 60,300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="blis,moe", help="blis, moe or both (default)")
    parser.add_argument("--folds", type=int, default=None, help="MoE: only the first N leave-one-shape-out folds")
    parser.add_argument("--engines", default="deap,operon")
    parser.add_argument("--keep", default=None, help="keep the run directories here (default: a temp dir)")
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    cases = {c.strip() for c in args.cases.split(",")}
    root = data_root_or_exit()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="stepml-engines-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"engines {', '.join(engines)}; budgets {', '.join(f'{b:g}' for b in budgets)} s; seed {args.seed}; "
          f"single process each (Operon n_threads=1)")
    print(HEADER)
    summary = []
    if "blis" in cases:
        for exp, budget, res in blis(root, budgets, engines, args.seed, tmp):
            summary.append((f"BLIS {exp}", budget, {e: (r["val"], r["test"], r["cx"]) for e, r in res.items()}))
    moe_refs = None
    if "moe" in cases:
        out = moe(root, budgets, engines, args.seed, args.folds, tmp)
        folds, refs = out[0][1], out[1][1]
        moe_refs = (len(folds), float(np.mean([r[0] for r in refs])), float(np.mean([r[1] for r in refs])))
        for _, budget, per in out[2:]:
            summary.append((f"MoE mean over {len(folds)} folds", budget,
                            {e: (float(np.mean([r["val"] for r in rs])), float(np.mean([r["test"] for r in rs])),
                                 float(np.mean([r["cx"] for r in rs]))) for e, rs in per.items()}))
    print()
    print("summary: best front member (pick 'best'); MAPE in %; ratio = DEAP test / Operon test (goal <= 1.2)")
    head = f"{'case':<58} {'budget':>6}"
    for e in engines:
        head += f" {e + ' val':>11} {e + ' test':>11} {e + ' cx':>9}"
    print(head + f" {'ratio':>6}")
    for label, budget, vals in summary:
        line = f"{label[:58]:<58} {budget:>6.0f}"
        for e in engines:
            v, t, c = vals[e]
            line += f" {v:>11.2f} {t:>11.2f} {c:>9.1f}"
        ratio = vals["deap"][1] / vals["operon"][1] if {"deap", "operon"} <= set(vals) else float("nan")
        print(line + f" {ratio:>6.2f}")
    if moe_refs is not None:
        n, phys, gbt = moe_refs
        print(f"MoE references (mean test MAPE over {n} folds): physics c0 + c1*rl_expert_compute + "
              f"c2*rl_expert_weights {phys:.2f}%   gbt {gbt:.2f}%   (formula goal <= 12%)")
    print(f"total wall {time.time() - t0:.0f} s; runs in {tmp}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
