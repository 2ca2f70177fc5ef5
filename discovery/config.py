"""What a search is asked to do: :class:`SearchConfig`, the one place for the search defaults.

``python -m discovery.search``, :func:`discovery.run_search` and
:class:`discovery.StepTimeRegressor` all describe a search with a
:class:`SearchConfig`; the engines' own settings classes take their shared
defaults (population, islands, generations, budget, seed, early stop) from
:data:`DEFAULTS`. :meth:`SearchConfig.check` validates every argument without
touching the data or the disk, so a bad argument is a one-line error before
anything is loaded or created.

Stopping: a search uses its whole wall-clock ``budget_s`` unless the user
bounds it: ``generations`` (None = unlimited) or ``early_stop`` (stop after that
many generations without a better training loss; 0 = never, the default).

Reproducibility: the same seed and data give a byte-identical
``hall_of_fame.csv`` when the search stops by ``generations`` (or early
stopping), serial or parallel. A search stopped by its wall-clock ``budget_s``
is not reproducible: how many generations fit depends on the machine's load.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from features.errors import StepMLError
from features.targets import DEFAULT_MAX_GAP

__all__ = ["DEFAULTS", "CLUSTER_MANAGERS", "UNLIMITED_GENERATIONS", "SearchConfig", "SearchDefaults",
           "check_scheduler_address"]

#: ``cluster_manager`` values PySR accepts.
CLUSTER_MANAGERS = ("slurm", "pbs", "lsf", "sge", "qrsh", "scyld", "htc")
_SCHEDULER = re.compile(r"(tcp|tls|ws|wss|ucx)://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


@dataclass(frozen=True)
class SearchDefaults:
    """The budget and size of a search, shared by the CLI, the Python API and every engine.

    ``generations`` None is unlimited and ``early_stop`` 0 never stops early: by
    default a search spends its whole ``budget_s``.
    """

    population: int = 200
    islands: int = 2
    generations: int | None = None
    budget_s: float = 60.0
    seed: int = 0
    early_stop: int = 0


#: Generations handed to an engine that needs a number when the search has no limit (the budget stops it).
UNLIMITED_GENERATIONS = 1_000_000_000

#: The defaults (read by :class:`SearchConfig`, ``DeapSettings``, ``OperonSettings``, ``PySRSettings``).
DEFAULTS = SearchDefaults()


def check_scheduler_address(address: str) -> str:
    """``address`` if it looks like a dask scheduler address (``tcp://HOST:PORT``), else a one-line error."""
    if not isinstance(address, str) or not _SCHEDULER.fullmatch(address.strip()):
        raise StepMLError(f"--scheduler {address!r}: expected a dask scheduler address like tcp://HOST:8786")
    port = int(address.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise StepMLError(f"--scheduler {address!r}: port {port} is not in 1..65535")
    return address.strip()


@dataclass(frozen=True)
class SearchConfig:
    """One search (the options of ``python -m discovery.search``; see the README).

    Attributes
    ----------
    space : str
        Search space name (``dense``, ``moe``, ``roofline``, ``linear``).
    data, target, colmap, max_gap, skip_bad_lines, experiments
        What to load (None data: the bundled synthetic demo data; None target: the space's default).
    split, fold : str or None
        The split spec (None: the space's) and, for leave-one-out splits, the fold searched.
    engines : tuple of str
        Engines run one after the other on a share of the budget.
    budget_s, generations, population, islands, seed, early_stop
        See :class:`SearchDefaults` (``generations`` None: unlimited).
    target_transform : str
        What the trees model: ``none``, ``efficiency[:FEATURE]`` or ``log``
        (:mod:`search_spaces.transforms`); formulas and scores are always of the latency.
    workers, scheduler, processes
        Parallel evaluation: a dask LocalCluster, a running dask scheduler, or local processes.
    run_dir : str or None
        The run directory (None: ``results/<run-id>/``); ``resume`` continues the run in it.
    import_pysr : str or None
        Instead of searching, import and rescore a PySR hall of fame.
    cluster : str or None
        PySR only: ``cluster_manager``.
    """

    space: str
    data: str | None = None
    target: str | None = None
    colmap: str | None = None
    max_gap: int = DEFAULT_MAX_GAP
    skip_bad_lines: bool = False
    experiments: tuple[str, ...] | None = None
    split: str | None = None
    fold: str | None = None
    engines: tuple[str, ...] = ("deap",)
    budget_s: float = DEFAULTS.budget_s
    generations: int | None = DEFAULTS.generations
    population: int = DEFAULTS.population
    islands: int = DEFAULTS.islands
    seed: int = DEFAULTS.seed
    early_stop: int = DEFAULTS.early_stop
    workers: int | None = None
    scheduler: str | None = None
    processes: int | None = None
    run_dir: str | None = None
    resume: bool = False
    import_pysr: str | None = None
    cluster: str | None = None
    target_transform: str = "none"
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    @classmethod
    def create(cls, space: str, **options: Any) -> "SearchConfig":
        """A config from keyword options (``engine="deap,operon"`` and ``experiments="a,b"`` accepted as text)."""
        known = {f.name for f in fields(cls)} | {"engine"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise StepMLError(f"unknown search option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        if "engine" in options:
            options["engines"] = options.pop("engine")
        if isinstance(options.get("engines"), str):
            from discovery.engines import parse_engines

            options["engines"] = tuple(parse_engines(options["engines"]))
        if isinstance(options.get("experiments"), str):
            options["experiments"] = tuple(e.strip() for e in options["experiments"].split(",") if e.strip()) or None
        for key in ("data", "run_dir", "import_pysr", "colmap"):
            if isinstance(options.get(key), Path):
                options[key] = str(options[key])
        return cls(space=space, **options)

    def with_(self, **changes: Any) -> "SearchConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)

    # -- checks (no data, no disk) ---------------------------------------------------------------
    def check(self) -> "SearchConfig":
        """Validate every argument; return self. One-line :class:`StepMLError` on the first problem."""
        from discovery.engines import ENGINES, check_engines
        from search_spaces.spaces import get_space

        get_space(self.space)
        if not self.engines:
            raise StepMLError(f"no engine given; valid: {', '.join(ENGINES)}")
        for name in self.engines:
            ENGINES.get(name)
        self._check_numbers()
        self._check_parallel()
        if self.resume and not self.run_dir:
            raise StepMLError("--resume needs --run-dir DIR (the run to continue)")
        if self.import_pysr is not None and self.resume:
            raise StepMLError("--import-pysr writes a new run; it cannot --resume one")
        if self.cluster is not None:
            if self.import_pysr is not None or tuple(self.engines) != ("pysr",):
                raise StepMLError("--cluster applies to a search with --engine pysr only")
            if self.cluster not in CLUSTER_MANAGERS:
                raise StepMLError(f"unknown --cluster '{self.cluster}'; valid: {', '.join(CLUSTER_MANAGERS)}")
        from search_spaces.transforms import parse_transform

        transform = parse_transform(self.target_transform)
        if transform.kind != "none" and self.import_pysr is not None:
            raise StepMLError("--target-transform applies to a search; an imported PySR hall of fame is read as "
                              "latency formulas")
        if transform.kind != "none" and "pysr" in self.engines:
            raise StepMLError("--target-transform is not supported by the pysr engine (use deap or operon)")
        if self.import_pysr is None:
            check_engines(self.engines)  # e.g. PySR without Julia
        return self

    def _check_numbers(self) -> None:
        if not (isinstance(self.budget_s, (int, float)) and math.isfinite(self.budget_s) and self.budget_s > 0):
            raise StepMLError(f"--budget must be a positive number of seconds, got {self.budget_s!r}")
        for name, least in (("generations", 1), ("population", 2), ("islands", 1)):
            value = getattr(self, name)
            if name == "generations" and value is None:
                continue  # unlimited
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                what = "positive" if least == 1 else f">= {least}"
                raise StepMLError(f"--{name} must be {what}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 32:
            raise StepMLError(f"--seed must be an integer in 0..{2 ** 32 - 1}, got {self.seed!r}")
        if isinstance(self.early_stop, bool) or not isinstance(self.early_stop, int) or self.early_stop < 0:
            raise StepMLError("--early-stop must be >= 0")
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, int) or self.max_gap < 1:
            raise StepMLError(f"--max-gap must be >= 1, got {self.max_gap!r}")

    def _check_parallel(self) -> None:
        chosen = [k for k in ("workers", "scheduler", "processes") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise StepMLError(f"choose one of --workers, --scheduler, --processes (got {', '.join(chosen)})")
        for key in ("workers", "processes"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise StepMLError(f"--{key} must be >= 1")
        if self.scheduler is not None:
            check_scheduler_address(self.scheduler)

    # -- what the engines get ---------------------------------------------------------------------
    def engine_settings(self, name: str, run_dir: Path | None = None) -> dict[str, Any]:
        """The settings mapping of one engine (its share of the budget, the shared sizes, its extras)."""
        generations = self.generations
        if generations is None and name != "deap":
            generations = UNLIMITED_GENERATIONS
        settings: dict[str, Any] = {"budget_s": self.budget_s / len(self.engines), "generations": generations,
                                    "population": self.population, "islands": self.islands, "seed": self.seed}
        if name == "deap":
            settings["early_stop_generations"] = self.early_stop
        if name == "pysr":
            settings.update({"output_directory": str(run_dir / "pysr") if run_dir is not None else None,
                             "cluster_manager": self.cluster})
        settings.update(self.extra.get(name, {}))
        return settings

    def to_json(self) -> dict[str, Any]:
        """The settings recorded in ``run.json``."""
        from search_spaces.transforms import parse_transform

        return {"budget_s": self.budget_s, "generations": self.generations, "population": self.population,
                "islands": self.islands, "early_stop": self.early_stop,
                "target_transform": parse_transform(self.target_transform).spec}
