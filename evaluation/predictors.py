"""Predictors: anything that maps canonical step columns to a step time in µs.

A predictor has a ``name`` and ``predict(columns) -> np.ndarray`` where
``columns`` is a DataFrame of canonical columns or a dict of arrays/scalars
(one simulated step). Formulas found by the engines, the baselines and
exported artifacts all follow this protocol, so the scorer, the replay and
the audit treat them alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import sympy

from features import catalog
from features.errors import StepMLError


@runtime_checkable
class Predictor(Protocol):
    """Protocol: ``name`` and a vectorised ``predict``."""

    name: str

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:  # pragma: no cover - protocol
        """Predicted step time (µs) for each row of ``columns``."""
        ...


def n_rows(columns: Mapping[str, object]) -> int:
    """Number of rows in a DataFrame or dict of arrays (1 for scalars)."""
    if hasattr(columns, "shape"):
        return int(columns.shape[0])  # type: ignore[attr-defined]
    for value in columns.values():
        return int(np.size(value))
    return 1


@dataclass(frozen=True)
class FormulaPredictor:
    """A closed-form formula over named features (a sympy expression).

    Parameters
    ----------
    expr : sympy.Expr
        The formula; its free symbols are feature names (see
        :func:`search_spaces.operators.symbol_name`).
    features : sequence of str
        Feature names the formula may use.
    name : str
        Label for reports.
    operating_range : OperatingRange, optional
        Where the formula was fitted (:mod:`evaluation.operating_range`); a replay
        outside it says it extrapolates.
    """

    expr: sympy.Expr
    features: tuple[str, ...]
    name: str = "formula"
    operating_range: Any = field(default=None, compare=False, repr=False)
    _fn: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        from search_spaces.numeric import lambdify_formula

        used = tuple(f for f in self.features if sympy.Symbol(_sym(f)) in self.expr.free_symbols)
        object.__setattr__(self, "features", used)
        object.__setattr__(self, "_fn", lambdify_formula(self.expr, used))

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        """Evaluate the formula on canonical columns (a table, or one step's scalars)."""
        n = n_rows(columns)
        if not self.features:
            return np.full(n, float(self.expr))
        values = catalog.compute_features(columns, self.features)
        values = {k: np.broadcast_to(np.atleast_1d(v), (n,)) for k, v in values.items()}
        with np.errstate(all="ignore"):
            return np.asarray(self._fn(values), dtype=float)  # type: ignore[operator]

    def canonical_expr(self, constants: Mapping[str, float] | None = None) -> sympy.Expr:
        """The formula over canonical columns: each feature replaced by its catalogue definition.

        ``constants`` (``arch.*``, ``hw.*`` … of one experiment) are substituted as numbers.
        """
        subs = {sympy.Symbol(_sym(f)): catalog.get_feature(f).sympy_expr() for f in self.features}
        expr = self.expr.xreplace(subs)
        if constants:
            expr = expr.xreplace({s: sympy.Float(float(constants[s.name])) for s in expr.free_symbols
                                  if s.name in constants})
        return expr

    def step_function(self, constants: Mapping[str, float]):
        """A fast scalar step-time function for a simulator: ``f(columns: dict[str, float]) -> µs``.

        The formula with every feature definition and the experiment's
        ``constants`` substituted is printed once as scalar Python with the
        operator table's semantics (:mod:`discovery.printers.python`) and
        compiled; a call costs microseconds instead of a vectorised
        :meth:`predict` on one-row arrays. Agrees with :meth:`predict`.
        """
        from discovery.printers.python import scalar_function

        return scalar_function(self.canonical_expr(constants))


def _sym(feature: str) -> str:
    from search_spaces.operators import symbol_name

    return symbol_name(feature)


def predict_safely(predictor: Predictor, columns: Mapping[str, object]) -> np.ndarray:
    """``predictor.predict`` with numpy warnings silenced and the length checked."""
    with np.errstate(all="ignore"):
        pred = np.asarray(predictor.predict(columns), dtype=float)
    n = n_rows(columns)
    if pred.shape != (n,):
        pred = np.broadcast_to(pred, (n,)).astype(float)
    return pred


def feature_matrix(columns: Mapping[str, object], names: Sequence[str]) -> np.ndarray:
    """Columns of named features stacked as an (n, k) float matrix."""
    values = catalog.compute_features(columns, names)
    n = n_rows(columns)
    return np.column_stack([np.broadcast_to(values[k], (n,)) for k in names]) if names else np.zeros((n, 0))


@dataclass(frozen=True)
class ScaledPredictor:
    """Another predictor's step time times a constant ``scale`` (diagnostics: a step-time error of X %).

    Parameters
    ----------
    base : Predictor
    scale : float
        Factor (> 0) applied to every prediction.
    """

    base: object
    scale: float

    @property
    def name(self) -> str:
        return f"{getattr(self.base, 'name', type(self.base).__name__)}*{self.scale:.4g}"

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        return np.asarray(self.base.predict(columns), dtype=float) * self.scale  # type: ignore[attr-defined]

    def step_function(self, constants: Mapping[str, float]):
        """The base predictor's compiled step function, scaled (AttributeError when it has none)."""
        base = self.base.step_function(constants)  # type: ignore[attr-defined]
        scale = float(self.scale)
        return lambda columns: scale * base(columns)


# -- predictors from a CLI spec ------------------------------------------------------------------

_PICKS = ("best", "accuracy", "knee", "score")


def load_predictor(spec: str, fit_data: str | Path | None = None,
                   fit_experiments: Sequence[str] | None = None) -> Any:
    """A predictor from a CLI spec: ``RUN_DIR[:ROW]``, ``baseline:NAME`` or an artifact path.

    ``RUN_DIR[:ROW]``: the run's front row ``ROW`` (``best`` default, ``accuracy``,
    ``knee`` or a row number) as a :class:`~evaluation.predictors.FormulaPredictor`,
    with the operating range of the run's train and validation rows when its data is
    at hand.
    ``ARTIFACT.json`` (or an export folder): the exported formula
    (:class:`~discovery.formula.ArtifactPredictor`).
    ``baseline:NAME``: that baseline fitted on the cycle target of ``fit_data``
    (default: the shared BLIS step table) restricted to ``fit_experiments``.
    """
    spec = str(spec).strip()
    if not spec:
        raise StepMLError("--predictor is empty")
    if spec.startswith("baseline:"):
        return _fit_baseline(spec.split(":", 1)[1], fit_data, fit_experiments)
    path_part, row = spec, "best"
    head, sep, tail = spec.rpartition(":")
    if sep and head and (tail in _PICKS or tail.isdigit()):
        path_part, row = head, tail
    if path_part.endswith(".json") or (Path(path_part) / "artifact.json").is_file():
        from discovery.formula import load_artifact

        return load_artifact(path_part)[1]
    run_dir = Path(path_part)
    if not run_dir.is_dir():
        raise StepMLError(f"predictor not found: {path_part} (expected RUN_DIR[:ROW] or baseline:NAME)")
    from discovery.pareto import pick_row
    from discovery.rundir import expr_of, reviewed_front

    front, eligible = reviewed_front(run_dir)
    k = pick_row(front, row, eligible)
    expr = expr_of(front.iloc[k])
    return FormulaPredictor(expr, tuple(catalog.registry()), name=f"{run_dir.name}:{row}",
                            operating_range=run_range(run_dir))


def run_range(run_dir: Path) -> Any:
    """The operating range of a run's train and validation rows; None when its data is no longer at hand."""
    from discovery.formula import fitted_range, run_data
    from discovery.rundir import read_run_json
    from evaluation.operating_range import OperatingRange

    try:
        span = fitted_range(*run_data(read_run_json(run_dir), run_dir))
    except StepMLError:
        return None
    return OperatingRange.from_dict(span) if span is not None else None


def _fit_baseline(name: str, fit_data: str | Path | None, fit_experiments: Sequence[str] | None) -> Any:
    from evaluation.baselines import fit_baseline, make_baseline
    from evaluation.replay_setup import STEP_TABLE
    from features.dataset import load_dataset
    from features.metadata import default_data_root

    make_baseline(name)                                 # unknown names fail before loading data
    path = Path(fit_data) if fit_data else default_data_root() / STEP_TABLE
    if not path.exists():
        raise StepMLError(f"fit data not found: {path} (give --fit-data)")
    dataset = load_dataset(path, "cycle")
    ids = dataset.frame["experiment_id"].astype(str).to_numpy()
    if fit_experiments:
        wanted = [str(e) for e in fit_experiments]
        unknown = [e for e in wanted if e not in set(ids)]
        if unknown:
            raise StepMLError(f"--fit-experiments: {', '.join(unknown)} not in {path} "
                              f"(has: {', '.join(sorted(set(ids)))})")
        rows = np.flatnonzero(np.isin(ids, wanted))
    else:
        rows = np.arange(len(ids))
    model = fit_baseline(name, dataset, rows)
    if fit_experiments:
        model.name = f"{name}[{','.join(fit_experiments)}]"
    return model
