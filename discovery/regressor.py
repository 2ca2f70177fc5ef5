"""``StepTimeRegressor``: the search as a scikit-learn estimator (PySR's ``PySRRegressor`` conventions).

::

    from discovery import StepTimeRegressor

    model = StepTimeRegressor(space="dense", generations=20).fit(X, y)
    model.equations_          # the hall of fame: complexity, loss (%), equation, score, sympy_format, ...
    model.sympy(), model.latex(), model.predict(X), model.score(X, y)

``X`` may be

* a DataFrame of **canonical step columns** (``batch.prefill_tokens``,
  ``kv.tokens_in_use``, ``arch.*`` …, as :mod:`features.dataset` loads them):
  the space's catalogue features are computed from them, and the probe-pair
  monotonicity constraint applies, exactly as in ``python -m discovery.search``;
* a DataFrame whose columns are **feature names** (catalogue features such as
  ``prefill_tokens`` or any names that are identifiers): the formula uses them
  as they are;
* a 2-D array: the features are named ``x0 … xN`` (as PySR names them).

``y`` is the step time (any positive unit): the loss is the relative error, so
every target must be > 0. The search runs on all rows (no split; PySR's
convention) with the engines and the objective of the search CLI; the selected
equation (``model_selection``: ``best`` — PySR's rule —, ``accuracy``, ``score``
or ``knee``) predicts. Runs are deterministic for a seed when ``generations``
(not ``budget``) ends them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from discovery.config import DEFAULTS, SearchConfig
from features.errors import StepMLError

__all__ = ["StepTimeRegressor"]

#: Target column of the in-memory dataset built from canonical step columns.
_TARGET = "target.y"
#: Linear seeds ``c0 + c1*f`` are added for at most this many named features.
MAX_LINEAR_SEEDS = 32


class StepTimeRegressor(RegressorMixin, BaseEstimator):
    """Symbolic regression of step times (see the module docstring).

    Parameters
    ----------
    space : str
        Search space (operators, limits, features for canonical-column input): ``dense``, ``moe``,
        ``roofline`` or ``linear``.
    engine : str
        Engine(s), comma-separated: ``deap``, ``operon``, ``pysr``.
    generations, population, islands : int
        Search size (see :class:`discovery.config.SearchDefaults`; ``generations`` None: until the budget).
    budget : float
        Wall-clock budget in seconds; a fit the budget stops is not reproducible.
    seed : int
    early_stop : int
        DEAP: generations without improvement before stopping (0 = never).
    model_selection : str
        Which equation predicts: ``best``, ``accuracy``, ``score`` or ``knee``.

    Attributes
    ----------
    equations_ : DataFrame
        The hall of fame (Pareto set in training loss × complexity), by complexity:
        ``complexity``, ``loss`` (training loss, %), ``equation``, ``score``,
        ``sympy_format``, ``n_constants``, ``engine``, ``provenance``.
    best_index_ : int
        The row of ``equations_`` that predicts.
    features_ : tuple of str
        The features the formulas use (``x0 …``, column names, or catalogue features).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame.
    stats_ : dict
        Each engine's statistics.
    """

    def __init__(self, space: str = "dense", engine: str = "deap", generations: int | None = DEFAULTS.generations,
                 population: int = DEFAULTS.population, islands: int = DEFAULTS.islands,
                 budget: float = DEFAULTS.budget_s, seed: int = DEFAULTS.seed, early_stop: int = DEFAULTS.early_stop,
                 model_selection: str = "best") -> None:
        self.space = space
        self.engine = engine
        self.generations = generations
        self.population = population
        self.islands = islands
        self.budget = budget
        self.seed = seed
        self.early_stop = early_stop
        self.model_selection = model_selection

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True  # relative error: every target must be > 0
        return tags

    # -- fit --------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> "StepTimeRegressor":
        """Search formulas for ``y`` from ``X``; returns self."""
        from discovery.candidate import refine_candidates
        from discovery.engines import make_engine
        from discovery.pareto import SELECTIONS
        from discovery.pipeline import search_problem

        if self.model_selection not in SELECTIONS:
            raise ValueError(f"model_selection must be one of {', '.join(SELECTIONS)}, got {self.model_selection!r}")
        try:
            config = SearchConfig.create(self.space, engine=self.engine, generations=self.generations,
                                         population=self.population, islands=self.islands, budget_s=self.budget,
                                         seed=self.seed, early_stop=self.early_stop).check()
            problem = self._problem(X, y, config)
            engines = {name: make_engine(name, config.engine_settings(name)) for name in config.engines}
            candidates, self.stats_ = search_problem(problem, engines)
            candidates = refine_candidates(candidates, problem)
        except StepMLError as exc:
            raise ValueError(str(exc)) from None
        self.equations_ = _equations(candidates)
        if self.equations_.empty:
            raise ValueError("the search found no formula with a finite loss")
        self.best_index_ = _select(self.equations_, self.model_selection)
        return self

    def _problem(self, X: Any, y: Any, config: SearchConfig) -> Any:
        from search_spaces.spaces import get_space

        space = get_space(config.space)
        if isinstance(X, pd.DataFrame) and _canonical(X, space):
            return self._column_problem(X, y, space, config.seed)
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        names = tuple(str(c) for c in getattr(self, "feature_names_in_", [f"x{i}" for i in range(X.shape[1])]))
        y = _positive(y)
        self._mode = "features"
        self.features_ = _checked_names(names)
        seeds = tuple(space.seed_formulas) + tuple(f"c0 + c1*{n}" for n in names[:MAX_LINEAR_SEEDS])
        space = dataclasses.replace(space, name=f"{space.name}[X]", features=names, seed_formulas=seeds,
                                    monotone_in=())
        from discovery.candidate import Problem

        columns = {n: np.ascontiguousarray(X[:, i]) for i, n in enumerate(names)}
        return Problem(space, names, columns, y, None, columns, y, None, {}, config.seed)

    def _column_problem(self, X: pd.DataFrame, y: Any, space: Any, seed: int) -> Any:
        """Canonical step columns: the catalogue computes the space's features; probes as in the CLI."""
        from sklearn.utils.validation import column_or_1d

        from discovery.candidate import build_problem
        from features.dataset import Dataset
        from features.splits import Split

        y = _positive(column_or_1d(np.asarray(y, dtype=np.float64), warn=True))
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        frame = X.reset_index(drop=True).copy()
        frame[_TARGET] = y
        dataset = Dataset(frame, _TARGET, "StepTimeRegressor.fit")
        rows = np.arange(len(frame))
        problem = build_problem(dataset, Split("all", "", rows, rows, rows[:0]), space, seed=seed)
        self._mode = "columns"
        self.features_ = tuple(problem.features)
        self.n_features_in_ = X.shape[1]
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        return problem

    # -- predict ----------------------------------------------------------------------------------
    def predict(self, X: Any, index: int | None = None) -> np.ndarray:
        """Predicted step times of the selected equation (or of row ``index`` of ``equations_``)."""
        from search_spaces.numeric import lambdify_formula

        check_is_fitted(self, "equations_")
        columns = self._feature_columns(X)
        expr = self.sympy(index)
        n = len(next(iter(columns.values()))) if columns else len(X)
        with np.errstate(all="ignore"):
            out = lambdify_formula(expr, self.features_)(columns) if columns else np.full(n, float(expr))
        return np.asarray(out, dtype=np.float64)

    def _feature_columns(self, X: Any) -> dict[str, np.ndarray]:
        if self._mode == "columns":
            from features import catalog

            if not isinstance(X, pd.DataFrame):
                raise ValueError("this model was fitted on canonical step columns: predict needs a DataFrame")
            missing = [c for c in self.feature_names_in_ if c not in X.columns]
            if missing:
                raise ValueError(f"X lacks column(s) {', '.join(missing[:5])} seen in fit")
            values = catalog.compute_features(X, self.features_)
            return {k: np.broadcast_to(np.asarray(v, dtype=float), (len(X),)) for k, v in values.items()}
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return {n: X[:, i] for i, n in enumerate(self.features_)}

    # -- the selected equation --------------------------------------------------------------------
    def sympy(self, index: int | None = None) -> Any:
        """The selected equation (or row ``index`` of ``equations_``) as a sympy expression."""
        check_is_fitted(self, "equations_")
        return self.equations_["sympy_format"].iloc[self.best_index_ if index is None else int(index)]

    def latex(self, index: int | None = None, precision: int = 3) -> str:
        """LaTeX of the selected equation, constants rounded to ``precision`` significant figures."""
        import sympy

        from discovery.formula import round_constants

        expr = round_constants(self.sympy(index), precision)
        names = {s: r"\mathrm{" + s.name.replace("_", r"\_") + "}" for s in expr.free_symbols}
        return sympy.latex(expr, symbol_names=names)


def _canonical(X: pd.DataFrame, space: Any) -> bool:
    """Whether the DataFrame holds canonical step columns from which the space's features are computed."""
    from features import catalog

    if all(str(c) in catalog.registry() for c in X.columns):
        return False  # feature names themselves
    available = {f.name for f in catalog.available_features([str(c) for c in X.columns], ("simulator",))}
    return bool(available & set(space.features))


def _positive(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("StepTimeRegressor fits the relative error: every target y must be finite and > 0")
    return y


def _checked_names(names: tuple[str, ...]) -> tuple[str, ...]:
    from search_spaces.operators import OPERATORS, symbol_name

    for name in names:
        symbol = symbol_name(name)  # StepMLError for names that are no identifiers
        if symbol in OPERATORS or symbol in ("c", "lambda"):
            raise StepMLError(f"feature name {name!r} collides with an operator name; rename the column")
    return names


def _equations(candidates: list[Any]) -> pd.DataFrame:
    """The Pareto set of all engines' candidates as PySR's ``equations_`` table (loss in %)."""
    import sympy

    from discovery.pareto import pysr_score
    from search_spaces.objective import pareto_front

    unique: dict[str, Any] = {}
    for c in candidates:
        if c.key not in unique or c.loss < unique[c.key].loss:
            unique[c.key] = c
    front = pareto_front(sorted(unique.values(), key=lambda c: c.key))
    loss = np.array([c.loss * 100.0 for c in front], dtype=float)
    complexity = np.array([c.complexity for c in front], dtype=float)
    return pd.DataFrame({
        "complexity": complexity.astype(int), "loss": loss,
        "equation": [sympy.sstr(c.expr, full_prec=False) for c in front],
        "score": pysr_score(complexity, loss) if len(front) else [], "sympy_format": [c.expr for c in front],
        "n_constants": [c.n_constants for c in front], "engine": [c.engine for c in front],
        "provenance": [c.provenance for c in front],
    })


def _select(equations: pd.DataFrame, kind: str) -> int:
    from discovery.pareto import select

    return int(select(kind, equations["complexity"].to_numpy(float), equations["loss"].to_numpy(float)))
