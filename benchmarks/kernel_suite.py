"""Formulas vs gradient-boosted trees on real operator-latency tables (prints numbers, no asserts).

Tables (``../shared/data/kernels`` or ``$STEPML_DATA/kernels``, each read through a shipped column map):

=====================  ==========================================  ===========================  ==========================
table                  data                                        column map                   out-of-distribution split
=====================  ==========================================  ===========================  ==========================
moe                    aiconfigurator H100 ``moe_perf.parquet``    ``moe_perf`` (bf16, balanced)  one model shape held out
gemm                   aiconfigurator H100 ``gemm_perf.parquet``   ``gemm_perf`` (bf16)           the largest m (token counts)
context_attention      ``context_attention_perf.parquet``          ``context_attention_perf``     the largest prompt batches
generation_attention   ``generation_attention_perf.parquet``       ``generation_attention_perf``  the largest KV lengths
vidur_mlp              Vidur H100 ``*/mlp.csv`` (5 models)         ``vidur_mlp_ops``              one model held out
=====================  ==========================================  ===========================  ==========================

Each table gives two tasks: ``NAME-shuffled`` (split ``random``: 60/20/20 of the rows at random) and
``NAME-ood`` (the split above: ``logo:shape`` / ``lomo`` with one fixed held-out fold, or
``largest:COLUMN``: the top 20 % of a size are the test part, the next largest the validation part).
``moe_loso`` runs the MoE leave-one-shape-out folds (all 16 unless ``--folds N``) and reports their mean.

On each task's split: one search (``discovery.run_search``, space ``kernel``, the whole ``--budget`` per
search, no early stop, no generation limit, ``--target-transform`` as given), then

- ``best``: test MAPE of the default pick (``discovery.pareto.select("best")``: validation error only),
- ``accurate``: test MAPE of the front row with the lowest *validation* error among complexity ≤ 20,
- ``gbt`` / ``xgboost``: test MAPE of the tree baselines (``evaluation.baselines``) fitted on the same
  training rows (xgboost: NaN when it is not installed),
- ``poly2``: test MAPE of the smooth reference of known size fitted on the same rows: a quadratic in the
  logs of the trees' features (``evaluation.baselines.LogPolynomial``; ``poly2_terms`` coefficients).
  Trees follow kernel-selection steps a smooth law cannot; a formula of a few constants near ``poly2``
  (tens to hundreds of constants) is as good as smooth gets at that size.

Everything runs in this one process (single-threaded trees, serial DEAP); test MAPE in %.
Goals (issue 12): in distribution ``accurate`` ≤ 1.3 × and ``best`` ≤ 1.5 × the better tree; out of
distribution ``best`` ≤ the trees on ≥ 4 of 5 tables; ``moe_loso_mean`` ≤ 12 %.

Usage: python benchmarks/kernel_suite.py [--budget 120] [--tasks moe-shuffled,gemm-ood,moe_loso] [--folds N]
       [--seed 0] [--engine deap] [--target-transform none|efficiency|log] [--keep DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import data_root_or_exit

import numpy as np

AIC = "kernels/aiconfigurator_h100_vllm0.24"


@dataclass(frozen=True)
class Table:
    """One operator table: where it is, its column map, and its out-of-distribution split (spec, fold)."""

    data: str
    colmap: str
    ood: str
    ood_fold: str | None = None


TABLES = {
    "moe": Table(f"{AIC}/moe_perf.parquet", "moe_perf", "logo:shape", "4096x14336x8x2"),
    "gemm": Table(f"{AIC}/gemm_perf.parquet", "gemm_perf", "largest:batch.scheduled_tokens"),
    "context_attention": Table(f"{AIC}/context_attention_perf.parquet", "context_attention_perf",
                               "largest:batch.prefill_tokens"),
    "generation_attention": Table(f"{AIC}/generation_attention_perf.parquet", "generation_attention_perf",
                                  "largest:kv.tokens_in_use"),
    "vidur_mlp": Table("kernels/vidur_h100/*/mlp.csv", "vidur_mlp_ops", "lomo", "Llama-2-70b-hf"),
}
TASKS = tuple(f"{t}-{s}" for t in TABLES for s in ("shuffled", "ood")) + ("moe_loso",)
ACCURATE_MAX_COMPLEXITY = 20


def _table_dataset(root: Path, name: str, cache: dict) -> object:
    from features.dataset import load_dataset

    if name not in cache:
        table = TABLES[name]
        cache[name] = load_dataset(str(root / table.data), colmap=table.colmap)
    return cache[name]


def _split(dataset: object, spec: str, fold: str | None) -> object:
    """The split a search with this spec and fold uses (``random`` draws with seed 0, as the search does)."""
    from features.errors import StepMLError
    from features.splits import make_splits

    splits = make_splits(dataset.frame, spec, dataset.content_hash())
    if fold is None:
        return splits[0]
    for s in splits:
        if s.fold == fold:
            return s
    raise StepMLError(f"{spec}: no fold '{fold}'; folds: {', '.join(s.fold for s in splits)}")


def references(dataset: object, split: object) -> dict[str, float]:
    """Test MAPE (%) of the gbt, xgboost and poly2 baselines fitted on the split's training rows
    (``poly2_terms``: the polynomial's coefficients)."""
    from evaluation.baselines import fit_baseline
    from evaluation.scorer import score
    from features.errors import StepMLError

    out = {}
    for name in ("gbt", "xgboost", "poly2"):
        try:
            model = fit_baseline(name, dataset, split.train)
            out[name] = float(score(model, dataset, split).overall["test"]["mape"])
        except StepMLError:
            out[name] = math.nan
            continue
        if name == "poly2":
            out["poly2_terms"] = model.n_terms_
    return out


def formula(root: Path, table: Table, spec: str, fold: str | None, args: argparse.Namespace, out: Path) -> dict:
    """One search on the split; the ``best`` and ``accurate`` rows' test MAPE (%), and the best formula."""
    from discovery import run_search

    result = run_search(space="kernel", data=str(root / table.data), colmap=table.colmap, split=spec, fold=fold,
                        engine=args.engine, budget_s=args.budget, seed=args.seed, run_dir=str(out),
                        target_transform=args.target_transform)
    best = result.pick("best")
    small = [r for r in result.front if r.complexity <= ACCURATE_MAX_COMPLEXITY] or list(result.front)
    accurate = min(small, key=lambda r: (r.val_mape, r.complexity))
    stats = next(iter(result.info.get("engine_stats", {}).values()), {})
    return {"best": float(best.test_mape), "accurate": float(accurate.test_mape), "best_cx": int(best.complexity),
            "accurate_cx": int(accurate.complexity), "equation": best.equation,
            "generations": stats.get("generations"), "stopped_by": stats.get("stopped_by"),
            "dropped": sorted(result.info.get("dropped_features", {}))}


def run_task(root: Path, task: str, args: argparse.Namespace, cache: dict, tmp: Path) -> dict:
    name, _, kind = task.rpartition("-")
    table = TABLES[name]
    spec, fold = ("random", None) if kind == "shuffled" else (table.ood, table.ood_fold)
    dataset = _table_dataset(root, name, cache)
    split = _split(dataset, spec, fold)
    ref = references(dataset, split)
    found = formula(root, table, spec, fold, args, tmp / task)
    return {"split": kind, "spec": spec + (f" fold {fold}" if fold else ""), "rows": [len(split.train), len(split.val),
            len(split.test)], **found, **ref}


def moe_loso(root: Path, args: argparse.Namespace, cache: dict, tmp: Path) -> dict:
    from features.splits import make_splits

    table = TABLES["moe"]
    dataset = _table_dataset(root, "moe", cache)
    folds = [s.fold for s in make_splits(dataset.frame, "logo:shape", dataset.content_hash())]
    folds = folds[:args.folds] if args.folds else folds
    per = {}
    for fold in folds:
        split = _split(dataset, "logo:shape", fold)
        per[fold] = {**formula(root, table, "logo:shape", fold, args, tmp / f"moe_loso-{fold}"),
                     **references(dataset, split)}
        r = per[fold]
        print(f"  moe fold {fold:<22} best {r['best']:7.2f}  accurate {r['accurate']:7.2f}  gbt {r['gbt']:7.2f}  "
              f"poly2 {r['poly2']:7.2f}",
              file=sys.stderr, flush=True)
    return {"folds": per, "mean": {k: float(np.mean([r[k] for r in per.values()]))
                                   for k in ("best", "accurate", "gbt", "xgboost", "poly2")}}


def _ratio(value: float, ref: dict) -> float:
    trees_best = np.nanmin([ref["gbt"], ref["xgboost"]])
    return value / trees_best if trees_best > 0 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="wall-clock seconds per search (default 120)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default all): {', '.join(TASKS)}")
    parser.add_argument("--folds", type=int, default=None, help="moe_loso: only the first N shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="deap")
    parser.add_argument("--target-transform", default="none")
    parser.add_argument("--keep", default=None, help="keep the run directories here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; valid: {', '.join(TASKS)}")
    root = data_root_or_exit()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="stepml-kernels-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    results: dict = {"tasks": {}, "moe_loso_mean": None}
    t0 = time.time()
    for task in tasks:
        started = time.time()
        if task == "moe_loso":
            loso = moe_loso(root, args, cache, tmp)
            results["moe_loso_mean"] = loso["mean"]["best"]
            results["moe_loso"] = loso
        else:
            results["tasks"][task] = run_task(root, task, args, cache, tmp) | {"wall_s": round(time.time() - started)}
            r = results["tasks"][task]
            print(f"  {task:<28} best {r['best']:7.2f}  accurate {r['accurate']:7.2f}  gbt {r['gbt']:7.2f}  "
                  f"xgboost {r['xgboost']:7.2f}  poly2 {r['poly2']:7.2f}  ({r['wall_s']} s)",
                  file=sys.stderr, flush=True)
    if args.json:
        out = {"tasks": {k: {f: v[f] for f in ("split", "best", "accurate", "gbt", "xgboost", "poly2")}
                         for k, v in results["tasks"].items()}, "moe_loso_mean": results["moe_loso_mean"]}
        print(json.dumps(out, indent=1))
        return
    print(f"space kernel, engine {args.engine}, target transform {args.target_transform}, {args.budget:g} s per "
          f"search, seed {args.seed}; test MAPE %; ratio = formula / better tree (goals: shuffled accurate <= 1.3, "
          "best <= 1.5; ood best <= 1.0); acc/p = accurate / poly2")
    print(f"{'task':<28} {'split':<42} {'best':>7} {'cx':>3} {'accur.':>7} {'cx':>3} {'gbt':>7} {'xgb':>7} "
          f"{'poly2':>7} {'terms':>5} {'best/t':>6} {'acc/t':>6} {'acc/p':>6} {'gens':>6}  best formula")
    for task, r in results["tasks"].items():
        print(f"{task:<28} {r['spec'][:42]:<42} {r['best']:>7.2f} {r['best_cx']:>3} {r['accurate']:>7.2f} "
              f"{r['accurate_cx']:>3} {r['gbt']:>7.2f} {r['xgboost']:>7.2f} {r['poly2']:>7.2f} "
              f"{r.get('poly2_terms', '-'):>5} "
              f"{_ratio(r['best'], r):>6.2f} {_ratio(r['accurate'], r):>6.2f} {r['accurate'] / r['poly2']:>6.2f} "
              f"{str(r['generations']):>6}  {r['equation'][:100]}")
    if "moe_loso" in results:
        m = results["moe_loso"]["mean"]
        print(f"moe leave-one-shape-out over {len(results['moe_loso']['folds'])} folds: mean test MAPE best "
              f"{m['best']:.2f}  accurate {m['accurate']:.2f}  gbt {m['gbt']:.2f}  xgboost {m['xgboost']:.2f}  "
              f"poly2 {m['poly2']:.2f} "
              "(goal best <= 12)")
    print(f"total wall {time.time() - t0:.0f} s; runs in {tmp}")


if __name__ == "__main__":
    main()
