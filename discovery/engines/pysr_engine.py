"""PySR (SymbolicRegression.jl through ``juliacall``) over a :class:`~search_spaces.spaces.SearchSpace`.

Translation of the space
------------------------
:func:`pysr_kwargs` is a pure function of (space, features, settings); its
result is splatted into ``PySRRegressor(**kwargs)`` except the keys in
:data:`FIT_KEYS` (``variable_names``), which PySR 2.x takes in ``fit``:

========================  ====================================================
space / settings           PySR
========================  ====================================================
``operators``              ``binary_operators`` / ``unary_operators``: the
                           table's ``pysr`` spellings, Julia definitions
                           included (``sqrt_abs(x) = sqrt(abs(x))``,
                           ``log1p_abs(x) = log1p(abs(x))``), with their
                           ``extra_sympy_mappings``
operator weights           ``complexity_of_operators`` (the table's weights);
                           ``complexity_of_constants`` = ``complexity_of_variables`` = 1
                           (a table leaf)
``max_size``               ``maxsize``; also ``constraints``: the argument of
                           ``sqrt_abs``, ``log1p_abs``, ``square``, ``cube``
                           and the denominator of ``/`` at most ``max_size // 2``
(nesting)                  ``nested_constraints``: no ``sqrt_abs``/``log1p_abs``
                           inside either of them, no ``square``/``cube`` inside
                           either of them
``max_depth``              ``maxdepth = max_depth + 1`` (PySR counts a leaf as depth 1)
``loss``                   ``elementwise_loss``: mean **absolute relative
                           error**, the project's training loss:
                           ``loss(prediction, target) = abs(prediction - target) / abs(target)``;
                           ``relative_weighted`` with weights:
                           ``loss(prediction, target, weight) = weight * abs(prediction - target) / abs(target)``
                           (PySR averages it with the weights)
``seed_formulas``          ``guesses`` (constants ``c0…cN`` as 1.0, PySR
                           optimises them); seeds using an operator outside
                           the space are left out and reported
``monotone_in``            not expressible (reported; the returned
                           candidates' losses include the probe penalty, as DEAP's)
budget_s                   ``timeout_in_seconds`` (the rest of the budget once Julia is
                           checked; Julia's start-up and compilation come on top)
generations                ``niterations``
islands / population       ``populations`` / ``population_size``
seed                       ``random_state``; with ``deterministic`` (default:
                           yes unless ``procs`` or ``cluster_manager`` is
                           given) also ``deterministic=True``,
                           ``parallelism="serial"``
procs                      ``procs`` (``parallelism="multiprocessing"``)
cluster_manager            ``cluster_manager`` (``slurm``, ``pbs``, ``lsf``, ``sge``,
                           ``qrsh``, ``scyld``, ``htc``; ``--cluster`` of the search CLI)
features                   ``variable_names`` = :func:`~search_spaces.operators.symbol_name`
                           of each feature (the feature name itself unless it has dots)
output_directory, run_id   the same (the search CLI uses ``<run dir>/pysr``)
========================  ====================================================

plus ``precision=64``, ``model_selection="best"``, ``verbosity=0``,
``progress=False``.

Julia
-----
``import pysr`` starts Julia through ``juliacall``, which downloads Julia
and the Julia packages when they are missing: that must not happen
silently inside a search (and hangs without internet). :func:`julia_status`
therefore first looks for a Julia executable *without* importing anything
that installs (``PYTHON_JULIACALL_EXE`` / ``PYTHON_JULIAPKG_EXE``, ``julia``
or ``juliaup`` on ``PATH``, the Julia juliapkg installed before), and only
if one exists imports ``pysr`` in a subprocess, offline
(``PYTHON_JULIAPKG_OFFLINE=yes``), with a timeout. If anything is missing
the engine raises a one-line :class:`StepMLError` saying what and how to
install it; the search CLI checks this before it creates the run directory.

Candidates: every equation of PySR's hall of fame (``equations_``) is
parsed with the shared :func:`~search_spaces.operators.parse_formula`;
loss = training mean relative error (+ the probe penalty, as DEAP),
complexity from the table; dominated ones are dropped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from discovery.config import CLUSTER_MANAGERS, DEFAULTS, UNLIMITED_GENERATIONS
from features.errors import StepMLError
from search_spaces.operators import OPERATORS, pysr_options, symbol_name
from search_spaces.objective import pareto_front
from search_spaces.prefix import infix, seed_nodes

if TYPE_CHECKING:
    from discovery.candidate import Candidate, Problem
    from search_spaces.spaces import SearchSpace

__all__ = ["CLUSTER_MANAGERS", "FIT_KEYS", "PySREngine", "PySRSettings", "check_available", "julia_status",
           "pysr_kwargs", "pysr_unsupported"]

#: Keys of :func:`pysr_kwargs` that go to ``PySRRegressor.fit`` rather than the constructor.
FIT_KEYS = ("variable_names",)
RELATIVE_LOSS = "loss(prediction, target) = abs(prediction - target) / abs(target)"
RELATIVE_LOSS_WEIGHTED = "loss(prediction, target, weight) = weight * abs(prediction - target) / abs(target)"
#: Unary operators whose argument size is limited, and the nesting each forbids.
_LIMITED_UNARY = ("sqrt", "log1p", "square", "cube")
_NO_NESTING = {"sqrt": ("sqrt", "log1p"), "log1p": ("sqrt", "log1p"), "square": ("square", "cube"),
               "cube": ("square", "cube")}
INSTALL_HINT = ("install Julia (https://julialang.org/downloads, or juliaup) or let juliacall install it "
                "with internet access (run `python -c \"import pysr\"` once), then retry")
DEFAULT_CHECK_TIMEOUT_S = 300.0


# =============================================================================== settings


@dataclass(frozen=True)
class PySRSettings:
    """Options of :class:`PySREngine` (the first five are the search CLI's)."""

    population: int = DEFAULTS.population
    islands: int = DEFAULTS.islands
    generations: int = UNLIMITED_GENERATIONS if DEFAULTS.generations is None else DEFAULTS.generations
    budget_s: float = DEFAULTS.budget_s
    seed: int = DEFAULTS.seed
    deterministic: bool | None = None
    procs: int | None = None
    cluster_manager: str | None = None
    weighted: bool | None = None
    output_directory: str | None = None
    run_id: str | None = None
    verbosity: int = 0
    julia_check_timeout_s: float = DEFAULT_CHECK_TIMEOUT_S

    def __post_init__(self) -> None:
        problems = []
        if self.population < 1 or self.islands < 1 or self.generations < 1:
            problems.append("population, islands and generations must be >= 1")
        if not self.budget_s > 0:
            problems.append(f"budget_s must be > 0 (got {self.budget_s})")
        if self.procs is not None and self.procs < 1:
            problems.append("procs must be >= 1")
        if self.cluster_manager is not None and self.cluster_manager not in CLUSTER_MANAGERS:
            problems.append(f"unknown cluster manager {self.cluster_manager!r}; valid: {', '.join(CLUSTER_MANAGERS)}")
        if self.deterministic and (self.procs or self.cluster_manager):
            problems.append("deterministic runs are serial: drop procs / cluster_manager or deterministic")
        if problems:
            raise StepMLError("invalid PySR settings: " + "; ".join(problems))

    @property
    def is_deterministic(self) -> bool:
        if self.deterministic is not None:
            return self.deterministic
        return not (self.procs or self.cluster_manager)


def _settings(settings: PySRSettings | Mapping[str, Any] | None) -> PySRSettings:
    if settings is None:
        return PySRSettings()
    if isinstance(settings, PySRSettings):
        return settings
    known = set(PySRSettings.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise StepMLError(f"unknown PySR setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return PySRSettings(**settings)


# =============================================================================== translation

def _guess(text: str, features: Sequence[str], space_ops: Sequence[str]) -> str | None:
    """A seed formula as a PySR guess (constants → 1.0, PySR's operator names), or None if the space's
    operators or the features cannot express it (through the canonical prefix form)."""
    nodes = seed_nodes(text, features, space_ops)
    if nodes is None:
        return None
    return infix(nodes, name=lambda op: OPERATORS[op].pysr_name)


def pysr_kwargs(space: "SearchSpace", features: Sequence[str],
                settings: PySRSettings | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``PySRRegressor`` keyword arguments of a space (pure; see the module docstring's table).

    The keys in :data:`FIT_KEYS` belong to ``fit``; everything else to the constructor.
    """
    s = _settings(settings)
    if not features:
        raise StepMLError(f"space '{space.name}': the problem has no features")
    ops = list(space.operators)
    base = pysr_options(ops)
    names = {name: OPERATORS[name].pysr_name for name in ops}
    half = max(1, int(space.max_size) // 2)
    constraints: dict[str, Any] = {names[n]: half for n in _LIMITED_UNARY if n in names}
    if "div" in names:
        constraints[names["div"]] = (-1, half)
    nested = {names[outer]: {names[inner]: 0 for inner in inners if inner in names}
              for outer, inners in _NO_NESTING.items() if outer in names}
    nested = {k: v for k, v in nested.items() if v}
    weighted = s.weighted if s.weighted is not None else space.loss == "relative_weighted"
    kwargs: dict[str, Any] = {
        "binary_operators": base["binary_operators"],
        "unary_operators": base["unary_operators"],
        "extra_sympy_mappings": base["extra_sympy_mappings"],
        "complexity_of_operators": base["complexity_of_operators"],
        "complexity_of_constants": 1,
        "complexity_of_variables": 1,
        "constraints": constraints,
        "nested_constraints": nested,
        "maxsize": int(space.max_size),
        "maxdepth": int(space.max_depth) + 1,
        "elementwise_loss": RELATIVE_LOSS_WEIGHTED if weighted else RELATIVE_LOSS,
        "timeout_in_seconds": float(s.budget_s),
        "niterations": int(s.generations),
        "populations": int(s.islands),
        "population_size": int(s.population),
        "random_state": int(s.seed),
        "precision": 64,
        "model_selection": "best",
        "verbosity": int(s.verbosity),
        "progress": False,
        "variable_names": [symbol_name(f) for f in features],
    }
    guesses = [g for g in (_guess(t, features, ops) for t in space.seed_formulas) if g is not None]
    if guesses:
        kwargs["guesses"] = guesses
    if s.is_deterministic:
        kwargs["deterministic"] = True
        kwargs["parallelism"] = "serial"
    else:
        kwargs["parallelism"] = "multiprocessing" if (s.procs or s.cluster_manager) else "multithreading"
        if s.procs:
            kwargs["procs"] = int(s.procs)
        if s.cluster_manager:
            kwargs["cluster_manager"] = s.cluster_manager
    if s.output_directory is not None:
        kwargs["output_directory"] = str(s.output_directory)
    if s.run_id is not None:
        kwargs["run_id"] = str(s.run_id)
    return kwargs


def pysr_unsupported(space: "SearchSpace", features: Sequence[str]) -> list[str]:
    """What the space asks that a PySR search cannot do (one phrase each)."""
    out = []
    if space.constraint_mode != "off" and space.monotone_in:
        out.append(f"monotonicity in {', '.join(space.monotone_in)} (not enforced during the PySR search; "
                   "applied to the returned candidates' losses)")
    left = [t for t in space.seed_formulas if _guess(t, features, space.operators) is None]
    if left:
        out.append(f"seed formula(s) {'; '.join(map(repr, left))} (outside the space's operators or features)")
    return out


# =============================================================================== Julia


_STATUS: dict[float, tuple[bool, str]] = {}


def find_julia() -> str | None:
    """A Julia (or juliaup) executable that is already installed, without installing anything."""
    for key in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        value = os.environ.get(key)
        if value and (shutil.which(value) or Path(value).is_file()):
            return value
    for exe in ("julia", "juliaup"):
        found = shutil.which(exe)
        if found:
            return found
    try:  # where juliapkg installs Julia itself (reading its state installs nothing)
        from juliapkg.state import STATE

        install = Path(STATE["install"])
    except Exception:  # juliapkg absent or changed: nothing installed by it
        return None
    for candidate in (install / "bin" / "julia", install / "bin" / "julia.exe"):
        if candidate.is_file():
            return str(candidate)
    return None


def julia_status(timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> tuple[bool, str]:
    """(available, message): can ``import pysr`` work here without downloading? (cached per process)"""
    if timeout_s in _STATUS:
        return _STATUS[timeout_s]
    exe = find_julia()
    if exe is None:
        result = (False, "PySR needs Julia, which is not available here (no julia or juliaup executable on PATH, "
                         "none set in PYTHON_JULIACALL_EXE, none installed by juliapkg); " + INSTALL_HINT)
    else:
        env = dict(os.environ, PYTHON_JULIAPKG_OFFLINE="yes")
        try:
            proc = subprocess.run([sys.executable, "-c", "import pysr"], capture_output=True, text=True,
                                  timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            result = (False, f"PySR needs Julia, which did not start here (import pysr took more than "
                             f"{timeout_s:.0f} s with Julia at {exe}); " + INSTALL_HINT)
        else:
            if proc.returncode == 0:
                result = (True, f"Julia at {exe}")
            else:
                lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
                why = lines[-1] if lines else f"exit status {proc.returncode}"
                result = (False, f"PySR needs Julia, which is not available here (import pysr failed: {why}); "
                                 + INSTALL_HINT)
    _STATUS[timeout_s] = result
    return result


def check_available(settings: Mapping[str, Any] | None = None) -> None:
    """Raise a one-line :class:`StepMLError` when PySR cannot run here."""
    timeout = float((settings or {}).get("julia_check_timeout_s", DEFAULT_CHECK_TIMEOUT_S))
    ok, message = julia_status(timeout)
    if not ok:
        raise StepMLError(message)


# =============================================================================== engine


class PySREngine:
    """PySR search of a problem (see the module docstring). ``stats_``: ``wall_s``, ``equations``,
    ``candidates``, ``unsupported``, ``kwargs`` (the constructor options, without callables)."""

    name = "pysr"

    def __init__(self, settings: PySRSettings | Mapping[str, Any] | None = None) -> None:
        self.settings = _settings(settings)
        self.stats_: dict[str, Any] = {}

    def search(self, problem: "Problem", mapper: Callable[..., Iterable[Any]] | None = None,
               progress: Callable[[int, float, int, float], None] | None = None,
               checkpoint: Callable[[dict[str, Any]], None] | None = None,
               resume_state: Mapping[str, Any] | None = None) -> list["Candidate"]:
        """Fit PySR on the training rows; returns the Pareto set (loss × complexity) of its hall of fame.

        ``mapper``, ``progress``, ``checkpoint`` and ``resume_state`` are not used (PySR runs in Julia).
        """
        import numpy as np

        t0 = time.perf_counter()
        s = self.settings
        check_available(asdict(s))
        unsupported = pysr_unsupported(problem.space, problem.features)
        if unsupported:
            print(f"warning: pysr engine cannot express: {'; '.join(unsupported)}", file=sys.stderr)
        weighted = problem.w_train is not None
        settings = asdict(s) | {"weighted": weighted}
        kwargs = pysr_kwargs(problem.space, problem.features, settings)
        fit = {k: kwargs.pop(k) for k in FIT_KEYS if k in kwargs}
        remaining = s.budget_s - (time.perf_counter() - t0)
        kwargs["timeout_in_seconds"] = max(1.0, remaining)
        os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")  # as checked: never download during a search
        from pysr import PySRRegressor

        model = PySRRegressor(**kwargs)
        X = np.column_stack([np.asarray(problem.X_train[f], dtype=np.float64) for f in problem.features])
        y = np.asarray(problem.y_train, dtype=np.float64)
        if weighted:
            fit["weights"] = np.asarray(problem.w_train, dtype=np.float64)
        model.fit(X, y, **fit)
        equations = list(model.equations_["equation"])
        candidates, skipped = equations_to_candidates(equations, problem, "pysr", "pysr hall of fame")
        front = pareto_front(sorted(candidates, key=lambda c: c.key))
        self.stats_ = {"wall_s": time.perf_counter() - t0, "equations": len(equations), "candidates": len(front),
                       "skipped_unparsable": skipped["unparsable"],
                       "unsupported": unsupported,
                       "kwargs": {k: v for k, v in kwargs.items() if k != "extra_sympy_mappings"}}
        return front


def equations_to_candidates(equations: Sequence[str], problem: "Problem", engine: str,
                            provenance: str) -> tuple[list["Candidate"], dict[str, int]]:
    """Candidates of PySR equation strings on ``problem`` (loss by the shared objective; complexity from the
    table), and the number of ``unparsable`` equations left out."""
    from discovery.candidate import formula_candidates, tidy
    from search_spaces.operators import parse_formula

    exprs = []
    skipped = {"unparsable": 0}
    for text in equations:
        try:
            exprs.append(tidy(parse_formula(str(text), problem.features)))
        except StepMLError:
            skipped["unparsable"] += 1
    return formula_candidates(exprs, problem, engine, provenance), skipped
