"""The search objective, defined once: loss, linear scaling, constant fitting, probe penalty, complexity, front.

Every engine (DEAP, Operon, PySR, a PySR import) and the rescoring of a run
measure a formula with this module, so a loss or a complexity means the same
number wherever it is shown.

Loss of a formula on a problem's training rows
----------------------------------------------
For the raw output ``f`` of a tree (DEAP, Operon), :class:`Objective`

1. **linear scaling**: the slope ``a`` and intercept ``b`` minimising
   ``Σ w·((a·f + b − y)/y)²`` in closed form (``w`` = the problem's training
   weights, or 1), :func:`linear_scaling`;
2. **constant fitting** (:meth:`Objective.fit`, when the tree has numeric
   constants): Levenberg–Marquardt (``scipy.optimize.least_squares(method="lm")``)
   on every constant of the tree, inside any operator, with ``a, b`` re-solved
   in closed form at every step (variable projection), at most ``max_nfev``
   evaluations on at most :data:`FIT_ROWS` training rows (a fixed subsample);
   kept only if it lowers the error on all rows;
3. **mean relative error** ``Σ w·|pred − y| / y / Σ w`` of ``pred = b + a·f``,
   a *fraction* (:func:`relative_error`); NaN, ±inf or ``pred <= 0`` on any
   row gives ``inf``;
4. **probe constraint** (unless the space's ``constraint_mode`` is ``off``): the
   fraction of the problem's probe pairs where the prediction decreases
   (``pred(hi) < pred(lo) − 1e-9·|pred(lo)|``) or either prediction is not
   finite and positive (:func:`violation_fraction`); ``penalise`` multiplies
   the error by ``1 + 10·fraction``, ``reject`` makes it ``inf`` if the
   fraction is > 0 (:func:`constrained_loss`). Where the problem knows the
   roofline lower bound of its training rows (``Problem.floor_train``), the
   fraction of rows predicted below it (faster than the hardware's peak
   FLOP/s and bandwidth allow) is added to the violation.

A finished formula (an engine's candidate, a PySR equation) is measured the
same way without steps 1–2 (:meth:`Objective.formula_loss`); at rescoring
every numeric constant of it (inside any operator) is refined by
Levenberg–Marquardt on the relative error, bounded in evaluations, and the
result kept only if its loss is lower (:meth:`Objective.refine`).

Target transforms
-----------------
With a target transform (:mod:`search_spaces.transforms`: ``efficiency``, the
utilisation ``roofline time / latency``; ``log``) the tree models the
transformed target ``t``: steps 1–2 fit ``a·f + b`` to ``t`` (relative
residuals ``(a·f + b − t)/t``, or absolute ones in log space), while the loss
of steps 3–4 is always that of the *latency* prediction
``inverse(a·f + b)`` (``roofline / (a·f + b)`` or ``exp(a·f + b)``), the
probe and roofline-floor checks included.

Units: losses are fractions inside the code; ``hall_of_fame.csv`` and every
table shown to a user give them in percent, like the validation and test
MAPE (see :mod:`discovery.rundir`).

Complexity and the Pareto front
-------------------------------
:func:`complexity` is the operator-table weight of an expression's canonical
prefix form (:mod:`search_spaces.prefix`): leaves 1, each operator its weight.
:func:`pareto_mask` marks the rows not dominated in (complexity, loss);
:func:`pareto_front` applies it to candidates.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from features.errors import StepMLError
from search_spaces.transforms import NONE

if TYPE_CHECKING:
    import sympy

    from discovery.candidate import Problem

__all__ = ["CONST_RIDGE", "PENALTY", "PROBE_RTOL", "REFINE_MAX_NFEV", "Fit", "Objective", "complexity",
           "constrained_loss", "linear_scaling", "pareto_front", "pareto_mask", "relative_error", "violation_fraction"]

#: Relative slack of the monotonicity check: ``pred(hi) < pred(lo) − PROBE_RTOL·|pred(lo)|`` violates.
PROBE_RTOL = 1e-9
#: Penalty factor of ``constraint_mode = "penalise"``: loss × (1 + PENALTY·violation fraction).
PENALTY = 10.0
#: Ridge on the change of a tree's constants during their fit (see :meth:`Objective.fit_constants`).
CONST_RIDGE = 1e-8
#: Forward-difference step of the constants' Jacobian (relative to max(1, |c|)).
_FD_STEP = math.sqrt(np.finfo(float).eps)
#: Residual standing in for a non-finite one during the constant fit.
_BAD_RESIDUAL = 1e3
#: Evaluations (Jacobian columns included) per constant of :meth:`Objective.refine` (its bound: iterations).
REFINE_MAX_NFEV = 40
#: Training rows the in-search constant fit uses (a fixed subsample of larger problems; scaling and loss use all).
FIT_ROWS = 512


# =============================================================================== pure pieces


def relative_error(pred: np.ndarray, y: np.ndarray, wn: np.ndarray | None = None) -> float:
    """Mean relative error ``|pred − y| / y`` (a fraction), ``inf`` when any prediction is not finite and > 0.

    Parameters
    ----------
    pred, y : array
        Predictions and (finite, positive) targets.
    wn : array, optional
        Normalised row weights (``Σ wn = 1``); None for the plain mean.
    """
    if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
        return math.inf
    if wn is None:
        return float(np.mean(np.abs(pred - y) / y))
    return float(np.sum(wn * np.abs(pred - y) / y))


def linear_scaling(f: np.ndarray, y: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    """Slope and intercept minimising ``Σ u·(a·f + b − y)²`` (``u = w / y²`` for relative residuals).

    A constant ``f`` (or non-finite moments) gives ``a = 0`` and the ``u``-weighted mean of ``y``.
    """
    u = np.asarray(u, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    su = float(np.sum(u))
    ym = float(np.dot(u, y)) / su
    return _scale(np.asarray(f, dtype=np.float64), u, su, ym, y - ym)


def _scale(f: np.ndarray, u: np.ndarray, su: float, ym: float, yc: np.ndarray) -> tuple[float, float]:
    """:func:`linear_scaling` with the target's moments precomputed (``yc = y − ym``)."""
    fm = float(np.dot(u, f)) / su
    if not math.isfinite(fm):
        return 0.0, ym
    df = f - fm
    ud = u * df
    sff = float(np.dot(ud, df))
    if not math.isfinite(sff) or sff <= 1e-300 or sff <= 1e-24 * su * fm * fm:
        return 0.0, ym
    a = float(np.dot(ud, yc)) / sff
    b = ym - a * fm
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0, ym
    return a, b


def violation_fraction(pairs: Iterable[tuple[np.ndarray, np.ndarray]], rtol: float = PROBE_RTOL) -> float:
    """Fraction of probe pairs ``(pred_lo, pred_hi)`` (pooled over all pairs given) that violate.

    A pair violates when ``pred_hi < pred_lo − rtol·|pred_lo|`` (the
    prediction decreases though the batch grew) or when either prediction is
    not finite and positive. No pairs → 0.
    """
    bad = total = 0
    for lo, hi in pairs:
        lo = np.asarray(lo, dtype=float)
        hi = np.asarray(hi, dtype=float)
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi > 0) & ~(hi < lo - rtol * np.abs(lo))
        bad += int(lo.size - np.count_nonzero(ok))
        total += int(lo.size)
    return bad / total if total else 0.0


def constrained_loss(loss: float, violation: float, mode: str) -> float:
    """The selection loss: ``penalise`` → loss·(1 + 10·violation); ``reject`` → inf if any violation;
    ``off`` → loss."""
    if mode == "off" or not math.isfinite(loss):
        return loss
    if mode == "reject":
        return math.inf if violation > 0 else loss
    if mode == "penalise":
        return loss * (1.0 + PENALTY * violation)
    raise StepMLError(f"unknown constraint mode '{mode}'; valid: penalise, reject, off")


# =============================================================================== the objective


class Fit(NamedTuple):
    """The result of :meth:`Objective.fit`: constants (fitted or as given), scaling, losses, work done.

    ``loss`` is the selection loss (constraint applied), ``mre`` the plain
    training mean relative error, ``violation`` the probe fraction; ``evals``
    counts evaluations of the tree (on all training rows, or on the constant
    fit's rows), ``rows`` the rows evaluated over all of them and ``probe_rows``
    the probe rows evaluated.
    """

    consts: list[float]
    a: float
    b: float
    loss: float
    mre: float
    violation: float
    evals: int
    probe_rows: int
    rows: int = 0


class Objective:
    """The training loss of formulas on a problem (see the module docstring). Picklable.

    Parameters
    ----------
    problem : Problem
        Features, training rows and weights, probe pairs, the space's constraint mode and the
        target transform (``problem.transform``, with the roofline time per row ``problem.scale_train``).
    max_nfev : int
        ``least_squares`` evaluations for constants in :meth:`fit` (0 = linear scaling only).

    Attributes
    ----------
    features : tuple of str
    X : tuple of arrays
        Training feature columns, in ``features`` order.
    y, w : array
        Training target (the latency); weights (None = every row counts once).
    transform : TargetTransform
    t : array
        The transformed target the trees model (``y`` without a transform).
    s : array or None
        The roofline time per training row (``efficiency``), else None.
    mode : str
        The constraint mode.
    probe_sizes : tuple of int
        Pairs per monotone axis (sorted by axis); ``P`` holds the probes' feature
        columns, every axis's ``lo`` rows, then every axis's ``hi`` rows.
    """

    def __init__(self, problem: "Problem", max_nfev: int = 50) -> None:
        features = tuple(problem.features)
        self.features = features
        self.X = tuple(np.ascontiguousarray(problem.X_train[f], dtype=np.float64) for f in features)
        self.y = np.ascontiguousarray(problem.y_train, dtype=np.float64)
        if self.y.ndim != 1 or self.y.size == 0:
            raise StepMLError("the problem has no training rows")
        if any(x.shape != self.y.shape for x in self.X):
            raise StepMLError("training features and target differ in length")
        if not (np.all(np.isfinite(self.y)) and np.all(self.y > 0)):
            raise StepMLError("training target must be finite and > 0 (relative loss)")
        w = None if problem.w_train is None else np.ascontiguousarray(problem.w_train, dtype=np.float64)
        if w is not None and (w.shape != self.y.shape or not np.all(np.isfinite(w)) or np.any(w < 0)
                              or not np.sum(w) > 0):
            raise StepMLError("training weights must be finite, >= 0, not all zero and match the target")
        self.w = w
        self.mode = problem.space.constraint_mode
        self.transform = getattr(problem, "transform", None) or NONE
        scaled = self.transform.needs_scale
        self.s = np.ascontiguousarray(problem.scale_train, dtype=np.float64) if scaled else None
        if scaled and (self.s is None or self.s.shape != self.y.shape):
            raise StepMLError(f"target transform {self.transform.spec}: the roofline time of the training rows is "
                              "missing or differs in length from the target")
        with np.errstate(all="ignore"):
            self.t = np.ascontiguousarray(self.transform.forward(self.y, self.s), dtype=np.float64)
        if not (np.all(np.isfinite(self.t)) and (not self.transform.relative or np.all(self.t > 0))):
            raise StepMLError(f"target transform {self.transform.spec}: the transformed target is not finite and > 0")
        columns = features + ((str(self.transform.feature),) if scaled else ())
        lo_blocks: list[list[np.ndarray]] = []
        hi_blocks: list[list[np.ndarray]] = []
        sizes = []
        if self.mode != "off":
            for axis in sorted(problem.probes):
                lo, hi = problem.probes[axis]
                n = len(lo[features[0]]) if features else 0
                if n == 0:
                    continue
                lo_blocks.append([np.asarray(lo[f], dtype=np.float64) for f in columns])
                hi_blocks.append([np.asarray(hi[f], dtype=np.float64) for f in columns])
                sizes.append(n)
        self.probe_sizes = tuple(sizes)
        stacked = tuple(np.ascontiguousarray(np.concatenate([b[j] for b in lo_blocks] + [b[j] for b in hi_blocks]))
                        for j in range(len(columns))) if sizes else ()
        self.P = stacked[:len(features)]
        #: The roofline time on the probe rows (``efficiency``; same order as ``P``), else None.
        self.P_scale = stacked[len(features)] if scaled and sizes else None
        self.max_nfev = int(max_nfev)
        floor = getattr(problem, "floor_train", None)
        self.floor = None if floor is None or self.mode == "off" else np.ascontiguousarray(floor, dtype=np.float64)
        if self.floor is not None and self.floor.shape != self.y.shape:
            raise StepMLError("the roofline floor and the training target differ in length")
        self._setup()

    # -- derived state (rebuilt after unpickling) -----------------------------------------------
    def _setup(self) -> None:
        w = np.ones_like(self.y) if self.w is None else self.w
        t = self.t
        self._wsum = float(np.sum(w))
        self._wn = w / self._wsum  # normalised weights of the mean relative error
        # weights of the squared residual in the transformed space: relative (w / t²) or absolute (log space)
        self._u = w / (t * t) if self.transform.relative else w / self._wsum
        self._su = float(np.sum(self._u))
        self._ym = float(np.dot(self._u, t)) / self._su
        self._yc = t - self._ym
        # Σ r² = weighted mean squared (relative) residual of the transformed target
        self._rel_scale = np.sqrt(w / self._wsum) / (t if self.transform.relative else 1.0)
        self._lat_scale = np.sqrt(w / self._wsum) / self.y  # the same for the latency (refine)
        self._bad = np.full(self.y.shape, _BAD_RESIDUAL)
        # the constant fit's rows: all, or a fixed subsample (the same for every tree, every process)
        n = self.n_rows
        rows = np.arange(n) if n <= FIT_ROWS else np.sort(np.random.default_rng(0).choice(n, FIT_ROWS, replace=False))
        wf, tf = w[rows], t[rows]
        self._fit_X = tuple(np.ascontiguousarray(x[rows]) for x in self.X)
        self._fit_t = tf
        self._fit_u = wf / (tf * tf) if self.transform.relative else wf / float(np.sum(wf))
        self._fit_su = float(np.sum(self._fit_u))
        self._fit_ym = float(np.dot(self._fit_u, tf)) / self._fit_su
        self._fit_yc = tf - self._fit_ym
        self._fit_sw = np.sqrt(wf / float(np.sum(wf))) / (tf if self.transform.relative else 1.0)
        self._fit_bad = np.full(rows.shape, _BAD_RESIDUAL)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    # -- the pieces ---------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Training rows."""
        return int(self.y.shape[0])

    def scale(self, f: np.ndarray) -> tuple[float, float]:
        """:func:`linear_scaling` of raw outputs ``f`` to the (transformed) target on the training rows."""
        return _scale(f, self._u, self._su, self._ym, self._yc)

    def latency(self, z: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """Latency predictions of transformed-space values ``z`` (``scale``: the rows' roofline time,
        default the training rows')."""
        if self.transform.kind == "none":
            return z
        return self.transform.inverse(z, self.s if scale is None else scale)

    def mre(self, pred: np.ndarray) -> float:
        """Training mean relative error of predictions (weighted; a fraction)."""
        return relative_error(pred, self.y, self._wn)

    @property
    def formula_features(self) -> tuple[str, ...]:
        """Features a finished (latency) formula may read: the search's, and the roofline time of ``efficiency``."""
        extra = str(self.transform.feature) if self.s is not None else None
        return self.features + ((extra,) if extra is not None and extra not in self.features else ())

    def formula_data(self) -> dict[str, np.ndarray]:
        """The training columns of :attr:`formula_features`."""
        data = dict(zip(self.features, self.X))
        if self.s is not None:
            data.setdefault(str(self.transform.feature), self.s)
        return data

    def probe_pairs(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """The probe pairs per axis as (lo features, hi features) dicts (with the roofline time of ``efficiency``)."""
        out, start, m = [], 0, sum(self.probe_sizes)
        columns = list(zip(self.features, self.P))
        if self.P_scale is not None and str(self.transform.feature) not in self.features:
            columns.append((str(self.transform.feature), self.P_scale))
        for k in self.probe_sizes:
            lo = {f: col[start:start + k] for f, col in columns}
            hi = {f: col[m + start:m + start + k] for f, col in columns}
            out.append((lo, hi))
            start += k
        return out

    def split_probes(self, pred: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(lo, hi) predictions per axis from predictions over ``P``'s rows."""
        m = sum(self.probe_sizes)
        pairs, start = [], 0
        for k in self.probe_sizes:
            pairs.append((pred[start:start + k], pred[m + start:m + start + k]))
            start += k
        return pairs

    def _probe_latency(self, a: float, b: float,
                       outputs: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Latency predictions on the probe pairs from raw tree outputs per axis."""
        if self.transform.kind == "none":
            return ((a * lo + b, a * hi + b) for lo, hi in outputs)
        scales = self.split_probes(self.P_scale) if self.P_scale is not None else None
        return ((self.latency(a * lo + b, None if scales is None else scales[i][0]),
                 self.latency(a * hi + b, None if scales is None else scales[i][1]))
                for i, (lo, hi) in enumerate(outputs))

    # -- losses ---------------------------------------------------------------------------------
    def scaled_loss(self, f: np.ndarray,
                    probe_outputs: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None,
                    scaled: tuple[float, float, float] | None = None) -> tuple[float, float, float, float, float]:
        """(a, b, loss, mre, violation) of raw tree outputs ``f`` on the training rows.

        ``probe_outputs()`` gives the raw outputs on the probe pairs (evaluated
        only when needed); ``scaled`` = (a, b, mre) when already known.
        """
        if not np.all(np.isfinite(f)):
            return 0.0, 0.0, math.inf, math.inf, 1.0
        a, b, mre = scaled if scaled is not None else (*self.scale(f), math.nan)
        pred = self.latency(a * f + b)
        if scaled is None:
            mre = self.mre(pred)
        violation = 0.0
        if self.probe_sizes and probe_outputs is not None and math.isfinite(mre):
            violation = violation_fraction(self._probe_latency(a, b, probe_outputs()))
        if math.isfinite(mre):
            violation = min(1.0, violation + self.below_floor(pred))
        return a, b, constrained_loss(mre, violation, self.mode), mre, violation

    def below_floor(self, pred: np.ndarray) -> float:
        """Fraction of training rows predicted below the roofline lower bound (0 without a bound)."""
        if self.floor is None:
            return 0.0
        return float(np.mean(pred < self.floor * (1.0 - PROBE_RTOL)))

    def formula_loss(self, predict: Callable[[Mapping[str, np.ndarray]], np.ndarray]) -> tuple[float, float, float]:
        """(loss, plain MRE, violation fraction) of a finished formula: ``predict`` maps feature columns
        to predictions (no scaling, no constant fit)."""
        with np.errstate(all="ignore"):
            pred = np.asarray(predict(self.formula_data()), dtype=np.float64)
            mre = self.mre(pred)
            violation = 0.0
            if self.probe_sizes and math.isfinite(mre):
                violation = violation_fraction((predict(lo), predict(hi)) for lo, hi in self.probe_pairs())
            if math.isfinite(mre):
                violation = min(1.0, violation + self.below_floor(np.broadcast_to(pred, self.y.shape)))
        return constrained_loss(mre, violation, self.mode), mre, violation

    @staticmethod
    def run(fn: Callable[..., Any], c: Sequence[float], arrays: Sequence[np.ndarray], n: int) -> np.ndarray:
        """``fn(c, *arrays)`` as a float64 array of length ``n`` (a constant tree broadcast)."""
        out = np.asarray(fn(c, *arrays), dtype=np.float64)
        return out if out.shape == (n,) else np.broadcast_to(out, (n,))

    def fit(self, fn: Callable[..., Any], consts: list[float]) -> Fit:
        """Scale, fit the constants of and score a compiled tree ``fn(c, *feature_arrays)`` (steps 1–4)."""
        n = self.n_rows
        evals = 1
        with np.errstate(all="ignore"):
            f = self.run(fn, consts, self.X, n)
            if not np.all(np.isfinite(f)):
                return Fit(consts, 0.0, 0.0, math.inf, math.inf, 1.0, evals, 0, n)
            a, b = self.scale(f)
            mre = self.mre(self.latency(a * f + b))
            rows = n
            if consts and self.max_nfev > 0:
                fitted, calls = self.fit_constants(fn, consts)
                evals += calls
                rows += calls * self._fit_t.shape[0]
                if fitted is not None:
                    f2 = self.run(fn, fitted, self.X, n)
                    evals += 1
                    rows += n
                    if np.all(np.isfinite(f2)):
                        a2, b2 = self.scale(f2)
                        mre2 = self.mre(self.latency(a2 * f2 + b2))
                        if mre2 < mre:
                            consts, f, a, b, mre = fitted, f2, a2, b2, mre2
            probe_rows = 2 * sum(self.probe_sizes) if self.probe_sizes and math.isfinite(mre) else 0
            final = consts
            a, b, loss, mre, violation = self.scaled_loss(
                f, lambda: self.split_probes(self.run(fn, final, self.P, probe_rows)), (a, b, mre))
        return Fit(consts, a, b, loss, mre, violation, evals, probe_rows, rows)

    def fit_constants(self, fn: Callable[..., Any], consts: list[float]) -> tuple[list[float] | None, int]:
        """Levenberg–Marquardt (``least_squares(method="lm")``) on the constants, ``a, b`` projected out.

        The residuals are the relative errors of the (transformed) target (absolute ones in log
        space) scaled by ``sqrt(w / Σw)`` plus a tiny ridge
        ``sqrt(CONST_RIDGE)·(c − c₀)/max(1, |c₀|)`` that pins the directions the fit does not
        determine (an additive constant or a common factor of the tree, absorbed by ``a, b``).
        On a problem with more than :data:`FIT_ROWS` training rows the fit uses a
        fixed subsample of them (the scaling and the loss that decide whether the
        fit is kept use every row). Returns (the constants, or None when the fit
        failed or changed nothing; evaluations made on the fit's rows).
        """
        from scipy.optimize import least_squares

        calls = 0
        X = self._fit_X
        n = self._fit_t.shape[0]
        u, su, ym, yc, y, sw = self._fit_u, self._fit_su, self._fit_ym, self._fit_yc, self._fit_t, self._fit_sw
        c0 = np.asarray(consts, dtype=np.float64)
        k = c0.shape[0]
        ridge = math.sqrt(CONST_RIDGE) / np.maximum(1.0, np.abs(c0))
        bad = np.concatenate([self._fit_bad, np.zeros(k)])
        last: list[Any] = [None, None]

        def residual(c: np.ndarray) -> np.ndarray:
            nonlocal calls
            calls += 1
            f = self.run(fn, c, X, n)
            a, b = _scale(f, u, su, ym, yc)
            r = np.concatenate([sw * (a * f + b - y), ridge * (c - c0)])
            if not math.isfinite(float(np.dot(r, r))):
                r = bad
            last[0], last[1] = c.copy(), r
            return r

        def jacobian(c: np.ndarray) -> np.ndarray:
            r0 = last[1] if last[0] is not None and np.array_equal(last[0], c) else residual(c)
            jac = np.empty((n + k, k))
            for j in range(k):
                step = c.copy()
                step[j] += _FD_STEP * max(1.0, abs(c[j]))
                jac[:, j] = (residual(step) - r0) / (step[j] - c[j])
            return jac

        try:
            fit = least_squares(residual, c0, jac=jacobian, method="lm", max_nfev=self.max_nfev)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            return None, calls
        c = [float(v) for v in fit.x]
        if not all(math.isfinite(v) for v in c) or c == consts:
            return None, calls
        return c, calls

    def refine(self, expr: "sympy.Expr",
               max_nfev_per_constant: int = REFINE_MAX_NFEV) -> tuple["sympy.Expr", float]:
        """Refit every numeric constant of a finished latency formula; returns (formula, loss).

        Every occurrence of a float in the formula (a scale, an offset, a
        constant inside ``sqrt``, ``max``, a divisor …; integers and exponents
        stay) is a parameter of Levenberg–Marquardt
        (``least_squares(method="lm")``, forward-difference Jacobian, at most
        ``max_nfev_per_constant × (k + 1)`` evaluations for ``k`` constants) on the
        relative errors of the latency, weighted by ``sqrt(w / Σw)``. The refitted
        formula is kept only when its loss (:meth:`formula_loss`, constraints
        included) is lower; otherwise ``expr`` and its loss are returned.
        Deterministic: the same formula and data give the same constants.
        """
        import sympy
        from scipy.optimize import least_squares

        from search_spaces.numeric import lambdify_formula

        features = self.formula_features
        loss0 = self.formula_loss(lambdify_formula(expr, features))[0]
        names: list[str] = []
        start: list[float] = []

        def parametrise(e: Any) -> Any:
            if isinstance(e, sympy.Float):
                names.append(f"refine_c{len(names)}")
                start.append(float(e))
                return sympy.Symbol(names[-1])
            if not e.args:
                return e
            return e.func(*[parametrise(a) for a in e.args])

        body = parametrise(expr)
        k = len(names)
        if k == 0 or k > self.n_rows or max_nfev_per_constant <= 0 or not math.isfinite(loss0):
            return expr, loss0
        fn = lambdify_formula(body, features + tuple(names))
        data = self.formula_data()
        n, y, sw = self.n_rows, self.y, self._lat_scale

        def residual(c: np.ndarray) -> np.ndarray:
            for name, value in zip(names, c):
                data[name] = np.full(n, value)
            with np.errstate(all="ignore"):
                r = sw * (np.asarray(fn(data), dtype=np.float64) - y)
            return r if np.all(np.isfinite(r)) else self._bad

        try:
            fit = least_squares(residual, np.asarray(start), method="lm", x_scale="jac",
                                max_nfev=max_nfev_per_constant * (k + 1))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            return expr, loss0
        values = [float(v) for v in fit.x]
        if values == start or not all(math.isfinite(v) for v in values):
            return expr, loss0
        fitted = body.xreplace({sympy.Symbol(name): sympy.Float(v) for name, v in zip(names, values)})
        loss = self.formula_loss(lambdify_formula(fitted, features))[0]
        return (fitted, loss) if loss < loss0 else (expr, loss0)


# =============================================================================== complexity and front


def complexity(expr: "sympy.Expr") -> int:
    """Operator-table complexity of an expression: the weight of its canonical prefix form.

    A leaf (symbol, number) counts 1, an operator its table weight; sympy's
    ``Add``/``Mul`` read as ``add``, ``sub`` (a term with coefficient −1),
    ``neg``, ``mul`` and ``div`` (factors with negative exponents), other
    forms through the table's patterns (``x**2`` = ``square``, ``Max(0, u)``
    = ``relu``, ``Max`` of ``n`` arguments = ``n − 1`` ``max`` …); a node
    outside the table (``x**4``, ``exp``) costs
    :data:`~search_spaces.operators.FALLBACK_COMPLEXITY` plus its arguments.
    This is the complexity of sympy's canonical form, which may differ from
    that of the tree an engine built (sympy folds ``x*x`` into ``x**2``).

    Raises
    ------
    StepMLError
        If ``expr`` is not a scalar sympy expression.
    """
    import sympy

    from search_spaces.prefix import from_sympy, weight

    try:
        e = sympy.sympify(expr)
    except (sympy.SympifyError, TypeError) as exc:
        raise StepMLError(f"not a sympy expression: {expr!r}") from exc
    if not isinstance(e, sympy.Expr):
        raise StepMLError(f"not a scalar sympy expression: {expr!r}")
    return weight(from_sympy(e))


def pareto_mask(complexity: Sequence[float], loss: Sequence[float]) -> np.ndarray:
    """True for rows not dominated in (complexity, loss); ties keep the first row; non-finite losses never."""
    c = np.asarray(complexity, dtype=float)
    l = np.asarray(loss, dtype=float)
    order = np.lexsort((np.arange(len(c)), l, c))
    keep = np.zeros(len(c), dtype=bool)
    best = math.inf
    for i in order:
        if np.isfinite(l[i]) and l[i] < best:
            keep[i] = True
            best = l[i]
    return keep


_C = TypeVar("_C")


def pareto_front(candidates: Iterable[_C]) -> list[_C]:
    """The candidates (with ``complexity`` and ``loss``) not dominated, by complexity; ties keep the first."""
    items = list(candidates)
    keep = pareto_mask([c.complexity for c in items], [c.loss for c in items])  # type: ignore[attr-defined]
    chosen = [c for c, k in zip(items, keep) if k]
    return sorted(chosen, key=lambda c: c.complexity)  # type: ignore[attr-defined]
