"""``python -m discovery.calibrate``: fit a formula's constants and the request overheads on measured latencies.

A step-time formula found on step traces is only as good as the request
latencies it implies. This command fits, together,

* every numeric constant of the formula (its efficiency multipliers and
  overheads, each kept on the sign it had — a multiplier stays a multiplier),
* the client → scheduler delay (``queueing``: HTTP and tokenisation before the
  engine sees a request),

with the tail after the last token (``post_decode``) taken from the
measurements themselves (E2E − TTFT − TPOT·(2n + 1) of each report,
:func:`evaluation.latency_metrics.end_tail_s`; 1.6–2.5 ms on the BLIS runs), not
fitted: fitted, it soaks up step-time error,

so that replaying the experiments (:mod:`evaluation.replay`, vLLM's async
scheduling on) reproduces their measured mean E2E, TTFT and ITL per stage, and,
where step traces of those experiments are given (``--steps``), the measured
step cycle times.

Loss (reported; lower is better, in %): RMSE over experiments of the relative
error of mean E2E + the same of mean TTFT + of mean ITL, plus the mean step MAPE
over the experiments with step traces.

How the optimiser replays
-------------------------
A replay takes seconds, so the optimiser does not replay for every trial
point. Each **outer iteration** replays every experiment once at the current
constants (in parallel, on the search's mappers: ``--processes``, ``--workers``,
``--scheduler``), keeping the first ``--requests`` requests of each stage, and
freezes each replay into an :class:`~evaluation.calibration.Anchor`. The
**inner fit** then re-times the anchors for trial constants (exact at the
anchor, first-order elsewhere: batch composition frozen) and minimises the
squared residuals with ``scipy.optimize.least_squares`` (trust-region
reflective, bounds, finite-difference Jacobian — each trial costs milliseconds).
The next outer iteration replays at the fitted constants, so the batches follow
the new step times; it stops when the replayed loss stops improving
(``--tol``), after ``--iterations``, or at ``--budget``. The best replayed point
wins. Why not a derivative-free optimiser directly on replays (BLIS fits its
trained-physics model with Bayesian search and CMA-ES): with 8–10 constants it
needs hundreds of replays of every experiment; the anchored fit needs 3–6.

The result is an artifact (``artifact.json``, schema ``stepml-artifact/1``) with
the calibrated formula, its features' definitions over canonical columns (not
baked to one model: it predicts any model with a config), the overheads, the
scheduler setting, per-experiment errors, the loss history and the operating
range of the fitted steps (:mod:`evaluation.operating_range`; a replay outside
it says it extrapolates). ``replay``, ``audit`` and ``export`` read it. A
killed run continues with ``--resume``.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import sympy

from evaluation.calibration import METRICS, Anchor, anchor_means
from evaluation.operating_range import OperatingRange, fit_range
from features import catalog
from features.cli import run
from features.errors import StepMLError

__all__ = ["CalibrationSettings", "CalibrationResult", "ParamFormula", "calibrate", "main"]

STATE_FILE = "calibration_state.json"
#: Fraction of the way from the best replayed point to the anchored fit taken by the next replay. Replays
#: of the BLIS experiments overshoot by about 2× when the whole step is taken: longer steps mean bigger
#: batches, which the frozen anchors do not see.
STEP_FRACTION = 0.5
#: Overheads fitted beside the formula: name → (initial s, upper bound s).
OVERHEADS = {"queue_overhead_s": (0.009, 0.5), "end_overhead_s": (0.002, 0.1)}


@dataclass(frozen=True)
class CalibrationSettings:
    """How a calibration runs (see the module docstring).

    Attributes
    ----------
    requests_per_stage : int
        Requests replayed per stage in each outer iteration (0 = all).
    warmup_s : float
        Requests sent in the first seconds of a stage are left out of its means.
    max_iterations : int
        Outer iterations (replays of every experiment).
    tol : float
        Stop when the replayed loss improves by less than this fraction.
    budget_s : float
        Wall-clock budget; checked between outer iterations.
    seed : int
        Workload seed of the replays.
    async_scheduling : bool
        Replay with vLLM's one-step-ahead scheduling.
    step_weight : float
        Weight of the step-trace residuals against the request residuals.
    prior_weight : float
        Weight of the pull of each constant towards its starting value (relative
        deviation, squared). It settles the directions the data cannot tell
        apart — with three tensor-parallel models a per-layer cost and a
        per-all-reduce cost are the same thing, and a one-GPU model then depends
        on how they were split — and is too weak to move an identified constant.
    """

    requests_per_stage: int = 1500
    warmup_s: float = 10.0
    max_iterations: int = 6
    tol: float = 0.01
    budget_s: float = 1800.0
    seed: int = 0
    async_scheduling: bool = True
    step_weight: float = 1.0
    prior_weight: float = 1e-3
    roofline_floor: bool = True

    def __post_init__(self) -> None:
        if self.requests_per_stage < 0 or self.max_iterations < 1 or not self.budget_s > 0:
            raise StepMLError("calibration needs --requests >= 0, --iterations >= 1 and --budget > 0")
        if not (self.tol >= 0 and self.warmup_s >= 0 and self.step_weight >= 0 and self.prior_weight >= 0):
            raise StepMLError("calibration needs --tol, warm-up, step and prior weights >= 0")


def _parametrize(expr: sympy.Expr, values: list[float]) -> sympy.Expr:
    """``expr`` with every Float occurrence replaced by a new symbol ``theta_i`` (its value appended to ``values``)."""
    if isinstance(expr, sympy.Float):
        values.append(float(expr))
        return sympy.Symbol(f"theta_{len(values) - 1}")
    if not expr.args:
        return expr
    return expr.func(*[_parametrize(a, values) for a in expr.args])


ROOFLINE_BOUND = "rl_bound"


def with_roofline_floor(expr: sympy.Expr) -> sympy.Expr:
    """``Max(rl_bound, expr)``: the formula, never below the step's roofline lower bound.

    Step traces sampled every few steps report a cycle time averaged over the
    unsampled steps around a sampled one, so prefill-heavy samples look faster
    than the hardware allows and a fit learns multipliers below 1 (BLIS's
    trained-physics fits 0.15 on prefill). The floor keeps every prediction
    physical — the audit's INV-M-7 holds by construction — while the fitted
    constants still describe the typical step. A formula that already has the
    floor is returned unchanged.
    """
    bound = sympy.Symbol(ROOFLINE_BOUND)
    if isinstance(expr, sympy.Max) and bound in expr.args:
        return expr
    return sympy.Max(bound, expr)


class ParamFormula:
    """A formula whose numeric constants are parameters, evaluated over canonical columns.

    Parameters
    ----------
    expr : sympy.Expr
        The formula over catalogue feature symbols.
    """

    def __init__(self, expr: sympy.Expr) -> None:
        from search_spaces.numeric import lambdify_formula
        from search_spaces.symbols import symbol_name

        self.expr = expr
        self.features = tuple(sorted(str(s) for s in expr.free_symbols))
        values: list[float] = []
        template = _parametrize(expr, values)
        self.values = tuple(values)
        self.params = tuple(sympy.Symbol(f"theta_{i}") for i in range(len(values)))
        self.template = template
        definitions = {sympy.Symbol(f): catalog.get_feature(f).sympy_expr() for f in self.features}
        canonical = template.xreplace(definitions)
        self.columns = tuple(sorted(s.name for s in canonical.free_symbols if s not in self.params))
        safe = canonical.xreplace({sympy.Symbol(c): sympy.Symbol(symbol_name(c)) for c in self.columns})
        self._fn = lambdify_formula(safe, list(self.columns) + [p.name for p in self.params])

    @property
    def x0(self) -> np.ndarray:
        """The formula's own constants (one per occurrence: equal values are not tied)."""
        return np.array(self.values, dtype=float)

    def durations(self, theta: Sequence[float], columns: Mapping[str, Any], n: int) -> np.ndarray:
        """Step times (µs) for parameter values ``theta`` on ``n`` rows of canonical columns."""
        data = {c: np.broadcast_to(np.asarray(columns[c], dtype=float).reshape(-1), (n,)) for c in self.columns}
        data.update({p.name: np.full(n, float(t)) for p, t in zip(self.params, theta)})
        with np.errstate(all="ignore"):
            return np.asarray(self._fn(data), dtype=float)

    def with_values(self, theta: Sequence[float]) -> sympy.Expr:
        """The formula with ``theta`` in place of its constants."""
        return self.template.xreplace({p: sympy.Float(float(t)) for p, t in zip(self.params, theta)})


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` found.

    Attributes
    ----------
    expr : sympy.Expr
        The calibrated formula.
    overheads : dict
        ``queue_overhead_s`` and ``end_overhead_s``.
    loss : float
        Replayed loss at the result (%, module docstring).
    errors : dict
        Experiment → window → signed % errors of E2E, TTFT, ITL (replayed at the result).
    step_mape : dict
        Experiment → step MAPE (%) where step traces were given.
    history : list of dict
        One entry per outer iteration: constants, overheads, replayed loss, surrogate loss.
    operating_range : OperatingRange or None
        The range of the steps the constants were fitted on: the calibration
        replays' simulated steps and the step traces (:mod:`evaluation.operating_range`).
    """

    expr: sympy.Expr
    overheads: dict[str, float]
    loss: float
    errors: dict[str, dict[str, dict[str, float]]]
    step_mape: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    operating_range: OperatingRange | None = None


# -- replays in workers ---------------------------------------------------------------------------

def replay_anchor(exp_dir: str, srepr: str, features: tuple[str, ...], overheads: Mapping[str, float],
                  settings: CalibrationSettings) -> Anchor:
    """Replay one experiment with a formula (given as srepr text) and freeze it (module-level: picklable)."""
    from evaluation.calibration import anchor_from_replay, measured_means
    from evaluation.predictors import FormulaPredictor
    from evaluation.replay import replay_experiment
    from search_spaces.operators import parse_formula

    expr = parse_formula(srepr, list(features), indexed=False)
    predictor = FormulaPredictor(expr, tuple(catalog.registry()), name="calibration")
    result = replay_experiment(exp_dir, predictor, settings.seed, overheads["queue_overhead_s"],
                               end_overhead_s=overheads["end_overhead_s"],
                               max_requests=settings.requests_per_stage or None, capacity=False, explain=False,
                               async_scheduling=settings.async_scheduling, keep_sim=True)
    return anchor_from_replay(result, measured_means(exp_dir), overheads["queue_overhead_s"],
                              overheads["end_overhead_s"], settings.warmup_s)


# -- residuals --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepRows:
    """Measured step cycle times of one experiment (columns and targets)."""

    experiment_id: str
    columns: Mapping[str, np.ndarray]
    y: np.ndarray


def step_rows(data: str | Path, experiment_ids: Iterable[str]) -> list[StepRows]:
    """Cycle-time rows of the given experiments in a step table (idle-dominated intervals trimmed).

    Rows whose cycle time is outside 0.5–2× the experiment's median are idle
    gaps or stalls no step formula explains; they are left out.
    """
    from features.dataset import load_dataset

    wanted = set(experiment_ids)
    dataset = load_dataset(data, "cycle")
    frame = dataset.frame
    ids = frame["experiment_id"].astype(str).to_numpy()
    out = []
    for exp in sorted(set(ids) & wanted):
        rows = ids == exp
        y = dataset.y[rows]
        med = float(np.median(y))
        keep = (y >= 0.5 * med) & (y <= 2.0 * med)
        sub = frame.loc[rows]
        cols = {c: sub[c].to_numpy(dtype=float)[keep] for c in sub.columns
                if c.startswith(("batch.", "kv.", "queue.", "arch.", "hw."))}
        out.append(StepRows(exp, cols, y[keep]))
    return out


def _split(x: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, float]]:
    return x[:k], {name: float(x[k + i]) for i, name in enumerate(OVERHEADS)}


def request_errors(formula: ParamFormula, anchors: Sequence[Anchor], x: np.ndarray,
                   exact: bool = False) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Relative errors (fractions) of (E2E, TTFT, ITL) per experiment and window.

    ``exact`` uses each anchor's own replayed durations and overheads (the
    replay itself) instead of re-timing for ``x``.
    """
    theta, over = _split(x, len(formula.params))
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for a in anchors:
        if exact:
            means = anchor_means(a, a.durations_us, a.queue_overhead_s, a.end_overhead_s)
        else:
            cols = {**a.steps, **a.constants}
            means = anchor_means(a, formula.durations(theta, cols, a.num_steps), over["queue_overhead_s"],
                                 over["end_overhead_s"])
        out[a.experiment_id] = {w: tuple((p - m) / m for p, m in zip(means[w], a.measured[w])) for w in means}
    return out


def step_errors(formula: ParamFormula, rows: Sequence[StepRows], theta: np.ndarray) -> dict[str, np.ndarray]:
    """Relative step-time errors (fractions) per experiment with step traces."""
    return {r.experiment_id: (formula.durations(theta, r.columns, r.y.size) - r.y) / r.y for r in rows}


def loss_of(req: Mapping[str, Mapping[str, Sequence[float]]], steps: Mapping[str, np.ndarray]) -> float:
    """The reported loss in % (module docstring): Σ over metrics of the RMSE over experiments, + step MAPE."""
    total = 0.0
    for i, _metric in enumerate(METRICS):
        per_exp = [np.mean([w[i] for w in windows.values()]) for windows in req.values() if windows]
        total += 100.0 * float(np.sqrt(np.mean(np.square(per_exp)))) if per_exp else 0.0
    if steps:
        total += 100.0 * float(np.mean([np.mean(np.abs(e)) for e in steps.values()]))
    return total


def residual_vector(formula: ParamFormula, anchors: Sequence[Anchor], rows: Sequence[StepRows],
                    settings: CalibrationSettings, x: np.ndarray) -> np.ndarray:
    """Residuals minimised by the inner fit: request errors per window, scaled step errors, the prior's pull."""
    k = len(formula.params)
    req = request_errors(formula, anchors, x)
    parts = [np.array([e for windows in req.values() for w in windows.values() for e in w], dtype=float)]
    for errors in step_errors(formula, rows, x[:k]).values():
        parts.append(errors * math.sqrt(settings.step_weight / max(1, errors.size)))
    prior = formula.x0
    parts.append(math.sqrt(settings.prior_weight) * (x[:k] - prior) / np.maximum(np.abs(prior), 1e-12))
    res = np.concatenate(parts)
    return np.where(np.isfinite(res), res, 1e3)


def _bounds(x0: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Constants keep their sign; the queue overhead is in [0, bound]; the measured end tail stays put."""
    lo = np.where(x0[:k] > 0, 0.0, -np.inf)
    hi = np.where(x0[:k] < 0, 0.0, np.inf)
    end = float(x0[k + list(OVERHEADS).index("end_overhead_s")])
    over_lo = [0.0 if name != "end_overhead_s" else end for name in OVERHEADS]
    over_hi = [b if name != "end_overhead_s" else end * (1 + 1e-9) + 1e-12 for name, (_, b) in OVERHEADS.items()]
    return np.concatenate([lo, over_lo]), np.concatenate([hi, over_hi])


def measured_end_tail(experiments: Sequence[Path]) -> float:
    """Mean time from the last streamed line to the request's end over the experiments' stage reports (s)."""
    from evaluation.latency_metrics import end_tail_s, read_lifecycle_report
    from evaluation.workloads import experiment_profile

    tails = []
    for exp in experiments:
        output = experiment_profile(exp).data.output_len
        for path in sorted(Path(exp, "results").glob("stage_*_lifecycle_metrics.json")):
            tail = end_tail_s(read_lifecycle_report(path), output)
            if np.isfinite(tail) and tail >= 0:
                tails.append(tail)
    return float(np.mean(tails)) if tails else OVERHEADS["end_overhead_s"][0]


def inner_fit(formula: ParamFormula, anchors: Sequence[Anchor], rows: Sequence[StepRows],
              settings: CalibrationSettings, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares fit of constants and overheads on the re-timed anchors; returns (x, surrogate loss)."""
    from scipy.optimize import least_squares

    k = len(formula.params)
    lo, hi = _bounds(x, k)
    start = np.clip(x, lo, hi)

    def fun(v: np.ndarray) -> np.ndarray:
        return residual_vector(formula, anchors, rows, settings, v)

    scale = np.maximum(np.abs(start), 1e-3)
    fit = least_squares(fun, start, bounds=(lo, hi), x_scale=scale, method="trf", max_nfev=200 * (len(x) + 1))
    req = request_errors(formula, anchors, fit.x)
    return fit.x, loss_of(req, step_errors(formula, rows, fit.x[:k]))


# -- the outer loop ---------------------------------------------------------------------------------

def _replay_all(mapper: Callable[..., Iterable[Any]], formula: ParamFormula, x: np.ndarray,
                experiments: Sequence[Path], settings: CalibrationSettings) -> list[Anchor]:
    theta, over = _split(x, len(formula.params))
    srepr = sympy.srepr(formula.with_values(theta))
    n = len(experiments)
    return list(mapper(replay_anchor, [str(e) for e in experiments], [srepr] * n, [formula.features] * n,
                       [over] * n, [settings] * n))


def _signed_percent(req: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    return {exp: {w: {f"{m}_err": 100.0 * float(v) for m, v in zip(METRICS, errs)} for w, errs in windows.items()}
            for exp, windows in req.items()}


def calibrate(expr: sympy.Expr, experiments: Sequence[str | Path], steps: str | Path | None = None,
              settings: CalibrationSettings | None = None, mapper: Callable[..., Iterable[Any]] | None = None,
              state: Mapping[str, Any] | None = None, checkpoint: Callable[[dict[str, Any]], None] | None = None,
              echo: Callable[[str], None] = lambda _: None) -> CalibrationResult:
    """Calibrate ``expr`` on ``experiments`` (module docstring); the Python API behind the CLI.

    Parameters
    ----------
    expr : sympy.Expr
        Formula over catalogue features; its Float constants are fitted.
    experiments : sequence of path
        Experiment folders (``exp-config.yaml``, ``profile.yaml``, ``results/``).
    steps : path, optional
        A step table; rows of the calibration experiments add their step MAPE.
    settings : CalibrationSettings, optional
    mapper : callable, optional
        ``map``-like (:mod:`discovery.engines.parallel`); default builtin ``map``.
    state : mapping, optional
        A state given to ``checkpoint`` earlier: the calibration continues from it.
    checkpoint : callable, optional
        Called with a JSON-ready state after every outer iteration.
    echo : callable
        Progress lines.

    Returns
    -------
    CalibrationResult
    """
    settings = settings or CalibrationSettings()
    mapper = mapper or map
    formula = ParamFormula(with_roofline_floor(expr) if settings.roofline_floor else expr)
    exps = [Path(e) for e in experiments]
    rows = step_rows(steps, [e.name for e in exps]) if steps else []
    k = len(formula.params)
    start = {**{name: v for name, (v, _) in OVERHEADS.items()}, "end_overhead_s": measured_end_tail(exps)}
    x = np.concatenate([formula.x0, [start[name] for name in OVERHEADS]])
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    alpha, target, fitted = STEP_FRACTION, None, None
    if state:
        x, history, best = np.asarray(state["x"], dtype=float), list(state["history"]), state.get("best")
        alpha, target = float(state.get("alpha", alpha)), state.get("target")
        fitted = state.get("operating_range")
    started = time.monotonic()
    while len(history) < settings.max_iterations and time.monotonic() - started < settings.budget_s:
        anchors = _replay_all(mapper, formula, x, exps, settings)
        span = fit_range([{**a.constants, **a.steps} for a in anchors] + [r.columns for r in rows],
                         f"{len(anchors)} calibration replay(s)" + (f" and {len(rows)} step trace(s)" if rows else ""))
        fitted = span.to_dict() if span is not None else fitted
        req = request_errors(formula, anchors, x, exact=True)
        replayed = loss_of(req, step_errors(formula, rows, x[:k]))
        entry = {"iteration": len(history), "x": x.tolist(), "replayed_loss": replayed, "step_fraction": alpha,
                 "seconds": round(time.monotonic() - started, 2)}
        history.append(entry)
        if best is None or replayed < best["loss"]:
            gain = 1.0 if best is None else 1.0 - replayed / best["loss"]
            best = {"x": x.tolist(), "loss": replayed, "errors": _signed_percent(req)}
            target, entry["surrogate_loss"] = inner_fit(formula, anchors, rows, settings, x)
            echo(f"iteration {entry['iteration']}: replayed loss {replayed:.2f} %, fitted on the anchors "
                 f"{entry['surrogate_loss']:.2f} %")
            if gain < settings.tol:
                break
        else:
            alpha /= 2.0  # the step replayed worse: the load feedback was stronger than the frozen batches say
            echo(f"iteration {entry['iteration']}: replayed loss {replayed:.2f} % (no better; step fraction {alpha:g})")
            if alpha < STEP_FRACTION / 8:
                break
        x = np.asarray(best["x"]) + alpha * (np.asarray(target) - np.asarray(best["x"]))
        if checkpoint is not None:
            checkpoint({"x": x.tolist(), "history": history, "best": best, "target": np.asarray(target).tolist(),
                        "alpha": alpha, "operating_range": fitted})
    assert best is not None
    theta, over = _split(np.asarray(best["x"]), k)
    mape = {e: 100.0 * float(np.mean(np.abs(v))) for e, v in step_errors(formula, rows, theta).items()}
    return CalibrationResult(formula.with_values(theta), over, float(best["loss"]), best["errors"], mape, history,
                             OperatingRange.from_dict(fitted) if fitted else None)


# -- artifact -------------------------------------------------------------------------------------------

def artifact_document(result: CalibrationResult, name: str, source: str, experiments: Sequence[Path],
                      steps: str | Path | None, settings: CalibrationSettings) -> dict[str, Any]:
    """The calibrated formula as a ``stepml-artifact/1`` document (features over canonical columns, not baked)."""
    from discovery.formula import ARTIFACT_SCHEMA
    from features.io import json_safe
    from search_spaces.objective import complexity

    expr = result.expr
    used = sorted(str(s) for s in expr.free_symbols)
    features = []
    for f in used:
        feat = catalog.get_feature(f)
        d = feat.sympy_expr()
        features.append({"name": f, "unit": feat.unit, "availability": feat.availability,
                         "description": feat.description, "definition": sympy.sstr(d),
                         "definition_srepr": sympy.srepr(d)})
    over = result.overheads
    doc = {
        "schema": ARTIFACT_SCHEMA, "name": name,
        "expression": {"srepr": sympy.srepr(expr), "infix": sympy.sstr(expr), "latex": sympy.latex(expr)},
        "complexity": complexity(expr), "features": features,
        "constants": [float(c) for c in sorted(expr.atoms(sympy.Float), key=float)],
        "baked_columns": {},
        "overheads": {"queueing_us": over["queue_overhead_s"] * 1e6, "output_token_us": 0.0,
                      "post_decode_us": over["end_overhead_s"] * 1e6,
                      "source": f"discovery.calibrate on {len(experiments)} experiment(s); the replay has no "
                                "per-output-token cost (0)"},
        "scheduler": {"async_scheduling": settings.async_scheduling},
        "target": "cycle", "data": str(steps) if steps else None, "data_path": str(Path(steps).resolve()) if steps else None,
        "synthetic": False, "engine": "calibrate", "seed": settings.seed, "source": source,
        "metrics": {"calibration_loss": result.loss, "step_mape": result.step_mape},
        "operating_range": result.operating_range.to_dict() if result.operating_range is not None else None,
        "calibration": {"experiments": [e.name for e in experiments], "errors": result.errors,
                        "history": result.history, "settings": asdict(settings),
                        "windows": f"first {settings.requests_per_stage or 'all'} requests of each stage, "
                                   f"after a {settings.warmup_s:g} s warm-up"},
    }
    return json_safe(doc)


def write_artifact(doc: Mapping[str, Any], out: str | Path, steps: str | Path | None,
                   experiments: Sequence[str]) -> Path:
    """Write ``out/artifact.json`` (atomically) with the step split the audit scores on.

    With step traces, the rows of experiments the calibration did not see are the
    test part (a held-out fold, spec ``calibration``, fold ``held-out``) and the
    calibrated experiments' rows split 75/25 by step order into train and
    validation; when it saw every experiment of the table, the split is the
    temporal 60/20/20 one (in-sample: the calibration saw all rows). The index
    file is saved beside the artifact, so ``discovery.audit`` and ``export``
    reload exactly these rows. Without step traces nothing is saved and the
    audit refuses the artifact (it has no steps to score on).
    """
    from features.dataset import load_dataset
    from features.io import atomic_write_json
    from features.splits import held_out_fold, save_splits, temporal_split
    from features.targets import DEFAULT_MAX_GAP

    out = Path(out)
    doc = dict(doc)
    if steps:
        dataset = load_dataset(steps, "cycle")
        data_hash = dataset.content_hash()
        ids = dataset.frame["experiment_id"].astype(str).to_numpy()
        held = ~np.isin(ids, [str(e) for e in experiments])
        split = (held_out_fold(dataset.frame, held, "calibration", "held-out", data_hash) if held.any()
                 else temporal_split(dataset.frame, data_hash=data_hash))
        from discovery.export import step_metrics
        from discovery.formula import artifact_formula

        metrics, _ = step_metrics(artifact_formula(doc, out)[0], dataset, split)
        doc["metrics"] = {**doc.get("metrics", {}), **metrics}
        out.mkdir(parents=True, exist_ok=True)
        doc.update({"data_hash": data_hash, "max_gap": DEFAULT_MAX_GAP, "split": split.spec, "fold": split.fold,
                    "split_file": save_splits([split], out).name,
                    "split_note": ("test rows: the step traces of experiments the calibration did not see"
                                   if held.any() else "in-sample: the calibration saw every row of the step table")})
    return atomic_write_json(out / "artifact.json", doc)


# -- CLI ----------------------------------------------------------------------------------------------

def load_formula(spec: str) -> tuple[sympy.Expr, str]:
    """``RUN_DIR[:ROW]`` or an artifact (file or export folder) → (formula, a label)."""
    from discovery.formula import load_artifact

    path_part, row = spec, "best"
    head, sep, tail = spec.rpartition(":")
    if sep and head and (tail.isdigit() or tail in ("best", "accuracy", "knee", "score", "e2e")):
        path_part, row = head, tail
    path = Path(path_part)
    if path.suffix == ".json" or (path / "artifact.json").is_file():
        doc, predictor = load_artifact(path)
        return predictor.expr, f"artifact {doc.get('name', path)}"
    if not (path / "hall_of_fame.csv").is_file():
        raise StepMLError(f"formula not found: {spec} (a run directory[:ROW] or an artifact)")
    from discovery.pareto import pick_row
    from discovery.rundir import expr_of, reviewed_front

    front, eligible = reviewed_front(path)
    return expr_of(front.iloc[pick_row(front, row, eligible)]), f"{path.name}:{row}"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m discovery.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("formula", help="RUN_DIR[:ROW] (ROW = best|accuracy|knee|N) or an artifact.json / export folder")
    p.add_argument("--experiments", nargs="+", required=True, metavar="DIR",
                   help="experiment folders or ids to calibrate on (measured results needed)")
    p.add_argument("--steps", default=None, help="step table; rows of these experiments add their step MAPE")
    p.add_argument("--budget", type=float, default=1800.0, help="wall-clock budget in seconds (default 1800)")
    p.add_argument("--iterations", type=int, default=6, help="outer iterations (replays), default 6")
    p.add_argument("--requests", type=int, default=1500,
                   help="requests replayed per stage in each iteration (default 1500; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="workload seed of the replays (default 0)")
    p.add_argument("--no-roofline-floor", dest="roofline_floor", action="store_false",
                   help="calibrate the formula as given, without the floor Max(rl_bound, formula)")
    par = p.add_mutually_exclusive_group()
    par.add_argument("--workers", type=int, default=None, help="start a dask LocalCluster with N workers")
    par.add_argument("--scheduler", default=None, help="join an existing dask cluster at tcp://HOST:PORT")
    par.add_argument("--processes", type=int, default=None, help="replay in N local processes")
    p.add_argument("--out", default=None, help="output folder (default: exported/<name>/)")
    p.add_argument("--name", default=None, help="artifact name (default: <formula>-calibrated)")
    p.add_argument("--resume", action="store_true", help="continue the calibration in --out from its state")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def _settings(args: argparse.Namespace) -> CalibrationSettings:
    if args.seed < 0:
        raise StepMLError(f"--seed must be >= 0, got {args.seed}")
    if not (math.isfinite(args.budget) and args.budget > 0):
        raise StepMLError(f"--budget must be a positive number of seconds, got {args.budget}")
    return CalibrationSettings(requests_per_stage=args.requests, max_iterations=args.iterations,
                               budget_s=args.budget, seed=args.seed, roofline_floor=args.roofline_floor)


def _mapper(args: argparse.Namespace) -> Any:
    from discovery.engines.parallel import mapper_for

    return mapper_for(args.workers, args.scheduler, args.processes)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    import json

    from discovery.export import check_export_name
    from evaluation.replay_setup import resolve_experiment as _resolve_experiment
    from features.io import atomic_write_json, read_json

    args = build_parser().parse_args(argv)
    settings = _settings(args)
    experiments = [_resolve_experiment(e) for e in args.experiments]
    missing = [e.name for e in experiments if not list((e / "results").glob("stage_*_lifecycle_metrics.json"))]
    if missing:
        raise StepMLError(f"no measured results to calibrate on in: {', '.join(missing)}")
    if args.steps and not Path(args.steps).exists():
        raise StepMLError(f"--steps not found: {args.steps}")
    expr, label = load_formula(args.formula)
    name = check_export_name(args.name or f"{Path(label.split(':')[0].split()[-1]).name}-calibrated")
    out = Path(args.out) if args.out else Path("exported") / name
    state_path = out / STATE_FILE
    state = None
    if args.resume:
        if not state_path.is_file():
            raise StepMLError(f"--resume: no {STATE_FILE} in {out}")
        saved = read_json(state_path, "calibration state")
        key = {"formula": sympy.srepr(expr), "experiments": [e.name for e in experiments], "settings": asdict(settings)}
        if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in key.items()):
            raise StepMLError(f"--resume: {state_path} was made with another formula, experiments or settings")
        state = saved
    elif (out / "artifact.json").exists() or state_path.exists():
        raise StepMLError(f"{out} already holds a calibration; use --resume or choose another --out")
    base = {"formula": sympy.srepr(expr), "experiments": [e.name for e in experiments], "settings": asdict(settings)}
    echo = (lambda _: None) if args.json else print
    echo(f"calibrating {sympy.sstr(expr)} on {len(experiments)} experiment(s)"
         + (f" and the step traces in {args.steps}" if args.steps else ""))
    with _mapper(args) as mapper:
        result = calibrate(expr, experiments, args.steps, settings, mapper, state,
                           lambda st: atomic_write_json(state_path, {**base, **st}), echo)
    doc = artifact_document(result, name, label, experiments, args.steps, settings)
    write_artifact(doc, out, args.steps, [e.name for e in experiments])
    if args.json:
        print(json.dumps(doc))
    else:
        echo(f"calibrated: {sympy.sstr(result.expr)}")
        echo(f"  queueing {result.overheads['queue_overhead_s'] * 1e3:.2f} ms, post-decode "
             f"{result.overheads['end_overhead_s'] * 1e3:.2f} ms; loss {result.loss:.2f} %")
        for exp, windows in result.errors.items():
            cells = "; ".join(f"{w} E2E {e['e2e_err']:+.1f} TTFT {e['ttft_err']:+.1f} ITL {e['itl_err']:+.1f}"
                              for w, e in windows.items())
            echo(f"  {exp}: {cells}")
        echo(f"wrote {out / 'artifact.json'}")
    return 0


if __name__ == "__main__":
    run(main, prog="discovery.calibrate")
