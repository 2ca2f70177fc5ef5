"""``python -m discovery.search --space NAME``: search step-time formulas and write a run directory.

Loads the data (the bundled synthetic demo data when ``--data`` is not given),
builds the space's problem on the split's training part, runs the engine(s)
within the budget, rescores every candidate with the shared harness on the
validation and test parts, and writes ``results/<run-id>/`` (see
:mod:`discovery.rundir`). ``--resume`` continues a killed run from its checkpoint.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from discovery.candidate import Candidate, build_problem
from discovery.engines import ENGINES, make_engine, parse_engines
from discovery.pareto import pysr_score
from discovery.rundir import (LOSS_UNIT, RESULTS_DIR, HofRow, holds_run, load_checkpoint, package_versions, read_run_json,
                              save_checkpoint, write_hof, write_run_json)
from features.cli import run
from features.dataset import Dataset
from features.errors import StepMLError
from features.splits import Split, make_splits, save_splits
from search_spaces.objective import pareto_mask
from search_spaces.spaces import SearchSpace, get_space, spaces


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from features.describe import add_data_arguments

    p = argparse.ArgumentParser(prog="python -m discovery.search", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help=f"search space: {', '.join(spaces())}")
    add_data_arguments(p)
    p.add_argument("--split", default=None, help="temporal, lomo, lowo or logo:COLUMN (default: the space's)")
    p.add_argument("--fold", default=None, help="for leave-one-out splits: the held-out group to search on "
                                                "(default: the first fold)")
    p.add_argument("--engine", default="deap", help=f"engine(s), comma-separated: {', '.join(ENGINES)}")
    p.add_argument("--budget", type=float, default=60.0, help="wall-clock budget in seconds (default 60)")
    p.add_argument("--generations", type=int, default=40, help="maximum generations (default 40)")
    p.add_argument("--population", type=int, default=200, help="population per island (default 200)")
    p.add_argument("--islands", type=int, default=2, help="islands (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--early-stop", type=int, default=10, metavar="N",
                   help="DEAP: stop after N generations without a better training loss (default 10; 0 = use the "
                        "whole budget or --generations)")
    par = p.add_mutually_exclusive_group()
    par.add_argument("--workers", type=int, default=None, help="start a dask LocalCluster with N workers")
    par.add_argument("--scheduler", default=None, help="join an existing dask cluster at tcp://HOST:PORT")
    par.add_argument("--processes", type=int, default=None, help="evaluate in N local processes")
    p.add_argument("--run-dir", default=None, help="run directory (default: results/<run-id>/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--import-pysr", default=None, metavar="PATH",
                   help="instead of searching, import a PySR result (run directory or hall_of_fame.csv) and "
                        "rescore it into a run directory (engine pysr; --engine and the search options are ignored)")
    p.add_argument("--cluster", default=None, metavar="MANAGER",
                   help="PySR only: run PySR's workers through a job queue (slurm, pbs, lsf, sge, qrsh, scyld, htc)")
    return p


def _mapper(args: argparse.Namespace):
    from contextlib import nullcontext

    from discovery.engines import parallel

    if args.workers is not None or args.scheduler is not None:
        if args.workers is not None and args.workers < 1:
            raise StepMLError("--workers must be >= 1")
        return parallel.dask_map(workers=args.workers, scheduler=args.scheduler)
    if args.processes is not None:
        if args.processes < 1:
            raise StepMLError("--processes must be >= 1")
        return parallel.process_map(args.processes)
    return nullcontext(None)


def rescore(candidates: Sequence[Candidate], dataset: Dataset, split: Split) -> list[HofRow]:
    """Rescore candidates with the shared harness; mark the validation front and PySR's score.

    Rows carry every error in percent (the candidates' training losses are fractions).
    """
    from evaluation.predictors import FormulaPredictor
    from evaluation.scorer import score

    unique: dict[str, Candidate] = {}
    for c in candidates:
        if c.key not in unique or c.loss < unique[c.key].loss:
            unique[c.key] = c
    cands = list(unique.values())
    features = tuple(dataset.feature_names(("simulator", "trace")))
    cards = [score(FormulaPredictor(c.expr, features, c.engine), dataset, split) for c in cands]
    val = np.array([card.overall["val"]["mape"] for card in cards], dtype=float)
    comp = np.array([c.complexity for c in cands], dtype=float)
    front = pareto_mask(comp, val)
    scores = np.full(len(cands), np.nan)
    idx = np.flatnonzero(front)
    scores[idx] = pysr_score(comp[idx], val[idx])
    rows = [HofRow(int(c.complexity), float(c.loss) * 100.0, _equation(c.expr), float(scores[i]), float(val[i]),
                   float(cards[i].overall["test"]["mape"]), float(cards[i].overall["val"]["mspe"]),
                   int(c.n_constants), _srepr(c.expr), c.engine, bool(front[i]), c.provenance)
            for i, c in enumerate(cands)]
    rows.sort(key=lambda r: (r.complexity, r.val_mape if r.val_mape == r.val_mape else np.inf, r.equation))
    return rows


def _equation(expr: Any) -> str:
    import sympy

    return sympy.sstr(expr, full_prec=False)


def _srepr(expr: Any) -> str:
    import sympy

    return sympy.srepr(expr)


def _run_id(space: str, engines: list[str], seed: int) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{space}-{'+'.join(engines)}-s{seed}"


def _resolve_run_dir(args: argparse.Namespace, space: str, engines: list[str]) -> Path:
    if args.resume:
        if not args.run_dir:
            raise StepMLError("--resume needs --run-dir DIR (the run to continue)")
        path = Path(args.run_dir)
        if load_checkpoint(path) is None:
            raise StepMLError(f"{path}: no checkpoint to resume from")
        return path
    if args.run_dir:
        path = Path(args.run_dir)
        if holds_run(path):
            raise StepMLError(f"{path} already holds a run; use --resume to continue it or choose another --run-dir")
        return path
    base = RESULTS_DIR / _run_id(space, engines, args.seed)
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


def _check_resume(run_dir: Path, info: dict[str, Any]) -> None:
    old = read_run_json(run_dir) if (run_dir / "run.json").exists() else {}
    for key in ("space", "data_hash", "seed", "split", "engines"):
        if key in old and old[key] != info[key]:
            raise StepMLError(f"--resume: {key} differs from the run in {run_dir} ({old[key]!r} vs {info[key]!r})")


def search(args: argparse.Namespace, echo: Callable[[str], None] = print) -> Path:
    """Run the search described by parsed arguments; return the run directory."""
    from features.dataset import load_dataset

    space: SearchSpace = get_space(args.space)
    import_pysr = getattr(args, "import_pysr", None)
    cluster = getattr(args, "cluster", None)
    engines = ["pysr"] if import_pysr else parse_engines(args.engine)
    if cluster is not None:
        from discovery.engines.pysr_engine import CLUSTER_MANAGERS

        if import_pysr or engines != ["pysr"]:
            raise StepMLError("--cluster applies to a search with --engine pysr only")
        if cluster not in CLUSTER_MANAGERS:
            raise StepMLError(f"unknown --cluster '{cluster}'; valid: {', '.join(CLUSTER_MANAGERS)}")
    if not import_pysr:
        from discovery.engines import check_engines

        check_engines(engines)  # e.g. PySR without Julia: one line, before anything is written
    for n in ("budget", "generations", "population", "islands"):
        if getattr(args, n) <= 0:
            raise StepMLError(f"--{n} must be positive")
    if args.early_stop < 0:
        raise StepMLError("--early-stop must be >= 0")
    data = args.data if args.data is not None else space.default_data
    if data is None:
        echo("data: bundled SYNTHETIC demo data (give --data PATH for real traces)")
    from features.describe import experiments_arg

    dataset = load_dataset(data, args.target or (space.default_target if dataset_kind_is_steps(data) else None),
                           max_gap=args.max_gap, colmap=args.colmap, skip_bad_lines=args.skip_bad_lines,
                           experiments=experiments_arg(args))
    spec = args.split or space.default_split
    data_hash = dataset.content_hash()
    splits = make_splits(dataset.frame, spec, data_hash)
    split = splits[0]
    if args.fold is not None:
        chosen = [s for s in splits if s.fold == args.fold]
        if not chosen:
            raise StepMLError(f"unknown fold '{args.fold}'; valid: {', '.join(s.fold for s in splits)}")
        split = chosen[0]
    imported = None
    if import_pysr:
        from discovery.pysr_import import problem_features, read_pysr_table

        imported = read_pysr_table(import_pysr, problem_features(dataset, space))
    run_dir = _resolve_run_dir(args, space.name, engines)
    info: dict[str, Any] = {
        "space": space.name, "engines": engines, "data": dataset.label, "data_hash": data_hash,
        "synthetic": dataset.synthetic, "target": dataset.target, "split": spec, "fold": split.fold,
        "seed": args.seed, "max_gap": args.max_gap, "colmap": args.colmap,
        "data_path": str(Path(args.data).resolve()) if args.data else None,
        "experiments": experiments_arg(args),
        "settings": {"budget_s": args.budget, "generations": args.generations, "population": args.population,
                     "islands": args.islands, "early_stop": args.early_stop},
        "rows": {"train": int(len(split.train)), "val": int(len(split.val)), "test": int(len(split.test))},
        "packages": package_versions(), LOSS_UNIT[0]: LOSS_UNIT[1],
    }
    if imported is not None:
        info["imported_from"] = str(imported.source)
    if args.resume:
        _check_resume(run_dir, info)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_splits(splits, run_dir)
    problem = build_problem(dataset, split, space, seed=args.seed)
    echo(f"space: {space.name} ({len(problem.features)} features)   target: {dataset.target}   "
         f"split: {split.name} (train {len(split.train)}, val {len(split.val)}, test {len(split.test)})   "
         f"engine: {','.join(engines)}   run: {run_dir}")
    resume = load_checkpoint(run_dir) if args.resume else None
    started = time.time()
    candidates: list[Candidate] = []
    stats: dict[str, Any] = {}
    per_engine_budget = args.budget / len(engines)
    saved: dict[str, Any] = dict(resume or {})  # every engine's latest state, in one checkpoint
    if imported is not None:
        candidates = imported.candidates(problem)
        stats["pysr"] = imported.stats()
    with _mapper(args) as mapper:
        for name in ([] if imported is not None else engines):
            settings = {"budget_s": per_engine_budget, "generations": args.generations,
                        "population": args.population, "islands": args.islands, "seed": args.seed}
            if name == "deap":
                settings["early_stop_generations"] = args.early_stop
            if name == "pysr":
                settings.update({"output_directory": str(run_dir / "pysr"), "cluster_manager": cluster})
            engine = make_engine(name, settings)
            state = resume.get(name) if resume else None

            def checkpoint(st: dict[str, Any], _name: str = name) -> None:
                saved[_name] = st
                save_checkpoint(run_dir, saved)

            with _progress(args, name, args.generations) as progress:
                found = engine.search(problem, mapper=mapper, progress=progress, checkpoint=checkpoint,
                                      resume_state=state)
            candidates.extend(found)
            stats[name] = dict(getattr(engine, "stats_", {}))
    rows = rescore(candidates, dataset, split)
    write_hof(run_dir, rows)
    info.update({"wall_s": round(time.time() - started, 3), "engine_stats": stats,
                 "generations": {k: v.get("generations") for k, v in stats.items()}})
    write_run_json(run_dir, info)
    echo(summary_table(rows))
    echo(f"run directory: {run_dir}")
    return run_dir


def dataset_kind_is_steps(data: str | None) -> bool:
    """False for tables that a shipped column map loads (their target is the mapped one)."""
    from features.dataset import shipped_colmap_for

    return data is None or shipped_colmap_for(Path(data)) is None


class _progress:
    """A tqdm bar over generations (or nothing with --quiet)."""

    def __init__(self, args: argparse.Namespace, engine: str, total: int) -> None:
        self.quiet, self.engine, self.total, self.budget = args.quiet, engine, total, args.budget
        self.bar = None

    def __enter__(self):
        if self.quiet:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=f"{self.engine}", unit="gen", leave=False)
        return self.update

    def update(self, generation: int, best_loss: float, front_size: int, elapsed_s: float,
               best_val_loss: float | None = None) -> None:
        if self.bar is None:
            return
        self.bar.n = min(generation, self.total)
        shown = f"best val MAPE {best_val_loss * 100:.2f}%" if best_val_loss is not None else \
            f"best train MAPE {best_loss * 100:.2f}%"
        self.bar.set_postfix_str(f"{shown}  front {front_size}  left {max(0.0, self.budget - elapsed_s):.0f}s",
                                 refresh=False)
        self.bar.refresh()

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_table(rows: list[HofRow]) -> str:
    """The validation front as a text table."""
    front = [r for r in rows if r.front]
    lines = [f"{'cx':>3} {'train%':>7} {'val%':>7} {'test%':>7} {'score':>6}  formula"]
    for r in front:
        lines.append(f"{r.complexity:>3} {r.loss:>7.2f} {r.val_mape:>7.2f} {r.test_mape:>7.2f} "
                     f"{r.score:>6.3f}  {r.equation}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    search(args)
    return 0


if __name__ == "__main__":
    run(main, prog="discovery.search")
