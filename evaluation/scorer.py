"""The one scorer every candidate and baseline goes through.

``score(predictor, dataset, split)`` predicts every row once and summarises the
errors on the train, validation and test parts, overall and per group
(experiment, model, workload, phase). Selection anywhere in the project uses
the validation part only; the test part is reported, never used to choose.

Bad predictions (NaN, infinite, ≤ 0) are counted and reported, never a crash;
for ranking they make the loss infinite
(:func:`search_spaces.objective.relative_error`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from evaluation import metrics
from evaluation.predictors import Predictor, predict_safely
from features.dataset import Dataset
from features.splits import Split

PARTS = ("train", "val", "test")
GROUPS = ("experiment_id", "model", "workload", "phase")


def phase_labels(frame: pd.DataFrame) -> np.ndarray:
    """``decode-only``, ``prefill-only`` or ``mixed`` per row (``all`` without batch columns)."""
    if not {"batch.num_prefill_reqs", "batch.num_decode_reqs"} <= set(frame.columns):
        return np.full(len(frame), "all", dtype=object)
    pre = frame["batch.num_prefill_reqs"].to_numpy(float) > 0
    dec = frame["batch.num_decode_reqs"].to_numpy(float) > 0
    return np.where(pre & dec, "mixed", np.where(pre, "prefill-only", "decode-only")).astype(object)


@dataclass(frozen=True)
class ScoreCard:
    """Scores of one predictor on one split.

    Attributes
    ----------
    predictor, split : str
        Names.
    overall : dict
        Part (``train``/``val``/``test``) → :func:`evaluation.metrics.summary` dict.
    groups : dict
        ``(part, group column)`` → {group value → summary dict}.
    bad_predictions : dict
        Counts of NaN / inf / non-positive predictions over all rows.
    """

    predictor: str
    split: str
    overall: dict[str, dict[str, Any]]
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    bad_predictions: dict[str, int] = field(default_factory=dict)

    def mape(self, part: str = "val") -> float:
        """MAPE (%) of a part."""
        return float(self.overall[part]["mape"])

    def group_metric(self, part: str, column: str, metric: str = "mape") -> dict[str, float]:
        """One metric per group value."""
        return {k: float(v[metric]) for k, v in self.groups.get((part, column), {}).items()}


def score_predictions(pred: np.ndarray, dataset: Dataset, split: Split, name: str = "predictor",
                      ci: bool = False, seed: int = 0, groups: tuple[str, ...] = GROUPS,
                      weighted: bool = False) -> ScoreCard:
    """Score precomputed predictions (one per row of ``dataset.frame``).

    With ``weighted`` the metrics weight rows by the dataset's weight column
    (the cycle-time gap); by default every row counts once.
    """
    y = dataset.y
    w = dataset.weights if weighted else None
    frame = dataset.frame
    labels = {g: (phase_labels(frame) if g == "phase" else frame[g].astype(str).to_numpy())
              for g in groups if g == "phase" or g in frame.columns}
    overall: dict[str, dict[str, Any]] = {}
    by_group: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for part in PARTS:
        idx = split.part(part)
        overall[part] = metrics.summary(y[idx], pred[idx], None if w is None else w[idx], ci=ci, seed=seed)
        for g, lab in labels.items():
            values = lab[idx]
            by_group[(part, g)] = {
                str(v): metrics.summary(y[idx][values == v], pred[idx][values == v],
                                        None if w is None else w[idx][values == v], ci=ci, seed=seed)
                for v in sorted(set(values))}
    return ScoreCard(name, split.name, overall, by_group, metrics.prediction_problems(pred))


def score(predictor: Predictor, dataset: Dataset, split: Split, ci: bool = False, seed: int = 0,
          weighted: bool = False) -> ScoreCard:
    """Predict every row once and score it (see module docstring)."""
    pred = predict_safely(predictor, dataset.frame)
    return score_predictions(pred, dataset, split, getattr(predictor, "name", "predictor"), ci=ci, seed=seed,
                             weighted=weighted)


def scorecard_rows(card: ScoreCard, part: str = "test", column: str = "experiment_id") -> list[dict[str, Any]]:
    """Flatten one part's per-group metrics to rows (for leaderboards)."""
    rows = []
    for group, m in card.groups.get((part, column), {}).items():
        rows.append({"group": group, "predictor": card.predictor, **{k: m.get(k) for k in ("n", "mape", "mspe")},
                     "ci": m.get("mape_ci")})
    return rows


def metrics_for(card: ScoreCard, part: str) -> Mapping[str, Any]:
    """The overall summary dict of one part."""
    return card.overall[part]
