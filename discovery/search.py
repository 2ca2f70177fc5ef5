"""``python -m discovery.search --space NAME``: search step-time formulas and write a run directory.

Loads the data (the bundled synthetic demo data when ``--data`` is not given),
builds the space's problem on the split's training part, runs the engine(s)
within the budget, rescores every candidate with the shared harness on the
validation and test parts, and writes ``results/<run-id>/`` (see
:mod:`discovery.rundir`). ``--resume`` continues a killed run from its checkpoint.
This module is the command line only: :func:`discovery.pipeline.run_search` does the work.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from discovery.config import DEFAULTS, SearchConfig
from discovery.pipeline import run_search
from features.cli import run


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (defaults from :data:`discovery.config.DEFAULTS`)."""
    from discovery.engines import ENGINES
    from features.describe import add_data_arguments
    from search_spaces.spaces import spaces

    d = DEFAULTS
    p = argparse.ArgumentParser(prog="python -m discovery.search", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help=f"search space: {', '.join(spaces())}")
    add_data_arguments(p)
    p.add_argument("--split", default=None, help="temporal, lomo, lowo or logo:COLUMN (default: the space's)")
    p.add_argument("--fold", default=None, help="for leave-one-out splits: the held-out group to search on "
                                                "(default: the first fold)")
    p.add_argument("--engine", default="deap", help=f"engine(s), comma-separated: {', '.join(ENGINES)}")
    p.add_argument("--budget", type=float, default=d.budget_s,
                   help=f"wall-clock budget in seconds (default {d.budget_s:g}), spent in full unless --generations "
                        "or --early-stop ends the search first; a run the budget stops is not reproducible: for "
                        "that, bound it with --generations")
    p.add_argument("--generations", type=int, default=d.generations,
                   help="maximum generations (default: no limit, the budget ends the search)")
    p.add_argument("--population", type=int, default=d.population,
                   help=f"population per island (default {d.population})")
    p.add_argument("--islands", type=int, default=d.islands, help=f"islands (default {d.islands})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--early-stop", type=int, default=d.early_stop, metavar="N",
                   help="DEAP: stop after N generations without a better training loss (default 0: never; "
                        "the search uses the whole budget or --generations)")
    p.add_argument("--target-transform", default="none", metavar="KIND",
                   help="what the trees model: none (the latency), efficiency[:FEATURE] (the utilisation "
                        "roofline time / latency; FEATURE default rl_bound, else op_bound) or log; formulas and "
                        "scores are always of the latency")
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


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The :class:`SearchConfig` of parsed arguments."""
    return SearchConfig.create(
        args.space, data=args.data, target=args.target, colmap=args.colmap, max_gap=args.max_gap,
        skip_bad_lines=args.skip_bad_lines, experiments=args.experiments, split=args.split, fold=args.fold,
        engine=args.engine, budget_s=args.budget, generations=args.generations, population=args.population,
        islands=args.islands, seed=args.seed, early_stop=args.early_stop, workers=args.workers,
        scheduler=args.scheduler, processes=args.processes, run_dir=args.run_dir, resume=args.resume,
        import_pysr=args.import_pysr, cluster=args.cluster, target_transform=args.target_transform)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    run_search(config_from_args(args), echo=print, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    run(main, prog="discovery.search")
