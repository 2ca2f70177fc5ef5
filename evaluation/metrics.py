"""Accuracy metrics for step-latency predictions.

Every metric is a pure numpy function of ``y_true`` (measured step times) and
``y_pred`` (predicted step times), with an optional non-negative ``weights``
vector (for example the cycle-time gap each step accounts for).

Conventions shared by all functions
-----------------------------------
* **Invalid targets are excluded.**  Rows whose target is zero, negative, NaN
  or infinite are dropped before any metric is computed (we never divide by
  them).  :func:`valid_target_mask` gives the mask and :func:`n_excluded` the
  number of dropped rows; :func:`summary` reports both ``n`` and
  ``n_excluded``.
* **Bad predictions are never dropped silently.**  Finite predictions, even
  zero or negative ones, are used as they are.  A non-finite prediction (NaN or
  +/-inf) counts as an *infinite* error: its absolute percentage error (APE) is
  ``inf`` so :func:`mape` becomes ``inf``.  :func:`prediction_problems`
  counts such predictions so an ``inf`` metric can be explained.
* **Weights** must be finite and ``>= 0``.  Rows of zero weight contribute
  nothing.  If all weights on the valid rows are zero the metric is ``nan``.
* **Empty input** (no valid rows) gives ``nan``, never a warning.
* Percentages are in percent (``12.5`` means 12.5 %); fractions are in
  ``[0, 1]``.

Nothing is computed at import time; scipy is only imported by
:func:`wilcoxon_p`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "valid_target_mask",
    "n_excluded",
    "mape",
    "mspe",
    "smape",
    "pearson_r",
    "r2",
    "ape_percentiles",
    "frac_over",
    "bootstrap_ci",
    "wilcoxon_p",
    "prediction_problems",
    "summary",
]

# Number of int64 indices drawn per bootstrap chunk (~16 MB per temporary).
_BOOTSTRAP_CHUNK_ELEMENTS = 1 << 21

# Variances below this fraction of the raw second moment are treated as zero
# (a constant column whose weighted mean is off by rounding).
_REL_VAR_EPS = 1e-20


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------
def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr.reshape(-1)


def _prepare(
    y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate inputs and return ``(t, p, w)`` restricted to valid targets."""
    t = _as_1d(y_true, "y_true")
    p = _as_1d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred lengths differ: {t.size} vs {p.size}")
    w = None
    if weights is not None:
        w = _as_1d(weights, "weights")
        if w.shape != t.shape:
            raise ValueError(f"weights length {w.size} does not match y_true length {t.size}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite")
        if np.any(w < 0):
            raise ValueError("weights must be >= 0")
    mask = valid_target_mask(t)
    t = t[mask]
    p = p[mask]
    if w is not None:
        w = w[mask]
    return t, p, w


def _ape(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row absolute percentage error; ``inf`` for non-finite predictions."""
    with np.errstate(all="ignore"):
        ape = np.abs(p - t) / t * 100.0
    ape[~np.isfinite(p)] = np.inf
    return ape


def _spe(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row signed percentage error (``+/-inf`` for ``+/-inf``, NaN for NaN predictions)."""
    with np.errstate(all="ignore"):
        return (p - t) / t * 100.0


def _smape_terms(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row symmetric APE in percent; ``inf`` for non-finite predictions."""
    with np.errstate(all="ignore"):
        s = 200.0 * np.abs(p - t) / (np.abs(p) + np.abs(t))
    s[~np.isfinite(p)] = np.inf
    return s


def _rsum(col: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    """Sum of a per-row column over each resample (``idx=None``: the full sample)."""
    return col[None, :].sum(axis=-1) if idx is None else col[idx].sum(axis=-1)


def _weighted_col(v: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """``w * v`` with zero-weight rows contributing exactly 0 (even if v is inf/NaN)."""
    if w is None:
        return v
    with np.errstate(all="ignore"):
        return np.where(w > 0, w * v, 0.0)


def _weight_total(w: np.ndarray | None, n: int, idx: np.ndarray | None) -> np.ndarray:
    if w is None:
        size = n if idx is None else idx.shape[-1]
        k = 1 if idx is None else idx.shape[0]
        return np.full(k, float(size))
    return _rsum(w, idx)


def _mean_stat(v: np.ndarray, w: np.ndarray | None, idx: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) mean of per-row values ``v`` for each resample; nan if no weight.

    Non-finite values propagate naturally (inf stays inf, +inf with -inf or any
    NaN gives NaN).
    """
    sw = _weight_total(w, v.size, idx)
    with np.errstate(all="ignore"):
        num = _rsum(_weighted_col(v, w), idx)
        return np.where(sw > 0, num / np.where(sw > 0, sw, 1.0), np.nan)


def _centered(t: np.ndarray, p: np.ndarray, w: np.ndarray | None):
    """Shift targets/predictions by their full-sample (weighted) means.

    Returns ``(ts, ps, nonfinite_p, tscale2, pscale2)`` where non-finite
    predictions are zeroed in ``ps`` and flagged in ``nonfinite_p``; the scales
    are squared maxima used to decide when a variance is zero up to rounding.
    """
    finite = np.isfinite(p)
    pz = np.where(finite, p, 0.0)
    ww = np.ones_like(t) if w is None else w
    with np.errstate(all="ignore"):
        sw = ww.sum()
        swp = ww[finite].sum()
        shift_t = (ww * t).sum() / sw if sw > 0 else 0.0
        shift_p = (ww * pz).sum() / swp if swp > 0 else 0.0
        tscale2 = float(np.max(t * t)) if t.size else 0.0   # inf for huge finite values: a huge scale, as meant
        pscale2 = float(np.max(pz * pz)) if pz.size else 0.0
    return t - shift_t, pz - shift_p, ~finite, tscale2, pscale2


def _pearson_stat(t: np.ndarray, p: np.ndarray, w: np.ndarray | None, idx: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) Pearson r for each resample (``idx=None``: full sample)."""
    ts, ps, nonfinite, tsc2, psc2 = _centered(t, p, w)
    sw = _weight_total(w, t.size, idx)
    with np.errstate(all="ignore"):
        bad = np.zeros(sw.shape, dtype=bool)
        if nonfinite.any():
            flag = nonfinite if w is None else nonfinite & (w > 0)
            bad = _rsum(flag.astype(float), idx) > 0
        st = _rsum(_weighted_col(ts, w), idx)
        sp = _rsum(_weighted_col(ps, w), idx)
        stt = _rsum(_weighted_col(ts * ts, w), idx)
        spp = _rsum(_weighted_col(ps * ps, w), idx)
        stp = _rsum(_weighted_col(ts * ps, w), idx)
        swd = np.where(sw > 0, sw, 1.0)
        vt = stt - st * st / swd
        vp = spp - sp * sp / swd
        cov = stp - st * sp / swd
        degenerate = (sw <= 0) | bad | (vt <= _REL_VAR_EPS * sw * tsc2) | (vp <= _REL_VAR_EPS * sw * psc2)
        r = np.clip(cov / np.sqrt(np.where(degenerate, 1.0, vt * vp)), -1.0, 1.0)
    return np.where(degenerate, np.nan, r)


def _r2_stat(t: np.ndarray, p: np.ndarray, w: np.ndarray | None, idx: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) R^2 for each resample; non-finite predictions give ``-inf``."""
    ts = _centered(t, p, w)[0]
    tsc2 = float(np.max(t * t)) if t.size else 0.0
    sw = _weight_total(w, t.size, idx)
    with np.errstate(all="ignore"):
        res2 = np.where(np.isfinite(p), (t - p) ** 2, np.inf)
        ss_res = _rsum(_weighted_col(res2, w), idx)
        st = _rsum(_weighted_col(ts, w), idx)
        stt = _rsum(_weighted_col(ts * ts, w), idx)
        ss_tot = stt - st * st / np.where(sw > 0, sw, 1.0)
        degenerate = (sw <= 0) | (ss_tot <= _REL_VAR_EPS * sw * tsc2)
        out = 1.0 - ss_res / np.where(degenerate, 1.0, ss_tot)
    return np.where(degenerate, np.nan, out)


def _weighted_quantile(values: np.ndarray, q: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Quantiles (``q`` in 0..1) with linear interpolation, robust to ``inf`` values.

    With ``w=None`` this equals ``np.percentile(values, 100*q)`` (the default
    "linear" method).  With weights, sorted value ``i`` sits at plotting
    position ``(S_i - w_i) / (S_n - w_n)`` (``S`` = cumulative weight), which
    reduces to the unweighted rule for equal weights.  Zero-weight values are
    ignored.
    """
    q = np.asarray(q, dtype=float)
    if w is not None:
        keep = w > 0
        values, w = values[keep], w[keep]
    if values.size == 0:
        return np.full(q.shape, np.nan)
    order = np.argsort(values, kind="stable")
    v = values[order]
    if v.size == 1:
        return np.full(q.shape, v[0])
    if w is None:
        pos = np.linspace(0.0, 1.0, v.size)
    else:
        ws = w[order]
        cum = np.cumsum(ws)
        denom = cum[-1] - ws[-1]
        pos = (cum - ws) / denom if denom > 0 else np.zeros(v.size)
        pos[-1] = 1.0
    hi = np.clip(np.searchsorted(pos, q, side="right"), 1, v.size - 1)
    lo = hi - 1
    with np.errstate(all="ignore"):
        span = pos[hi] - pos[lo]
        frac = np.where(span > 0, (q - pos[lo]) / np.where(span > 0, span, 1.0), 1.0)
        frac = np.clip(frac, 0.0, 1.0)
        mid = v[lo] * (1.0 - frac) + v[hi] * frac
    out = np.where(frac <= 0, v[lo], np.where(frac >= 1, v[hi], mid))
    return np.where(v[lo] == v[hi], v[lo], out)


# --------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------
def valid_target_mask(y_true: ArrayLike) -> np.ndarray:
    """Mask of rows whose target can be used as a denominator.

    Parameters
    ----------
    y_true : array-like
        Measured values.

    Returns
    -------
    numpy.ndarray of bool
        ``True`` where the target is finite and strictly positive.
    """
    t = _as_1d(y_true, "y_true")
    with np.errstate(invalid="ignore"):
        return np.isfinite(t) & (t > 0)


def n_excluded(y_true: ArrayLike) -> int:
    """Number of rows excluded because their target is zero, negative, NaN or inf.

    Parameters
    ----------
    y_true : array-like
        Measured values.

    Returns
    -------
    int
        Count of rows for which :func:`valid_target_mask` is ``False``.
    """
    return int((~valid_target_mask(y_true)).sum())


def mape(y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Mean absolute percentage error, in percent.

    ``mean(|pred - true| / true) * 100`` over valid-target rows (weighted mean
    when ``weights`` is given).

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    weights : array-like, optional
        Non-negative finite per-row weights.

    Returns
    -------
    float
        MAPE in percent; ``inf`` if any (positively weighted) prediction is
        non-finite; ``nan`` when there are no valid rows or all weights are 0.
    """
    t, p, w = _prepare(y_true, y_pred, weights)
    return float(_mean_stat(_ape(t, p), w)[0])


def mspe(y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Mean signed percentage error (bias), in percent.

    ``mean((pred - true) / true) * 100``; positive means over-prediction.

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    weights : array-like, optional
        Non-negative finite per-row weights.

    Returns
    -------
    float
        Signed mean percentage error.  A ``+inf``/``-inf`` prediction gives
        ``+inf``/``-inf`` (``nan`` if both occur); a NaN prediction has no sign
        and gives ``nan``.  ``nan`` when there are no valid rows or all weights
        are 0.
    """
    t, p, w = _prepare(y_true, y_pred, weights)
    return float(_mean_stat(_spe(t, p), w)[0])


def smape(y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Symmetric mean absolute percentage error, in percent (0..200).

    ``mean(200 * |pred - true| / (|pred| + |true|))``.

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    weights : array-like, optional
        Non-negative finite per-row weights.

    Returns
    -------
    float
        sMAPE in percent; ``inf`` if any (positively weighted) prediction is
        non-finite (so bad predictions are not hidden by the 200 % cap);
        ``nan`` when there are no valid rows or all weights are 0.
    """
    t, p, w = _prepare(y_true, y_pred, weights)
    return float(_mean_stat(_smape_terms(t, p), w)[0])


def pearson_r(y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike | None = None) -> float:
    """(Weighted) Pearson correlation between targets and predictions.

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    weights : array-like, optional
        Non-negative finite per-row weights.

    Returns
    -------
    float
        Correlation in ``[-1, 1]``; ``nan`` if either side has zero variance,
        fewer than two rows carry weight, or a positively weighted prediction
        is non-finite.
    """
    t, p, w = _prepare(y_true, y_pred, weights)
    return float(_pearson_stat(t, p, w)[0])


def r2(y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike | None = None) -> float:
    """(Weighted) coefficient of determination of the predictions.

    ``1 - sum w (true - pred)^2 / sum w (true - mean_w(true))^2``.

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    weights : array-like, optional
        Non-negative finite per-row weights.

    Returns
    -------
    float
        R^2 (can be negative); ``-inf`` if a positively weighted prediction is
        non-finite; ``nan`` if the targets have zero variance or there is no
        weight.
    """
    t, p, w = _prepare(y_true, y_pred, weights)
    return float(_r2_stat(t, p, w)[0])


def ape_percentiles(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    q: Sequence[float] = (50, 90, 99),
    weights: ArrayLike | None = None,
) -> dict[str, float]:
    """Percentiles of the absolute percentage error.

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    q : sequence of float, default (50, 90, 99)
        Percentiles in 0..100.
    weights : array-like, optional
        Non-negative finite per-row weights (weighted linear-interpolation
        quantiles; equal weights reproduce ``np.percentile``).

    Returns
    -------
    dict of str to float
        Keys ``"p50"``, ``"p90"``, ... (``f"p{q:g}"``), values in percent.
        Non-finite predictions have APE ``inf``; ``nan`` values when there are
        no valid rows.
    """
    qs = np.asarray(q, dtype=float).reshape(-1)
    if np.any((qs < 0) | (qs > 100)) or not np.all(np.isfinite(qs)):
        raise ValueError("percentiles must be within [0, 100]")
    t, p, w = _prepare(y_true, y_pred, weights)
    vals = _weighted_quantile(_ape(t, p), qs / 100.0, w)
    return {f"p{qq:g}": float(v) for qq, v in zip(qs, vals)}


def frac_over(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    threshold: float = 50.0,
    weights: ArrayLike | None = None,
) -> float:
    """Fraction (0..1) of valid rows whose APE exceeds ``threshold`` percent.

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    threshold : float, default 50.0
        APE threshold in percent (strict ``>``).
    weights : array-like, optional
        Non-negative finite per-row weights (weighted fraction).

    Returns
    -------
    float
        Fraction in ``[0, 1]``; non-finite predictions count as over the
        threshold; ``nan`` when there are no valid rows or all weights are 0.
    """
    t, p, w = _prepare(y_true, y_pred, weights)
    return float(_mean_stat((_ape(t, p) > threshold).astype(float), w)[0])


def prediction_problems(y_pred: ArrayLike) -> dict[str, int]:
    """Count problematic predictions.

    Parameters
    ----------
    y_pred : array-like
        Predicted values (all rows, valid target or not).

    Returns
    -------
    dict of str to int
        ``nan``: NaN predictions; ``inf``: +/-inf predictions; ``nonpositive``:
        finite predictions ``<= 0``.  The three categories are disjoint.
    """
    p = _as_1d(y_pred, "y_pred")
    finite = np.isfinite(p)
    return {
        "nan": int(np.isnan(p).sum()),
        "inf": int(np.isinf(p).sum()),
        "nonpositive": int((finite & (p <= 0)).sum()),
    }


# --------------------------------------------------------------------------
# uncertainty and significance
# --------------------------------------------------------------------------
def _per_row_metric(metric: Callable[..., float]) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """Per-row term for metrics that are (weighted) means of a per-row value."""
    if metric is mape:
        return _ape
    if metric is mspe:
        return _spe
    if metric is smape:
        return _smape_terms
    if metric is frac_over:
        return lambda t, p: (_ape(t, p) > 50.0).astype(float)
    return None


def bootstrap_ci(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    metric: Callable[..., float] = mape,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int | None = 0,
    weights: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric, resampling rows.

    Rows with invalid targets are dropped first; the remaining rows (with their
    weights) are resampled with replacement using ``np.random.default_rng(seed)``.
    :func:`mape`, :func:`mspe`, :func:`smape`, :func:`frac_over` (default
    threshold), :func:`pearson_r` and :func:`r2` are fully vectorised
    (indices drawn as ``(chunk, n)`` integer arrays, per-row errors computed
    once).  Any other callable ``metric(y_true, y_pred[, weights=...])`` is
    evaluated resample by resample on the same indices.

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    metric : callable, default :func:`mape`
        Scalar metric.
    n_resamples : int, default 1000
        Number of bootstrap resamples (>= 1).
    level : float, default 0.95
        Confidence level in (0, 1).
    seed : int or None, default 0
        Seed for ``np.random.default_rng``; equal seeds give equal intervals.
    weights : array-like, optional
        Non-negative finite per-row weights, carried along with their rows.

    Returns
    -------
    tuple of (float, float)
        ``(lo, hi)`` percentiles ``100*(1-level)/2`` and ``100*(1+level)/2`` of
        the resampled metric.  ``(nan, nan)`` if there are no valid rows or the
        metric on the full sample is ``nan``; resamples whose metric is ``nan``
        (e.g. zero total weight) are otherwise ignored.
    """
    if int(n_resamples) < 1:
        raise ValueError("n_resamples must be >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    n_resamples = int(n_resamples)
    t, p, w = _prepare(y_true, y_pred, weights)
    n = t.size
    if n == 0:
        return (float("nan"), float("nan"))

    per_row = _per_row_metric(metric)
    if per_row is not None:
        values = per_row(t, p)
        point = _mean_stat(values, w)[0]
    elif metric is pearson_r or metric is r2:
        stat = _pearson_stat if metric is pearson_r else _r2_stat
        point = stat(t, p, w)[0]
    else:
        point = metric(t, p) if w is None else metric(t, p, weights=w)
    if np.isnan(point):
        return (float("nan"), float("nan"))

    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    with np.errstate(all="ignore"):
        for start in range(0, n_resamples, chunk):
            k = min(chunk, n_resamples - start)
            idx = rng.integers(0, n, size=(k, n))
            if per_row is not None:
                stats[start : start + k] = _mean_stat(values, w, idx)
            elif metric is pearson_r or metric is r2:
                stats[start : start + k] = stat(t, p, w, idx)
            else:
                for j in range(k):
                    ii = idx[j]
                    if w is None:
                        stats[start + j] = metric(t[ii], p[ii])
                    else:
                        stats[start + j] = metric(t[ii], p[ii], weights=w[ii])

    stats = stats[~np.isnan(stats)]
    alpha = (1.0 - level) / 2.0
    lo, hi = _weighted_quantile(stats, np.array([alpha, 1.0 - alpha]), None)
    return (float(lo), float(hi))


def wilcoxon_p(errors_a: ArrayLike, errors_b: ArrayLike) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired per-group errors.

    Typical use: per-experiment MAPE of a candidate formula (``errors_a``)
    versus a baseline (``errors_b``) on the same experiments.

    Parameters
    ----------
    errors_a, errors_b : array-like
        Paired errors, same length.  Pairs where either value is non-finite
        are dropped.

    Returns
    -------
    float
        ``scipy.stats.wilcoxon(errors_a, errors_b).pvalue`` (two-sided);
        ``nan`` when fewer than 2 pairs remain or all differences are zero.
    """
    a = _as_1d(errors_a, "errors_a")
    b = _as_1d(errors_b, "errors_b")
    if a.shape != b.shape:
        raise ValueError(f"errors_a and errors_b lengths differ: {a.size} vs {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 2 or np.all(a - b == 0):
        return float("nan")
    from scipy.stats import wilcoxon  # lazy: keep module import cheap

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            res = wilcoxon(a, b, alternative="two-sided")
        except ValueError:
            return float("nan")
    return float(res.pvalue)


# --------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------
def summary(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    weights: ArrayLike | None = None,
    ci: bool = False,
    seed: int | None = 0,
) -> dict[str, Any]:
    """All headline metrics in one pass (APE computed once).

    Parameters
    ----------
    y_true, y_pred : array-like
        Measured and predicted values, same length.
    weights : array-like, optional
        Non-negative finite per-row weights applied to every metric.
    ci : bool, default False
        Also compute a 95 % bootstrap CI of MAPE (1000 resamples).
    seed : int or None, default 0
        Seed for the bootstrap.

    Returns
    -------
    dict
        ``n`` (valid rows), ``n_excluded`` (invalid-target rows), ``mape``,
        ``mspe``, ``smape``, ``r``, ``r2``, ``p50``, ``p90``, ``p99``,
        ``frac_over_50``, ``bad_predictions`` (:func:`prediction_problems` over
        all given predictions) and, if ``ci``, ``mape_ci`` as ``[lo, hi]``.
    """
    t_all = _as_1d(y_true, "y_true")
    p_all = _as_1d(y_pred, "y_pred")
    t, p, w = _prepare(t_all, p_all, weights)
    ape = _ape(t, p)
    pct = _weighted_quantile(ape, np.array([0.50, 0.90, 0.99]), w)
    out: dict[str, Any] = {
        "n": int(t.size),
        "n_excluded": int(t_all.size - t.size),
        "mape": float(_mean_stat(ape, w)[0]),
        "mspe": float(_mean_stat(_spe(t, p), w)[0]),
        "smape": float(_mean_stat(_smape_terms(t, p), w)[0]),
        "r": float(_pearson_stat(t, p, w)[0]),
        "r2": float(_r2_stat(t, p, w)[0]),
        "p50": float(pct[0]),
        "p90": float(pct[1]),
        "p99": float(pct[2]),
        "frac_over_50": float(_mean_stat((ape > 50.0).astype(float), w)[0]),
    }
    if ci:
        lo, hi = bootstrap_ci(t, p, metric=mape, seed=seed, weights=w)
        out["mape_ci"] = [lo, hi]
    out["bad_predictions"] = prediction_problems(p_all)
    return out
