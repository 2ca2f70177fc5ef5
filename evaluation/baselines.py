"""Baselines every formula is compared against, each fitted on the training part only.

- ``naive``: the mean training target.
- ``blackbox``: ``c0 + c1·prefill_tokens + c2·decode_tokens`` (the simulator's
  current model), least squares over all training rows; ``blackbox-per-exp``
  fits one per experiment.
- ``roofline``: analytical, no fitting: ``max(compute, memory) + all-reduce``
  from the roofline basis terms; ``roofline-cal`` fits a scale and intercept
  on relative error (least squares weighted by ``1/y²``), the error every
  leaderboard reports.
- ``gbt``: scikit-learn HistGradientBoosting on all non-leaky features (log
  target): the black-box accuracy reference.
- ``xgboost``: XGBoost's gradient-boosted trees on the same features and
  target (the seed plan's reference model).
- ``poly2``: a quadratic response surface on the same features: ridge least
  squares of log(target) on every degree ≤ 2 product of the features' logs.
  A *smooth* reference of known size (``n_terms_`` coefficients, e.g. 36 for 7
  features, 253 for 21): what a smooth law with that many constants reaches,
  against which a formula of a handful of constants can be judged where trees
  win by following kernel-selection steps (``benchmarks/kernel_suite.py``).

The tree models run on :data:`THREADS` BLAS/OpenMP threads (threadpoolctl;
XGBoost's ``n_jobs``): their results do not depend on the thread count, and
on a busy machine one thread is many times faster than oversubscribing the
cores. Their smallest leaf shrinks with the training set (``min(20, n // 10)``
rows, at least 1), so they also split a 23-row kernel table; from 200 rows on
it is scikit-learn's default of 20.

Each baseline is a scikit-learn-style estimator: ``__init__`` stores
parameters, ``fit(frame, y, sample_weight=None)`` returns ``self``, fitted
attributes end in ``_``, and ``predict(columns)`` works on a DataFrame or on a
dict of one simulated step's columns.

CLI: ``python -m evaluation.baselines [--data PATH] [--target cycle|duration|COLUMN]
[--split temporal|random|kfold[:K]|lomo|lowo|logo:COLUMN] [--json] [--out DIR]``; baselines that
cannot run on the data are listed with the reason.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from evaluation.predictors import feature_matrix, n_rows
from features import catalog
from features.errors import StepMLError
from features.registry import Registry

BLACKBOX_FEATURES = ("prefill_tokens", "decode_tokens")
ROOFLINE_COMPUTE = ("rl_prefill_compute", "rl_decode_compute", "rl_attn_compute")
ROOFLINE_MEMORY = ("rl_weight_load", "rl_kv_read")
ROOFLINE_COMM = ("rl_allreduce",)
#: BLAS/OpenMP threads of the tree baselines (see the module docstring).
THREADS = 1
MAX_MIN_SAMPLES_LEAF = 20


def _min_samples_leaf(n: int) -> int:
    """scikit-learn's default leaf of 20 rows from 200 training rows on, ``n // 10`` (≥ 1) below."""
    return max(1, min(MAX_MIN_SAMPLES_LEAF, n // 10))


def _thread_limit(threads: int):
    """A context capping BLAS and OpenMP threads of the libraries loaded so far (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


class NaiveMean:
    """Predicts the mean training target of the row's group (pooled mean for unseen groups).

    Parameters
    ----------
    per_group : str or None
        Column whose groups get their own mean (default ``experiment_id``).
    """

    name = "naive"

    def __init__(self, per_group: str | None = "experiment_id") -> None:
        self.per_group = per_group

    def fit(self, frame: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "NaiveMean":
        self.mean_ = float(np.average(y, weights=sample_weight))
        self.group_mean_: dict[str, float] = {}
        if self.per_group and self.per_group in frame.columns:
            labels = frame[self.per_group].astype(str).to_numpy()
            for g in sorted(set(labels)):
                m = labels == g
                self.group_mean_[g] = float(np.average(y[m], weights=None if sample_weight is None else sample_weight[m]))
        return self

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        pred = np.full(n_rows(columns), self.mean_)
        if self.group_mean_ and self.per_group in columns:
            labels = np.asarray(columns[self.per_group]).astype(str).reshape(-1)
            for g, mean in self.group_mean_.items():
                pred[labels == g] = mean
        return pred


class LinearBaseline:
    """Least squares ``c0 + Σ ci·feature_i``, optionally one fit per group.

    Parameters
    ----------
    features : tuple of str
        Catalogue feature names.
    per_group : str or None
        Column to fit separately by (e.g. ``experiment_id``); rows of unseen
        groups fall back to the pooled fit.
    name : str
    """

    def __init__(self, features: tuple[str, ...] = BLACKBOX_FEATURES, per_group: str | None = None,
                 name: str = "blackbox") -> None:
        self.features = features
        self.per_group = per_group
        self.name = name

    def _solve(self, frame: pd.DataFrame, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        X = np.column_stack([np.ones(len(y)), feature_matrix(frame, self.features)])
        if w is not None:
            s = np.sqrt(w)
            X, y = X * s[:, None], y * s
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        return coef

    def fit(self, frame: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "LinearBaseline":
        self.coef_ = self._solve(frame, y, sample_weight)
        self.group_coef_: dict[str, np.ndarray] = {}
        if self.per_group:
            labels = frame[self.per_group].astype(str).to_numpy()
            for g in sorted(set(labels)):
                m = labels == g
                self.group_coef_[g] = self._solve(frame.loc[m], y[m], None if sample_weight is None else sample_weight[m])
        return self

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        X = np.column_stack([np.ones(n_rows(columns)), feature_matrix(columns, self.features)])
        pred = X @ self.coef_
        if self.per_group and self.group_coef_ and self.per_group in columns:
            labels = np.asarray(columns[self.per_group]).astype(str).reshape(-1)
            for g, coef in self.group_coef_.items():
                m = labels == g
                if m.any():
                    pred[m] = X[m] @ coef
        return pred


def roofline_time(columns: Mapping[str, object]) -> np.ndarray:
    """``max(compute, memory) + all-reduce`` from the roofline terms the data can compute (µs)."""
    have = {f.name for f in catalog.available_features(columns.keys())}
    parts = {}
    for label, names in (("compute", ROOFLINE_COMPUTE), ("memory", ROOFLINE_MEMORY), ("comm", ROOFLINE_COMM)):
        used = [n for n in names if n in have]
        values = catalog.compute_features(columns, used)
        parts[label] = sum(values.values()) if used else 0.0
    if not any(n in have for n in ROOFLINE_COMPUTE + ROOFLINE_MEMORY):
        lacking = {n: [c for c in catalog.get_feature(n).inputs if c not in columns.keys()]
                   for n in ROOFLINE_COMPUTE + ROOFLINE_MEMORY}
        nearest = min(lacking, key=lambda n: (len(lacking[n]), n))
        hint = (" (no hardware datasheet: set hardware in the column map, or give a hardware column)"
                if any(c.startswith("hw.") for c in lacking[nearest]) else "")
        raise StepMLError("roofline baseline needs architecture and hardware metadata (arch.*, hw.* columns): "
                          f"no roofline term can be computed; the nearest, {nearest}, lacks "
                          f"{', '.join(lacking[nearest])}{hint}")
    out = np.maximum(parts["compute"], parts["memory"]) + parts["comm"]
    return np.broadcast_to(np.asarray(out, dtype=float), (n_rows(columns),)).astype(float)


class Roofline:
    """Analytical roofline; ``calibrated=True`` fits ``a·roofline + b`` on relative error.

    The calibration minimises ``Σ w·((a·r + b − y)/y)²``: least squares on the
    relative error the leaderboard reports, so tables whose targets span
    orders of magnitude are not fitted to their largest rows only.
    """

    def __init__(self, calibrated: bool = False) -> None:
        self.calibrated = calibrated
        self.name = "roofline-cal" if calibrated else "roofline"

    def fit(self, frame: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "Roofline":
        self.scale_, self.intercept_ = 1.0, 0.0
        r = roofline_time(frame)  # fails here (not at predict time) when the data lacks arch/hw columns
        if self.calibrated:
            X = np.column_stack([r, np.ones(len(r))])
            w = (np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, float)) / np.square(y)
            coef, *_ = np.linalg.lstsq(X * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)
            self.scale_, self.intercept_ = float(coef[0]), float(coef[1])
        return self

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        return self.scale_ * roofline_time(columns) + self.intercept_


class _LogTrees:
    """Shared fit/predict of the tree baselines: every non-leaky feature, fitted on log(target).

    Subclasses store their parameters in ``__init__`` (with ``threads``) and build
    the regressor in :meth:`_regressor`.
    """

    threads: int

    def _regressor(self, n_rows: int) -> Any:
        raise NotImplementedError

    def fit(self, frame: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "_LogTrees":
        self.features_ = _tree_features(frame)
        self.model_ = self._regressor(len(y))
        with _thread_limit(self.threads):
            self.model_.fit(feature_matrix(frame, self.features_), np.log(y), sample_weight=sample_weight)
        return self

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        with _thread_limit(self.threads):
            return np.exp(np.asarray(self.model_.predict(feature_matrix(columns, self.features_)), dtype=float))


class GradientBoosted(_LogTrees):
    """HistGradientBoosting on every non-leaky feature, fitted on log(target), on ``threads`` threads."""

    name = "gbt"

    def __init__(self, max_iter: int = 300, learning_rate: float = 0.05, random_state: int = 0,
                 threads: int = THREADS) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.threads = threads

    def _regressor(self, n_rows: int) -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                             min_samples_leaf=_min_samples_leaf(n_rows),
                                             random_state=self.random_state)


class XGBoost(_LogTrees):
    """XGBoost gradient-boosted trees on every non-leaky feature, fitted on log(target).

    Same features, target transform and size as :class:`GradientBoosted`
    (300 trees, learning rate 0.05, histogram method), ``n_jobs=threads``
    and a fixed ``random_state``: the same data give the same predictions.
    """

    name = "xgboost"

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.05, max_depth: int = 6,
                 random_state: int = 0, threads: int = THREADS) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.random_state = random_state
        self.threads = threads

    def _regressor(self, n_rows: int) -> Any:
        try:
            from xgboost import XGBRegressor
        except ImportError:
            raise StepMLError("xgboost is not installed (pip install xgboost)") from None
        return XGBRegressor(n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                            max_depth=self.max_depth, tree_method="hist", n_jobs=self.threads,
                            random_state=self.random_state)


class LogPolynomial:
    """Ridge least squares of log(target) on the degree ≤ ``degree`` monomials of the features' logs.

    Each non-leaky feature ``x`` (those the trees use, constant ones dropped) enters as
    ``log1p(|x| / m)`` with ``m`` its median non-zero training magnitude: ``log(x / m)``
    for ``x ≫ m``, linear near 0, so zero-valued features (``decode_tokens`` of a prefill
    step) stay finite. The monomials are standardised on the training rows and fitted with
    a small ridge (``alpha`` per unit of total weight) and a free intercept, weighted by
    ``sample_weight`` (scikit-learn's ``PolynomialFeatures``, ``StandardScaler``, ``Ridge``).

    Parameters
    ----------
    degree : int
        Highest total degree of a monomial (2: a quadratic response surface).
    alpha : float
        Ridge penalty on the standardised monomials' coefficients.
    """

    def __init__(self, degree: int = 2, alpha: float = 1e-6) -> None:
        self.degree = degree
        self.alpha = alpha

    @property
    def name(self) -> str:
        """``poly<degree>``, unless a caller relabelled the fitted model (as for every baseline)."""
        return getattr(self, "label_", f"poly{self.degree}")

    @name.setter
    def name(self, label: str) -> None:
        self.label_ = label

    def _logs(self, columns: Mapping[str, object]) -> np.ndarray:
        return np.log1p(np.abs(feature_matrix(columns, self.features_)) / self.scale_)

    def fit(self, frame: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "LogPolynomial":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        names = _tree_features(frame)
        x = np.abs(feature_matrix(frame, names))
        varies = np.ptp(x, axis=0) > 0
        if not varies.any():
            raise StepMLError("no feature varies over the training rows: nothing to fit a polynomial on")
        self.features_ = tuple(n for n, v in zip(names, varies) if v)
        x = x[:, varies]
        self.scale_ = np.array([np.median(c[c > 0]) for c in x.T])
        total = len(y) if sample_weight is None else float(np.sum(sample_weight))
        # alpha per unit of total weight; SVD: the monomials of near-duplicate features are nearly collinear
        self.model_ = make_pipeline(PolynomialFeatures(self.degree, include_bias=False), StandardScaler(),
                                    Ridge(alpha=self.alpha * total, solver="svd"))
        self.model_.fit(np.log1p(x / self.scale_), np.log(y), ridge__sample_weight=sample_weight)
        self.n_terms_ = int(self.model_[0].n_output_features_) + 1
        return self

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.exp(self.model_.predict(self._logs(columns)))


def _tree_features(frame: pd.DataFrame) -> tuple[str, ...]:
    features = tuple(f.name for f in catalog.available_features(frame.columns))
    if not features:
        raise StepMLError("the data has no feature columns (batch.*, kv.*, arch.*) to grow trees on")
    return features


#: CLI name → factory of an unfitted baseline.
BASELINES: Registry[Callable[[], Any]] = Registry("baseline", lambda: {
    "naive": NaiveMean,
    "blackbox": lambda: LinearBaseline(BLACKBOX_FEATURES, None, "blackbox"),
    "blackbox-per-exp": lambda: LinearBaseline(BLACKBOX_FEATURES, "experiment_id", "blackbox-per-exp"),
    "roofline": lambda: Roofline(False),
    "roofline-cal": lambda: Roofline(True),
    "gbt": GradientBoosted,
    "xgboost": XGBoost,
    "poly2": LogPolynomial,
})


def make_baseline(name: str) -> Any:
    """An unfitted baseline by CLI name; an unknown name lists the valid ones."""
    return BASELINES.get(name)()


def fit_baseline(name: str, dataset: Any, rows: np.ndarray, weighted: bool = False) -> Any:
    """Fit a baseline on the given rows (the training part) of a dataset.

    With ``weighted`` the fit weights rows by the dataset's weight column (the cycle gap).
    """
    model = make_baseline(name)
    w = dataset.weights if weighted else None
    return model.fit(dataset.frame.iloc[rows], dataset.y[rows], None if w is None else w[rows])


# -- leaderboard CLI -------------------------------------------------------------------------

def leaderboard(dataset: Any, spec: str = "temporal", names: Sequence[str] | None = None,
                seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Fit every baseline on each split's training part and score its test part.

    Returns rows ``{"group", "baseline", "mape", "mspe", "ci", "n"}`` (one per
    experiment, or per held-out group for leave-one-out folds; plus an ``all``
    row per fold) and notes about baselines that could not run.
    """
    from evaluation.scorer import score
    from features.splits import make_splits

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for split in make_splits(dataset.frame, spec, dataset.content_hash()):
        for name in names or list(BASELINES):
            try:
                model = fit_baseline(name, dataset, split.train)
            except (StepMLError, ValueError, np.linalg.LinAlgError) as exc:  # the data cannot support it
                if not any(n.startswith(name + ":") for n in notes):
                    notes.append(f"{name}: skipped ({exc})")
                continue
            card = score(model, dataset, split, ci=True, seed=seed)
            if split.fold:
                test = card.overall["test"]
                rows.append(_row(split.fold, name, test))
            else:
                for group, m in card.groups[("test", "experiment_id")].items():
                    rows.append(_row(group, name, m))
                rows.append(_row("all", name, card.overall["test"]))
    return rows, notes


def _row(group: str, name: str, m: Mapping[str, Any]) -> dict[str, Any]:
    ci = m.get("mape_ci") or [float("nan"), float("nan")]
    return {"group": str(group), "baseline": name, "mape": float(m["mape"]), "mspe": float(m["mspe"]),
            "ci": [float(ci[0]), float(ci[1])], "n": int(m["n"])}


def format_leaderboard(rows: list[dict[str, Any]]) -> str:
    """A text table: one row per group, one column per baseline (test MAPE, MSPE, CI)."""
    table = pd.DataFrame(rows)
    if table.empty:
        return "(no rows)"
    names = list(dict.fromkeys(table["baseline"]))
    groups = list(dict.fromkeys(table["group"]))
    width = max(len(g) for g in groups) + 2
    cell = 34
    head = f"{'group':<{width}}" + "".join(f"{n:>{cell}}" for n in names)
    lines = [head, f"{'':<{width}}" + "".join(f"{'MAPE% [95% CI] MSPE%':>{cell}}" for _ in names)]
    for g in groups:
        cells = []
        for n in names:
            r = table[(table["group"] == g) & (table["baseline"] == n)]
            if r.empty:
                cells.append(f"{'-':>{cell}}")
                continue
            r = r.iloc[0]
            cells.append(f" {r['mape']:7.2f} [{r['ci'][0]:7.2f},{r['ci'][1]:8.2f}] {r['mspe']:+7.1f}".rjust(cell))
        lines.append(f"{g:<{width}}" + "".join(cells))
    return "\n".join(lines)


def to_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The leaderboard as a Markdown table."""
    table = pd.DataFrame(rows)
    pivot = table.pivot_table(index="group", columns="baseline", values="mape", sort=False)
    out = [f"# {title}", "", "Test MAPE (%) per group and baseline.", "",
           "| group | " + " | ".join(pivot.columns) + " |", "|---" * (len(pivot.columns) + 1) + "|"]
    for g, r in pivot.iterrows():
        out.append(f"| {g} | " + " | ".join(f"{v:.2f}" for v in r.to_numpy()) + " |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.baselines``."""
    from features.describe import add_data_arguments, dataset_from_args
    from features.io import atomic_write_frame, atomic_write_text, check_writable_dir

    parser = argparse.ArgumentParser(prog="python -m evaluation.baselines",
                                     description="Fit every baseline on the training part and print a test leaderboard.")
    add_data_arguments(parser)
    parser.add_argument("--split", default="temporal",
                        help="temporal (default), random, kfold[:K], lomo, lowo or logo:COLUMN")
    parser.add_argument("--baselines", default=None, help=f"comma-separated subset of: {', '.join(BASELINES)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap CIs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default=None, help="also write leaderboard.csv and leaderboard.md into this folder")
    args = parser.parse_args(argv)
    names = args.baselines.split(",") if args.baselines else None
    for n in names or ():
        make_baseline(n)
    if args.seed < 0:
        raise StepMLError(f"--seed must be >= 0, got {args.seed}")
    if args.out:
        check_writable_dir(args.out, "--out")
    dataset = dataset_from_args(args)
    rows, notes = leaderboard(dataset, args.split, names, seed=args.seed)
    if not rows:
        raise StepMLError(f"no baseline could run on {dataset.label}: {'; '.join(notes) or 'no rows'}")
    target = {"target.cycle_us": "cycle", "target.duration_us": "duration"}.get(dataset.target, dataset.target)
    if args.json:
        from features.io import json_safe

        print(json.dumps(json_safe({"split": args.split, "target": target, "data": dataset.label, "rows": rows,
                                    "notes": notes})))
    else:
        print(f"data: {dataset.label}   target: {target}   split: {args.split}   (test part)")
        print(format_leaderboard(rows))
        for note in notes:
            print(f"note: {note}")
    if args.out:
        flat = pd.DataFrame([{**r, "ci_lo": r["ci"][0], "ci_hi": r["ci"][1]} for r in rows]).drop(columns="ci")
        atomic_write_frame(f"{args.out}/leaderboard.csv", flat)
        atomic_write_text(f"{args.out}/leaderboard.md", to_markdown(rows, f"Baselines: {dataset.label}, {target}, {args.split}"))
        print(f"wrote {args.out}/leaderboard.csv and leaderboard.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from features.cli import run

    run(main, prog="evaluation.baselines")
