"""Anchors: a replay frozen into arrays, so request latencies can be re-timed for new step times in microseconds.

Calibrating a step-time formula on measured request latencies (E2E, TTFT, ITL)
means replaying experiments inside an optimiser, and a replay takes seconds.
:func:`anchor_from_replay` keeps what one replay decided — which requests ran in
which step, when each request arrived, produced its first token and finished —
and :func:`anchor_means` re-times those decisions for any vector of step
durations:

* a request's TTFT is the queue overhead, the rest of the step running when it
  reached the scheduler, every later step up to and including the one that
  produced its first token (under async scheduling that is about 2.5 steps);
* its E2E adds every step until its last token, and the end overhead;
* the window's mean ITL (inference-perf's per-line definition, see
  :mod:`evaluation.latency_metrics`) is ``Σ (last − first token) / Σ (2n + 1)``.

At the step durations the replay used this reproduces the replay's means
exactly (to float rounding; tested). For other durations it keeps the batch
composition frozen: the surrogate is first-order, and a calibration re-anchors
(replays again) until the composition stops moving (:mod:`discovery.calibrate`).
Pure functions over arrays; an :class:`Anchor` is picklable, so anchors are
built in parallel workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from features.errors import StepMLError

__all__ = ["Anchor", "METRICS", "anchor_from_replay", "anchor_means", "measured_means"]

#: The request metrics a calibration matches, in residual order.
METRICS = ("e2e", "ttft", "itl")


@dataclass(frozen=True, eq=False)
class Anchor:
    """One replay frozen for re-timing (see the module docstring).

    Attributes
    ----------
    experiment_id : str
    steps : dict of str to numpy.ndarray
        Canonical per-step columns of the replay (``batch.*``, ``kv.*``,
        ``queue.*``), one value per step.
    constants : dict of str to float
        The experiment's ``arch.*`` / ``hw.*`` columns.
    durations_us : numpy.ndarray
        The step durations the replay used.
    k_arrival, k_first, k_finish : numpy.ndarray
        Per request: the step running when it reached the scheduler (or the
        first step it was scheduled in, when the engine was idle), the step of
        its first token and of its last token.
    busy : numpy.ndarray of bool
        Per request: a step was running when it arrived.
    frac : numpy.ndarray
        Per request: the fraction of that step still to run at its arrival.
    idle_wait_s : numpy.ndarray
        Per request: the time between arrival and the start of its first step
        when the engine was idle (0 otherwise).
    output_tokens : numpy.ndarray
        Per request: tokens generated.
    windows : dict of str to numpy.ndarray
        Window name (``stage_0``…) → boolean request mask.
    measured : dict of str to tuple
        Window → measured (E2E, TTFT, ITL) means in seconds.
    queue_overhead_s, end_overhead_s : float
        The overheads the replay used.
    """

    experiment_id: str
    steps: Mapping[str, np.ndarray]
    constants: Mapping[str, float]
    durations_us: np.ndarray
    k_arrival: np.ndarray
    k_first: np.ndarray
    k_finish: np.ndarray
    busy: np.ndarray
    frac: np.ndarray
    idle_wait_s: np.ndarray
    output_tokens: np.ndarray
    windows: Mapping[str, np.ndarray]
    measured: Mapping[str, tuple[float, float, float]]
    queue_overhead_s: float = 0.0
    end_overhead_s: float = 0.0

    @property
    def num_steps(self) -> int:
        """Steps of the replay."""
        return int(self.durations_us.size)


def measured_means(exp_dir: str | Path) -> dict[str, tuple[float, float, float]]:
    """Per measured stage of an experiment: (E2E, TTFT, ITL) means of its successes, in seconds.

    Read from ``results/stage_<N>_lifecycle_metrics.json`` (stage windows only:
    the summary of a multi-stage run mixes operating points).
    """
    from evaluation.latency_metrics import read_lifecycle_report

    out = {}
    for path in sorted(Path(exp_dir, "results").glob("stage_*_lifecycle_metrics.json")):
        stage = path.name.split("_")[1]
        if not stage.isdigit():
            continue
        report = read_lifecycle_report(path)
        out[f"stage_{int(stage)}"] = (float(report.request_latency.mean), float(report.time_to_first_token.mean),
                                      float(report.inter_token_latency.mean))
    return out


def anchor_from_replay(result: Any, measured: Mapping[str, tuple[float, float, float]],
                       queue_overhead_s: float = 0.0, end_overhead_s: float = 0.0,
                       warmup_s: float = 0.0) -> Anchor:
    """Freeze a replay made with ``keep_sim=True`` into an :class:`Anchor`.

    Parameters
    ----------
    result : ReplayResult
        A replay with ``keep_sim=True`` (possibly of the first requests of each stage only).
    measured : mapping
        Window → measured (E2E, TTFT, ITL) means (:func:`measured_means`); windows
        the replay did not cover are dropped.
    queue_overhead_s, end_overhead_s : float
        The overheads the replay used.
    warmup_s : float
        Requests sent within this time of their stage's first request are left
        out of the windows (the replay starts each stage from an empty server).

    Raises
    ------
    StepMLError
        If the replay kept no simulator output.
    """
    sim = getattr(result, "sim", None)
    arrival = getattr(result, "sim_arrival_s", None)
    if sim is None or arrival is None:
        raise StepMLError(f"{result.experiment_id}: the replay kept no simulator output (keep_sim=True)")
    steps = sim.steps
    requests = sim.requests
    t0 = float(np.min(arrival))
    start = steps["step.ts_start_ns"].to_numpy(dtype=float) / 1e9
    end = steps["step.ts_end_ns"].to_numpy(dtype=float) / 1e9
    arr = np.asarray(arrival, dtype=float) - t0
    tol = 1e-7
    k_sched = np.clip(np.searchsorted(start, requests["first_scheduled_s"].to_numpy(float) - t0 - tol), 0, len(start) - 1)
    k_first = np.clip(np.searchsorted(end, requests["first_token_s"].to_numpy(float) - t0 - tol), 0, len(end) - 1)
    k_finish = np.clip(np.searchsorted(end, requests["finish_s"].to_numpy(float) - t0 - tol), 0, len(end) - 1)
    k_run = np.searchsorted(start, arr, side="right") - 1
    ok = k_run >= 0
    k_safe = np.maximum(k_run, 0)
    busy = ok & (arr < end[k_safe])
    span = np.maximum(end[k_safe] - start[k_safe], 1e-12)
    frac = np.where(busy, (end[k_safe] - arr) / span, 0.0)
    k_arrival = np.where(busy, k_safe, k_sched)
    idle_wait = np.where(busy, 0.0, np.maximum(start[k_sched] - arr, 0.0))
    columns = {c: steps[c].to_numpy(dtype=float) for c in steps.columns
               if c.startswith(("batch.", "kv.", "queue."))}
    served = result.requests if result.accepted is None else result.requests.loc[np.asarray(result.accepted)]
    stage = served["stage"].to_numpy()
    sent = served["start_s"].to_numpy(dtype=float)
    finished = np.isfinite(requests["finish_s"].to_numpy(dtype=float))
    windows = {}
    for window in measured:
        in_stage = stage == int(window.split("_", 1)[1])
        if in_stage.any():
            windows[window] = in_stage & finished & (sent >= sent[in_stage].min() + warmup_s)
    measured = {w: tuple(map(float, measured[w])) for w in windows}
    return Anchor(str(result.experiment_id), columns,
                  {k: float(v) for k, v in (result.constants or {}).items() if isinstance(v, (int, float))},
                  steps["step.duration_us"].to_numpy(dtype=float), k_arrival.astype(np.int64),
                  k_first.astype(np.int64), k_finish.astype(np.int64), busy, frac, idle_wait,
                  requests["output_tokens"].to_numpy(dtype=float), windows, measured,
                  float(queue_overhead_s), float(end_overhead_s))


def anchor_means(anchor: Anchor, durations_us: np.ndarray, queue_overhead_s: float,
                 end_overhead_s: float) -> dict[str, tuple[float, float, float]]:
    """Re-timed (E2E, TTFT, ITL) means per window for new step durations (module docstring).

    Parameters
    ----------
    anchor : Anchor
    durations_us : numpy.ndarray
        One duration per step of the anchor (µs).
    queue_overhead_s, end_overhead_s : float
        Client → scheduler delay, and last line → request end.

    Returns
    -------
    dict
        Window → (E2E, TTFT, ITL) means in seconds.
    """
    dur = np.asarray(durations_us, dtype=float) * 1e-6
    if dur.shape != anchor.durations_us.shape:
        raise StepMLError(f"{anchor.experiment_id}: {dur.size} durations for {anchor.num_steps} steps")
    cs = np.concatenate(([0.0], np.cumsum(dur)))
    ka = anchor.k_arrival
    head = np.where(anchor.busy, anchor.frac * dur[ka] + cs[anchor.k_first + 1] - cs[ka + 1],
                    anchor.idle_wait_s + cs[anchor.k_first + 1] - cs[ka])
    ttft = queue_overhead_s + head
    decode = cs[anchor.k_finish + 1] - cs[anchor.k_first + 1]
    lines = 2.0 * anchor.output_tokens + 1.0
    out = {}
    for window, mask in anchor.windows.items():
        if not mask.any():
            continue
        out[window] = (float(np.mean(ttft[mask] + decode[mask]) + end_overhead_s), float(np.mean(ttft[mask])),
                       float(decode[mask].sum() / lines[mask].sum()))
    return out
