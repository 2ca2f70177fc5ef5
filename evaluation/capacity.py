"""Predicted service capacity of a server, and whether an offered load saturates it.

A step-time predictor and the scheduler settings determine how many requests of a
given shape the server completes per second when it is never idle. That rate is
measured here the only way that is exact for continuous batching with chunked
prefill, prefix caching and KV-limited admission: by simulating it
(:func:`evaluation.scheduler.simulate`, the replay's simulator) on a closed queue —
``waves × max_num_seqs`` requests of the experiment's own shapes (inputs, outputs,
prefix groups), all waiting at time 0 — and counting completions after the first
wave (which pays the cold prefix cache and the ramp-up) until the last one:

    capacity = (N − N/waves) / (t_last − t_first_wave_done)   [requests / s]

with ``N/waves`` the index of the first-wave boundary. Token capacities are that rate
times the mean input and output lengths of the counted requests.

An experiment is **saturated** when a stage's offered rate exceeds the capacity: its
queue then grows for as long as the stage sends (by ``rate − capacity`` requests
per second), and latencies are set by the queue and the client's timeout rather than
by the step time. ``utilization = offered / capacity`` is reported beside it.

:func:`experiment_load` is the entry point for tables (one call per experiment and
predictor); :func:`service_capacity` works on any request table and step-time law.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from evaluation.scheduler import SchedulerConfig, Workload, simulate
from features.errors import StepMLError

__all__ = ["Capacity", "StageLoad", "LoadReport", "service_capacity", "stage_loads", "experiment_load",
           "DEFAULT_WAVES"]

#: Batches of ``max_num_seqs`` requests simulated by :func:`service_capacity`.
DEFAULT_WAVES = 3


@dataclass(frozen=True)
class Capacity:
    """Completion rate of a never-idle server (see the module docstring).

    Attributes
    ----------
    requests_per_s, input_tokens_per_s, output_tokens_per_s : float
    concurrency : float
        Mean number of running requests over the counted window.
    step_time_s : float
        Mean step time over the counted window.
    requests : int
        Requests simulated.
    """

    requests_per_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    concurrency: float
    step_time_s: float
    requests: int

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class StageLoad:
    """Offered load of one stage next to the predicted capacity."""

    stage: int
    offered_requests_per_s: float
    offered_input_tokens_per_s: float
    offered_output_tokens_per_s: float
    capacity: Capacity

    @property
    def utilization(self) -> float:
        """Offered over predicted requests per second (> 1: saturated)."""
        cap = self.capacity.requests_per_s
        return self.offered_requests_per_s / cap if cap > 0 else float("inf")

    @property
    def saturated(self) -> bool:
        return self.utilization > 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "offered_requests_per_s": self.offered_requests_per_s,
                "offered_input_tokens_per_s": self.offered_input_tokens_per_s,
                "offered_output_tokens_per_s": self.offered_output_tokens_per_s,
                "utilization": self.utilization, "saturated": self.saturated}


@dataclass(frozen=True)
class LoadReport:
    """Capacity of one experiment under one predictor, and its stages' offered loads."""

    experiment_id: str
    predictor: str
    capacity: Capacity
    stages: tuple[StageLoad, ...]

    @property
    def saturated(self) -> bool:
        """True when any stage offers more than the predicted capacity."""
        return any(s.saturated for s in self.stages)

    @property
    def utilization(self) -> float:
        """The highest stage utilization."""
        return max((s.utilization for s in self.stages), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {"saturated": self.saturated, "utilization": self.utilization, "capacity": self.capacity.to_dict(),
                "stages": [s.to_dict() for s in self.stages]}


def service_capacity(requests: pd.DataFrame, config: SchedulerConfig,
                     step_time_us: Callable[[dict[str, float]], float], *, waves: int = DEFAULT_WAVES) -> Capacity:
    """Completion rate of a never-idle server on requests shaped like ``requests``.

    Parameters
    ----------
    requests : pandas.DataFrame
        ``input_tokens``, ``output_tokens`` and optionally ``prefix_group`` /
        ``prefix_len`` (e.g. :func:`evaluation.workloads.requests_from_profile`); the
        first ``waves × max_num_seqs`` rows are used (repeated when there are fewer).
    config : SchedulerConfig
    step_time_us : callable
        The step-time law (as for :func:`~evaluation.scheduler.simulate`).
    waves : int
        Batches of ``max_num_seqs`` requests to simulate (>= 2).

    Returns
    -------
    Capacity
    """
    if waves < 2:
        raise StepMLError(f"service_capacity: waves must be >= 2, got {waves}")
    fits = (requests["input_tokens"].to_numpy() < config.max_model_len) & (
        requests["input_tokens"].to_numpy() + requests["output_tokens"].to_numpy() <= config.max_model_len)
    requests = requests.loc[fits]          # the server rejects the others at once (HTTP 400)
    if requests.empty:
        raise StepMLError(f"service_capacity: no request fits max_model_len {config.max_model_len}")
    n = waves * int(config.max_num_seqs)
    cols = {c: np.resize(requests[c].to_numpy(dtype=np.int64), n)
            for c in ("input_tokens", "output_tokens", "prefix_group", "prefix_len") if c in requests.columns}
    try:
        sim = simulate(Workload(np.zeros(n), **cols), config, step_time_us)
    except ValueError as exc:
        raise StepMLError(f"service_capacity: {exc}") from None
    finish = sim.requests["finish_s"].to_numpy(dtype=float)
    order = np.argsort(finish, kind="stable")
    first = n // waves
    t0, t1 = finish[order[first - 1]], finish[order[-1]]
    counted = order[first:]
    if not t1 > t0:                         # everything ended in one step: use the whole makespan
        t0, counted = 0.0, order
    rate = counted.size / (t1 - t0)
    steps = sim.steps
    start_s = steps["step.ts_start_ns"].to_numpy(dtype=float) * 1e-9
    window = (start_s >= t0) & (start_s < t1)
    if not window.any():
        window = np.ones(len(steps), dtype=bool)
    inp = float(sim.requests["input_tokens"].to_numpy()[counted].mean())
    out = float(sim.requests["output_tokens"].to_numpy()[counted].mean())
    return Capacity(float(rate), float(rate * inp), float(rate * out),
                    float(steps["queue.running_depth"].to_numpy()[window].mean()),
                    float(steps["step.duration_us"].to_numpy()[window].mean() * 1e-6), n)


def stage_loads(requests: pd.DataFrame, rates: Mapping[int, float], capacity: Capacity) -> tuple[StageLoad, ...]:
    """Offered load of each stage (``rates``: stage → requests/s) beside ``capacity``."""
    out = []
    for stage, rate in sorted(rates.items()):
        rows = requests.loc[requests["stage"] == stage] if "stage" in requests.columns else requests
        rows = rows if len(rows) else requests
        out.append(StageLoad(int(stage), float(rate), float(rate * rows["input_tokens"].mean()),
                             float(rate * rows["output_tokens"].mean()), capacity))
    return tuple(out)


def experiment_load(exp_dir: str | Path, predictor: Any, seed: int = 0, *, data_root: str | Path | None = None,
                    waves: int = DEFAULT_WAVES) -> LoadReport:
    """Predicted capacity of an experiment's server and the offered load of its stages.

    The requests, scheduler settings, KV pool and predictor constants are the
    replay's (:func:`evaluation.replay_setup.prepare_experiment`).
    """
    from evaluation.replay_setup import prepare_experiment, step_time_function

    setup = prepare_experiment(exp_dir, predictor, seed, data_root=data_root)
    return load_report(setup, step_time_function(predictor, setup.constants),
                       str(getattr(predictor, "name", type(predictor).__name__)), waves=waves)


def load_report(setup: Any, step_time_us: Callable[[dict[str, float]], float], predictor_name: str, *,
                waves: int = DEFAULT_WAVES) -> LoadReport:
    """:class:`LoadReport` of a prepared experiment (:class:`~evaluation.replay_setup.ExperimentSetup`)."""
    capacity = service_capacity(setup.requests, setup.config, step_time_us, waves=waves)
    rates = {s: setup.profile.stages[s].rate for s in setup.stages}
    return LoadReport(setup.meta.experiment_id, predictor_name, capacity, stage_loads(setup.requests, rates, capacity))
