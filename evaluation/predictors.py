"""Predictors: anything that maps canonical step columns to a step time in µs.

A predictor has a ``name`` and ``predict(columns) -> np.ndarray`` where
``columns`` is a DataFrame of canonical columns or a dict of arrays/scalars
(one simulated step). Formulas found by the engines, the baselines and
exported artifacts all follow this protocol, so the scorer, the replay and
the audit treat them alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import sympy

from features import catalog


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
    """

    expr: sympy.Expr
    features: tuple[str, ...]
    name: str = "formula"
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
