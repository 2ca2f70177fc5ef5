"""Does the replay's model explain a run that failed requests? The decode-pace check.

In a saturated run the outcome (how many requests time out, how long the
successes wait) depends on the service capacity so steeply that a step time a few
percent off changes the failure count by thousands. A replay with a predictor that
is off at the run's operating point therefore says nothing about whether the
*model* of the run (scheduler, client timeout, aborts, queueing) is right.

The check separates the two. The measured TPOT of the successes is a direct
measurement of the decode pace at the run's operating point (a token every
``≈ 2 × TPOT``, :mod:`evaluation.latency_metrics`). The replay is repeated with the
predictor's step time multiplied by a factor ``k`` updated as
``k ← k · TPOT_measured / TPOT_replayed`` until the two agree within
``PACE_TOLERANCE_PCT`` (at most ``MAX_ITERATIONS`` replays; the first one is the
prediction itself). With the pace matched, the model explains the run when

- the failure fraction is within ``FAILURE_GOAL_POINTS`` (10) percentage points of
  the measured one, and
- the mean E2E and TTFT of the successes are within ``LATENCY_GOAL_PCT`` (20 %).

Otherwise the run is ``unexplained`` and :mod:`evaluation.replay` prints no
prediction for it. ``k − 1`` is also how far the predictor's step time is off at the
operating point (``step_time_error_pct``): a predictor error, not a model error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from evaluation.latency_metrics import relative_error
from evaluation.predictors import ScaledPredictor

__all__ = ["PaceCheck", "needs_check", "pace_check", "FAILURE_GOAL_POINTS", "LATENCY_GOAL_PCT",
           "PACE_TOLERANCE_PCT", "MAX_ITERATIONS"]

FAILURE_GOAL_POINTS = 10.0
LATENCY_GOAL_PCT = 20.0
PACE_TOLERANCE_PCT = 2.0
MAX_ITERATIONS = 4


@dataclass(frozen=True)
class PaceCheck:
    """Outcome of the decode-pace check of one experiment (module docstring).

    Attributes
    ----------
    scale : float
        Step-time factor of the last replay.
    replays : int
        Replays run, the prediction included.
    tpot_err : float
        TPOT error (%) of the last replay: within the tolerance when the pace matched.
    failures_measured, failures_replayed : float
        Failure fractions (whole run).
    e2e_err, ttft_err : float
        Errors (%) of the successes' mean E2E and TTFT in the last replay.
    reason : str
        Why the check failed ("" when it passed).
    """

    scale: float
    replays: int
    tpot_err: float
    failures_measured: float
    failures_replayed: float
    e2e_err: float
    ttft_err: float
    reason: str = ""

    @property
    def explained(self) -> bool:
        return not self.reason

    @property
    def step_time_error_pct(self) -> float:
        """How far the predictor's step time is from the measured pace (``100 (1/k − 1)``)."""
        return 100.0 * (1.0 / self.scale - 1.0) if self.scale > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(explained=self.explained, step_time_error_pct=self.step_time_error_pct)
        return out


def needs_check(result: Any) -> bool:
    """True when requests failed in the measurement or in the replay of the whole run."""
    window = result.headline_window
    meas, pred = result.measured.get(window), result.predicted.get(window)
    return bool((meas is not None and meas.failures) or (pred is not None and pred.failures))


def _verdict(result: Any, scale: float, replays: int) -> PaceCheck:
    window = result.headline_window
    meas, pred = result.measured[window], result.predicted[window]
    tpot = relative_error(pred.time_per_output_token.mean, meas.time_per_output_token.mean)
    e2e = relative_error(pred.request_latency.mean, meas.request_latency.mean)
    ttft = relative_error(pred.time_to_first_token.mean, meas.time_to_first_token.mean)
    f_meas, f_pred = meas.failure_fraction, pred.failure_fraction
    reasons = []
    if not (math.isfinite(tpot) and abs(tpot) <= PACE_TOLERANCE_PCT):
        reasons.append(f"the decode pace could not be matched (TPOT {tpot:+.1f} % after {replays} replays)")
    if not abs(f_pred - f_meas) * 100 <= FAILURE_GOAL_POINTS:
        reasons.append(f"failures {100 * f_pred:.1f} % vs {100 * f_meas:.1f} % measured")
    for label, err in (("E2E", e2e), ("TTFT", ttft)):
        if not abs(err) <= LATENCY_GOAL_PCT:
            reasons.append(f"successes' mean {label} {err:+.1f} %")
    return PaceCheck(scale, replays, tpot, f_meas, f_pred, e2e, ttft, "; ".join(reasons))


def pace_check(exp_dir: str | Path, predictor: Any, first: Any, **replay_kwargs: Any) -> PaceCheck:
    """Run the decode-pace check of ``exp_dir`` starting from the replay ``first`` of ``predictor``.

    ``replay_kwargs`` are the arguments ``first`` was replayed with (except the seed,
    taken from ``first``).
    """
    from evaluation.replay import replay_experiment

    result, scale = first, 1.0
    kwargs = {**replay_kwargs, "capacity": False, "explain": False}
    window = first.headline_window
    for replays in range(1, MAX_ITERATIONS + 1):
        check = _verdict(result, scale, replays)
        if abs(check.tpot_err) <= PACE_TOLERANCE_PCT or replays == MAX_ITERATIONS:
            return check
        pred_tpot = result.predicted[window].time_per_output_token.mean
        meas_tpot = result.measured[window].time_per_output_token.mean
        if not (math.isfinite(pred_tpot) and pred_tpot > 0):
            return check                    # no success left to measure the pace on
        scale *= meas_tpot / pred_tpot
        result = replay_experiment(exp_dir, ScaledPredictor(predictor, scale), first.seed, **kwargs)
    return check
