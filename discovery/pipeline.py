"""A search, end to end: :func:`run_search` → :class:`SearchResult` (the CLI ``python -m discovery.search`` wraps it).

The phases, in order, each a function here:

1. :meth:`SearchConfig.check <discovery.config.SearchConfig.check>` and
   :func:`plan_run_dir`: every argument, the engines' settings and the run
   folder's location are checked before anything is loaded or created;
2. :func:`load_data`: the dataset (:mod:`features.dataset`) and its split
   (:mod:`features.splits`); the features are computed by the catalogue
   (:mod:`features.catalog`) when :func:`~discovery.candidate.build_problem`
   assembles the engines' :class:`~discovery.candidate.Problem`;
3. :func:`search_problem`: the engines (:mod:`discovery.engines`), which score
   with the shared objective (:mod:`search_spaces.objective`); features constant
   over the training rows are left out first (noted in ``run.json``);
4. :func:`~discovery.candidate.refine_candidates` refits every constant of every
   engine's candidates (bounded Levenberg–Marquardt on the relative error), then
   :func:`rescore`: every candidate through the shared harness
   (:mod:`evaluation.scorer`) on the validation and test parts, the validation
   front (:func:`search_spaces.objective.pareto_mask`) and PySR's score;
5. the run directory (:mod:`discovery.rundir`): ``hall_of_fame.csv``,
   ``run.json``, the split indices, the checkpoint.

A run folder this function creates is removed again if an error stops the
run before it holds a checkpoint, so a failed run leaves nothing half-made.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from discovery.config import SearchConfig
from discovery.rundir import (LOSS_UNIT, RESULTS_DIR, HofRow, holds_run, load_checkpoint, package_versions,
                              read_run_json, save_checkpoint, write_hof, write_run_json)
from features.errors import StepMLError

if TYPE_CHECKING:
    import pandas as pd

    from discovery.candidate import Candidate, Problem
    from discovery.engines import Mapper, SearchEngine
    from features.dataset import Dataset
    from features.splits import Split
    from search_spaces.spaces import SearchSpace

__all__ = ["ProgressBar", "SearchResult", "load_data", "plan_run_dir", "rescore", "run_search", "search_problem",
           "summary_table"]

Echo = Callable[[str], None]


def _quiet(_text: str) -> None:
    pass


@dataclass(frozen=True)
class SearchResult:
    """A finished search: where it was written and what it found.

    Attributes
    ----------
    run_dir : Path
    rows : tuple of HofRow
        The hall of fame, as written to ``hall_of_fame.csv`` (errors in percent).
    info : mapping
        ``run.json``.
    """

    run_dir: Path
    rows: tuple[HofRow, ...]
    info: Mapping[str, Any]

    @property
    def front(self) -> tuple[HofRow, ...]:
        """The rows on the validation front, by complexity."""
        return tuple(r for r in self.rows if r.front)

    @property
    def equations(self) -> "pd.DataFrame":
        """The hall of fame as a DataFrame (the columns of ``hall_of_fame.csv``)."""
        import pandas as pd

        from discovery.rundir import HOF_COLUMNS

        return pd.DataFrame([[getattr(r, c.lower()) for c in HOF_COLUMNS] for r in self.rows], columns=HOF_COLUMNS)

    def pick(self, kind: str = "best") -> HofRow:
        """A front member: ``best``, ``accuracy``, ``knee``, ``score`` (see :func:`discovery.pareto.select`)."""
        from discovery.pareto import select

        front = self.front
        return front[select(kind, [r.complexity for r in front], [r.val_mape for r in front])]

    @property
    def reproducible(self) -> bool:
        """True when no engine was stopped by the wall-clock budget (then the same seed gives the same rows)."""
        return not any(s.get("stopped_by") == "budget" for s in self.info.get("engine_stats", {}).values())

    def reproduce_hint(self) -> str:
        """One line: whether the same seed reproduces this run, and how to make a run that does."""
        generations = {k: v for k, v in self.info.get("generations", {}).items() if v is not None}
        if self.reproducible:
            return (f"reproducible: stopped by generations or early stopping; the same --seed {self.info.get('seed')} "
                    "and data give the same hall_of_fame.csv")
        done = ", ".join(f"{k} {v}" for k, v in generations.items()) or "unknown"
        most = max(generations.values(), default=0)
        return (f"not reproducible: the wall-clock budget stopped the search (generations: {done}); for a run the "
                f"same --seed reproduces byte for byte, give --generations {most or 'N'} and a --budget that "
                "never runs out")


# =============================================================================== phases


def _run_id(space: str, engines: Sequence[str], seed: int) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{space}-{'+'.join(engines)}-s{seed}"


def _check_writable(path: Path) -> None:
    """One line if ``path`` cannot become a folder: a file in the way or an ancestor we cannot write."""
    if path.exists() and not path.is_dir():
        raise StepMLError(f"--run-dir {path}: exists and is not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StepMLError(f"--run-dir {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StepMLError(f"--run-dir {path}: cannot write in {ancestor} (permission denied)")


def plan_run_dir(config: SearchConfig) -> Path:
    """Where the run goes (nothing is created): the resumed run, a new ``--run-dir``, or ``results/<run-id>/``."""
    if config.resume:
        path = Path(str(config.run_dir))
        if load_checkpoint(path) is None:
            raise StepMLError(f"{path}: no checkpoint to resume from")
        _check_writable(path)
        return path
    if config.run_dir:
        path = Path(config.run_dir)
        _check_writable(path)
        if holds_run(path):
            raise StepMLError(f"{path} already holds a run; use --resume to continue it or choose another --run-dir")
        return path
    engines = ["pysr"] if config.import_pysr else list(config.engines)
    base = RESULTS_DIR / _run_id(config.space, engines, config.seed)
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    _check_writable(path)
    return path


def _check_split_spec(spec: str, fold: str | None) -> None:
    """An unknown split spec fails here, before the data loads (what depends on the data fails later)."""
    import pandas as pd

    from features.splits import make_splits

    try:
        splits = make_splits(pd.DataFrame(), spec)
    except StepMLError as exc:
        if str(exc).startswith("unknown split"):
            raise
        return
    if fold is not None and len(splits) == 1 and not splits[0].fold:
        raise StepMLError(f"--fold applies to leave-one-out splits (lomo, lowo, logo:COLUMN); split '{spec}' has "
                          "no folds")


def dataset_kind_is_steps(data: str | None) -> bool:
    """False for tables that a shipped column map loads (their target is the mapped one)."""
    from features.dataset import shipped_colmap_for

    return data is None or shipped_colmap_for(Path(data)) is None


def load_data(config: SearchConfig, space: "SearchSpace",
              echo: Echo = _quiet) -> tuple["Dataset", list["Split"], "Split"]:
    """The dataset, all splits of the spec, and the split searched (``fold``)."""
    from features.dataset import load_dataset
    from features.splits import make_splits

    data = config.data if config.data is not None else space.default_data
    if data is None:
        echo("data: bundled SYNTHETIC demo data (give --data PATH for real traces)")
    steps = config.colmap is None and dataset_kind_is_steps(data)  # a column map gives the table's own target
    target = config.target or (space.default_target if steps else None)
    dataset = load_dataset(data, target, max_gap=config.max_gap, colmap=config.colmap,
                           skip_bad_lines=config.skip_bad_lines,
                           experiments=list(config.experiments) if config.experiments else None)
    splits = make_splits(dataset.frame, config.split or space.default_split, dataset.content_hash())
    split = splits[0]
    if config.fold is not None:
        chosen = [s for s in splits if s.fold == config.fold]
        if not chosen:
            raise StepMLError(f"unknown fold '{config.fold}'; valid: {', '.join(s.fold for s in splits)}")
        split = chosen[0]
    return dataset, splits, split


def _run_info(config: SearchConfig, dataset: "Dataset", split: "Split", engines: list[str]) -> dict[str, Any]:
    return {
        "space": config.space, "engines": engines, "data": dataset.label, "data_hash": dataset.content_hash(),
        "synthetic": dataset.synthetic, "target": dataset.target, "split": split.spec, "fold": split.fold,
        "seed": config.seed, "max_gap": config.max_gap, "colmap": config.colmap,
        "data_path": str(Path(config.data).resolve()) if config.data else None,
        "experiments": list(config.experiments) if config.experiments else None,
        "settings": config.to_json(),
        "rows": {"train": int(len(split.train)), "val": int(len(split.val)), "test": int(len(split.test))},
        "packages": package_versions(), LOSS_UNIT[0]: LOSS_UNIT[1],
        "data_has_prefill": _has_prefill(dataset),
    }


def _has_prefill(dataset: "Dataset") -> bool | None:
    """Whether any step of the data processes prompt tokens (None when the data has no such column)."""
    frame = dataset.frame
    if "batch.prefill_tokens" not in frame.columns:
        return None
    return bool((frame["batch.prefill_tokens"].to_numpy(dtype=float) > 0).any())


def _check_resume(run_dir: Path, info: Mapping[str, Any]) -> None:
    old = read_run_json(run_dir) if (run_dir / "run.json").exists() else {}
    for key in ("space", "data_hash", "seed", "split", "engines"):
        if key in old and old[key] != info[key]:
            raise StepMLError(f"--resume: {key} differs from the run in {run_dir} ({old[key]!r} vs {info[key]!r})")


@contextmanager
def _mapper(config: SearchConfig) -> Iterator["Mapper | None"]:
    """The evaluation mapper (connected before the data loads, so a bad cluster fails early)."""
    from discovery.engines.parallel import mapper_for

    with mapper_for(config.workers, config.scheduler, config.processes) as mapper:
        yield mapper


@contextmanager
def _run_folder(run_dir: Path) -> Iterator[Path]:
    """Create the run folder; remove it again if an error leaves it without a run (a checkpoint or a result)."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StepMLError(f"--run-dir {run_dir}: cannot create it ({exc.strerror or exc})") from None
    try:
        yield run_dir
    except BaseException:
        if created and not holds_run(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def search_problem(problem: "Problem", engines: Mapping[str, "SearchEngine"], mapper: "Mapper | None" = None,
                   progress: Callable[[str], Any] | None = None,
                   checkpoint: Callable[[dict[str, Any]], None] | None = None,
                   resume: Mapping[str, Any] | None = None) -> tuple[list["Candidate"], dict[str, Any]]:
    """Run the engines one after the other on ``problem``; every engine's candidates and stats.

    ``progress(name)`` gives a context manager yielding the engine's progress
    callback (or None); ``checkpoint(states)`` receives every engine's latest
    state after each generation; ``resume`` holds those states to continue from.
    """
    candidates: list["Candidate"] = []
    stats: dict[str, Any] = {}
    saved: dict[str, Any] = dict(resume or {})
    for name, engine in engines.items():
        def save(state: dict[str, Any], _name: str = name) -> None:
            saved[_name] = state
            if checkpoint is not None:
                checkpoint(saved)

        with (progress(name) if progress is not None else nullcontext(None)) as report:
            candidates.extend(engine.search(problem, mapper=mapper, progress=report,
                                            checkpoint=save if checkpoint is not None else None,
                                            resume_state=(resume or {}).get(name)))
        stats[name] = dict(getattr(engine, "stats_", {}))
    return candidates, stats


def rescore(candidates: Sequence["Candidate"], dataset: "Dataset", split: "Split") -> list[HofRow]:
    """Rescore candidates with the shared harness; mark the validation front and PySR's score.

    One row per distinct formula (the lowest training loss wins); every error in percent.
    """
    import sympy

    from discovery.pareto import pysr_score
    from evaluation.predictors import FormulaPredictor
    from evaluation.scorer import score
    from search_spaces.objective import pareto_mask

    unique: dict[str, "Candidate"] = {}
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
    rows = [HofRow(int(c.complexity), float(c.loss) * 100.0, sympy.sstr(c.expr, full_prec=False), float(scores[i]),
                   float(val[i]), float(cards[i].overall["test"]["mape"]), float(cards[i].overall["val"]["mspe"]),
                   int(c.n_constants), sympy.srepr(c.expr), c.engine, bool(front[i]), c.provenance)
            for i, c in enumerate(cands)]
    rows.sort(key=lambda r: (r.complexity, r.val_mape if r.val_mape == r.val_mape else np.inf, r.equation))
    return rows


# =============================================================================== the whole search


def run_search(config: SearchConfig | None = None, /, *, echo: Echo = _quiet, progress: bool = False,
               **options: Any) -> SearchResult:
    """Search step-time formulas and write a run directory (what ``python -m discovery.search`` does).

    Parameters
    ----------
    config : SearchConfig, optional
        The search; or give its fields as keyword options
        (``run_search(space="moe", generations=5, engine="deap,operon")``).
    echo : callable
        Receives the lines the CLI prints (data, problem, front, reproducibility); silent by default.
    progress : bool
        Show a progress bar per engine.

    Returns
    -------
    SearchResult
        The run directory, the hall-of-fame rows and ``run.json``.

    Raises
    ------
    StepMLError
        One line for any bad argument or input, raised before anything is created.
    """
    if config is None:
        if "space" not in options:
            raise StepMLError("run_search needs a space (e.g. space='moe')")
        config = SearchConfig.create(**options)
    elif options:
        config = config.with_(**options)
    config = config.check()
    from search_spaces.spaces import get_space

    space = get_space(config.space)
    _check_split_spec(config.split or space.default_split, config.fold)
    run_dir = plan_run_dir(config)
    engine_names = ["pysr"] if config.import_pysr else list(config.engines)
    engines = _make_engines(config, run_dir)
    with _mapper(config) as mapper:
        dataset, splits, split = load_data(config, space, echo)
        imported = _read_import(config, dataset, space)
        info = _run_info(config, dataset, split, engine_names)
        if imported is not None:
            info["imported_from"] = str(imported.source)
        if config.resume:
            _check_resume(run_dir, info)
        with _run_folder(run_dir):
            rows, info = _search_into(run_dir, config, dataset, splits, split, space, engines, imported, info,
                                      mapper, echo, progress)
    result = SearchResult(run_dir, tuple(rows), info)
    echo(summary_table(rows))
    echo(f"run directory: {run_dir}")
    if imported is None:
        echo(result.reproduce_hint())
    return result


def _make_engines(config: SearchConfig, run_dir: Path) -> dict[str, "SearchEngine"]:
    """The engines with their settings (checked now, before the data loads)."""
    from discovery.engines import make_engine

    if config.import_pysr:
        return {}
    return {name: make_engine(name, config.engine_settings(name, run_dir)) for name in config.engines}


def _read_import(config: SearchConfig, dataset: "Dataset", space: "SearchSpace") -> Any:
    if not config.import_pysr:
        return None
    from discovery.pysr_import import problem_features, read_pysr_table

    return read_pysr_table(config.import_pysr, problem_features(dataset, space))


def _search_into(run_dir: Path, config: SearchConfig, dataset: "Dataset", splits: list["Split"], split: "Split",
                 space: "SearchSpace", engines: Mapping[str, "SearchEngine"], imported: Any, info: dict[str, Any],
                 mapper: "Mapper | None", echo: Echo, progress: bool) -> tuple[list[HofRow], dict[str, Any]]:
    """The part of a search that writes: splits, the engines' checkpoints, the hall of fame, ``run.json``."""
    from discovery.candidate import build_problem, refine_candidates
    from features.splits import save_splits

    info = dict(info, split_file=save_splits(splits, run_dir).name)
    problem = build_problem(dataset, split, space, seed=config.seed, transform=config.target_transform)
    info["target_transform"] = problem.transform.spec
    info["dropped_features"] = {name: value for name, value in problem.dropped.items()}
    echo(f"space: {space.name} ({len(problem.features)} features)   target: {dataset.target}"
         f"{'' if problem.transform.kind == 'none' else f' (searched as {problem.transform.spec})'}   "
         f"split: {split.name} (train {len(split.train)}, val {len(split.val)}, test {len(split.test)})   "
         f"engine: {','.join(info['engines'])}   run: {run_dir}")
    if problem.dropped:
        echo("constant over the training rows, left out of the search: "
             + ", ".join(f"{k} = {v:g}" for k, v in problem.dropped.items()))
    started = time.time()
    if imported is not None:
        candidates, stats = imported.candidates(problem), {"pysr": imported.stats()}
    else:
        bar = (lambda name: ProgressBar(name, config.generations, config.budget_s)) if progress else None
        candidates, stats = search_problem(problem, engines, mapper, bar, lambda s: save_checkpoint(run_dir, s),
                                           load_checkpoint(run_dir) if config.resume else None)
    candidates = refine_candidates(candidates, problem)
    rows = rescore(candidates, dataset, split)
    write_hof(run_dir, rows)
    info = dict(info, wall_s=round(time.time() - started, 3), engine_stats=stats,
                generations={k: v.get("generations") for k, v in stats.items()})
    write_run_json(run_dir, info)
    return rows, info


def summary_table(rows: Sequence[HofRow]) -> str:
    """The validation front as a text table (errors in percent)."""
    lines = [f"{'cx':>3} {'train%':>7} {'val%':>7} {'test%':>7} {'score':>6}  formula"]
    for r in rows:
        if r.front:
            lines.append(f"{r.complexity:>3} {r.loss:>7.2f} {r.val_mape:>7.2f} {r.test_mape:>7.2f} "
                         f"{r.score:>6.3f}  {r.equation}")
    return "\n".join(lines)


class ProgressBar:
    """A tqdm bar over one engine's generations (a context manager yielding the progress callback)."""

    def __init__(self, engine: str, total: int | None, budget_s: float) -> None:
        self.engine, self.total, self.budget = engine, total, budget_s
        self.bar: Any = None

    def __enter__(self) -> Callable[..., None]:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.engine, unit="gen", leave=False)
        return self.update

    def update(self, generation: int, best_loss: float, front_size: int, elapsed_s: float,
               best_val_loss: float | None = None) -> None:
        self.bar.n = generation if self.total is None else min(generation, self.total)
        shown = f"best val MAPE {best_val_loss * 100:.2f}%" if best_val_loss is not None else \
            f"best train MAPE {best_loss * 100:.2f}%"
        self.bar.set_postfix_str(f"{shown}  front {front_size}  left {max(0.0, self.budget - elapsed_s):.0f}s",
                                 refresh=False)
        self.bar.refresh()

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
