"""Workload replay: what a step-time predictor implies for request latencies.

``replay_experiment(exp_dir, predictor)`` rebuilds an experiment's requests from
its inference-perf profile (:mod:`evaluation.workloads`), runs them through the
continuous-batching simulator (:mod:`evaluation.scheduler`) with one predicted
step time per scheduler iteration, turns the simulated token times into the
client-side timestamps inference-perf recorded, and summarises them with
inference-perf's own definitions (:mod:`evaluation.latency_metrics`) per stage and
overall, next to the measured ``results/*_lifecycle_metrics.json``.

Model of one experiment
-----------------------
- Scheduler: ``max_num_seqs``, ``max_num_batched_tokens``, ``max_model_len`` from
  ``exp-config.yaml``; chunked prefill and prefix caching on (vLLM v1 defaults),
  block size 16, no long-prefill cap. KV pool: measured, else estimated
  (:mod:`evaluation.replay_setup`).
- Step time: ``predictor.predict({**arch/hw constants, **the step's aggregates and
  queue/KV state, experiment_id, model, workload})`` → float µs, evaluated fresh
  every step (nothing is cached).
- Client side: a request is sent at its profile time and reaches the scheduler
  ``queue_overhead_s`` later; each token reaches the client ``post_overhead_s``
  after its step ends; inference-perf's line timestamps follow
  (:func:`~evaluation.latency_metrics.sse_line_times`, ``line_gap_s`` apart) and the
  request ends ``end_overhead_s`` after its last line (measured ≈ 1.6–2.5 ms:
  re-tokenising prompt and output). All three default to 0.
- Client timeout: the client gives up on a request ``timeout`` after sending it
  (``results/config.yaml``'s ``load.request_timeout``; null → aiohttp's 300 s, whose
  deadline is rounded up to the next whole second of the client's loop clock:
  300–301 s, :mod:`evaluation.replay_setup`). The server then aborts it (queued or
  running, its KV blocks freed; :mod:`evaluation.scheduler`). A request succeeds
  when its client end comes before its deadline; otherwise it is a **failure** with
  latency ``deadline − send``, as inference-perf records a ``TimeoutError``.
- Rejection: vLLM answers 400 at once to a prompt with ``input >= max_model_len`` or
  ``input + max_tokens > max_model_len`` (its OpenAI server's ``_validate_input``);
  such a request is a failure with latency ``queue_overhead_s`` and never reaches
  the scheduler (no BLIS experiment has one: the longest is 1,117 + 1,448 tokens).
- Stages run one after another: a stage starts when every request of the previous
  one has ended (succeeded or failed), plus ``load.interval`` and inference-perf's
  1 s warm-up, so latencies of different stages never interact.
- Input lengths: when the experiment has measured results, every input is shifted
  so its mean equals the measured mean ``prompt_len`` (the re-tokenised prompt
  the server really processed; ``match_prompt_len``).
- Prefix cache: the 100 prompts repeat, so a repeated request's whole prompt is
  cached (``prefix_mode="prompt"``, see :mod:`evaluation.workloads`). The step data
  agrees: Llama-2-70B general averages 4.25 prefill tokens per step, ≈ 15 per
  request (the last partial block), where caching only the system prompt would
  prefill ~475 per request — and would overload the replay (E2E +600 % with the
  blackbox baseline).
- Saturation: the predicted service capacity (:mod:`evaluation.capacity`) is
  reported beside each stage's offered load; an experiment whose offered rate
  exceeds it is ``saturated``.
- Explanation check (:mod:`evaluation.saturation`): when failures were measured or
  predicted, the replay is repeated with the step time scaled until the successes'
  TPOT matches the measured one (the measured decode pace). If even then the
  failure fraction misses by more than 10 points or the successes' mean E2E or TTFT
  by more than 20 %, the model does not explain the run: the experiment is reported
  ``unexplained`` and no prediction is printed for it.
- Operating range (:mod:`evaluation.operating_range`): a predictor that records
  where its constants were fitted (calibrated and exported artifacts do) is
  checked against the replay's simulated steps; a run whose steps leave that range
  (e.g. three times the context per request of any fitted step) is reported
  ``extrapolated``, beside its prediction.

What the replay leaves to calibration (measured, BLIS experiments)
------------------------------------------------------------------
With zero overheads the replayed TTFT is ≈ 25–32 ms (≈ 1.7 decode steps) short of
the published one on every non-overloaded experiment, while E2E, TPOT and ITL
agree within a few percent: the client → scheduler path (HTTP, tokenisation, the
one-step-ahead async scheduling of vLLM 0.15, streaming back) is not simulated.
:func:`calibrate_overheads` measures it on one experiment (median-TTFT residual:
31.6 ms for Llama-2-70B, 26.3 ms for CodeLlama-34B on their ``general`` runs) and
the end tail (1.79 / 1.62 ms) for use on the others. The TTFT tail at 20 req/s
(70B general stage 1: p90 250 ms measured vs ≈ 75 ms replayed) comes from
queueing the simulator does not reproduce. NTPOT is not comparable: the measured
one divides by the client's re-tokenised output count (mean 245.8 for 248
generated tokens, some near 0). Throughput errors compare requests per second.

Speed: ≈ 60 µs per simulated step plus the predictor's one-row ``predict``
(blackbox ≈ 25 µs, roofline ≈ 115 µs; scikit-learn's gbt 2–170 ms, far too slow);
the 16,800-request 70B general experiment (≈ 59k steps) replays in ≈ 5.5 s with
the blackbox baseline. The capacity adds ``3 × max_num_seqs`` requests of
simulation; the explanation check two or three more replays of a failing experiment.

The command line is :mod:`evaluation.replay_cli` (``python -m evaluation.replay``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from evaluation.capacity import LoadReport, load_report
from evaluation.latency_metrics import (LATENCY_METRICS, LifecycleSummary, Ragged, end_tail_s, relative_error,
                                        sse_line_times, summarize_lifecycle, summarize_values)
from evaluation.operating_range import RangeCheck, replay_range_check
from evaluation.replay_setup import (ClientLimits, ExperimentSetup, estimate_kv_blocks, kv_blocks_for,
                                     measured_windows, prepare_experiment, resolve_experiment, scheduler_config,
                                     step_time_function)
from evaluation.scheduler import SchedulerConfig, simulate
from evaluation.workloads import STAGE_WARMUP_S, Profile, experiment_profile, place_stages, to_workload
from features.errors import StepMLError
from features.io import json_safe

if TYPE_CHECKING:  # pragma: no cover
    from evaluation.saturation import PaceCheck

__all__ = ["ReplayResult", "replay_experiment", "client_view", "calibrate_overheads", "scheduler_config", "kv_blocks_for",
           "estimate_kv_blocks", "step_time_function", "load_predictor", "main", "ERROR_KEYS",
           "resolve_experiment", "with_seed_spread", "spread_of", "SPREAD_KEYS"]

#: JSON error key → (latency metric or throughput attribute).
ERROR_KEYS: dict[str, str] = {
    "e2e_err": "request_latency",
    "ttft_err": "time_to_first_token",
    "itl_err": "inter_token_latency",
    "tpot_err": "time_per_output_token",
    "throughput_err": "requests_per_sec",
}


@dataclass(frozen=True)
class ReplayResult:
    """Predicted and measured request metrics of one replayed experiment.

    Attributes
    ----------
    experiment_id, predictor : str
    seed : int
    predicted, measured : mapping
        Window (``stage_0``, ``stage_1``, ..., ``summary``) →
        :class:`~evaluation.latency_metrics.LifecycleSummary` (latencies of the
        successes; ``failures`` and ``failure_latency`` of the failed requests).
        ``measured`` holds the published windows that match the replayed ones
        (``summary`` only when every stage was replayed).
    requests : pandas.DataFrame
        One row per replayed request: ``stage``, client ``start_s``, ``first_line_s``,
        ``end_s``, ``ttft_s``, ``e2e_s``, ``input_tokens``, ``output_tokens``,
        ``num_preemptions``, ``prefix_hit_tokens``, ``outcome`` (``ok``, ``timeout``
        or ``rejected``).
    num_steps : int
        Simulated scheduler steps.
    kv_blocks : int
        KV pool size used; ``kv_source`` says where it came from.
    config : SchedulerConfig
    input_offset : int
        Tokens added to every input (``match_prompt_len``).
    sim_seconds, wall_seconds : float
        Time spent in the simulation, and in the whole replay.
    notes : tuple of str
    client : ClientLimits or None
        The client timeout applied (None: no timeout).
    load : LoadReport or None
        Predicted capacity and offered load per stage (:mod:`evaluation.capacity`).
    check : PaceCheck or None
        The explanation check of a failing experiment (:mod:`evaluation.saturation`).
    sim : SimResult or None
        The simulator's output (with ``keep_sim``); its requests are the rows of
        ``requests`` where ``accepted`` is true.
    accepted : numpy.ndarray or None
        Which rows of ``requests`` the server accepted (with ``keep_sim``).
    sim_arrival_s : numpy.ndarray or None
        Each accepted request's arrival at the scheduler on the simulator's clock (with ``keep_sim``).
    constants : dict or None
        The experiment's per-step constants (``arch.*``, ``hw.*``…; with ``keep_sim``).
    kind : str
        ``experiment`` (an inference-perf folder) or ``request log`` (:mod:`evaluation.request_replay`).
    per : str
        What ITL and TPOT are per: ``line`` (inference-perf's streamed lines) or ``token``.
    server : mapping or None
        A request log's server settings and where each came from (:class:`evaluation.server_spec.ServerSpec`).
    range_check : RangeCheck or None
        The simulated steps against the predictor's operating range, when it has one
        (:mod:`evaluation.operating_range`).
    seed_errors : mapping or None
        Workload seed → signed headline errors (:meth:`errors`) of a replay of that
        seed, this one's included (:func:`with_seed_spread`).
    """

    experiment_id: str
    predictor: str
    seed: int
    predicted: Mapping[str, LifecycleSummary]
    measured: Mapping[str, LifecycleSummary]
    requests: pd.DataFrame = field(repr=False)
    num_steps: int = 0
    kv_blocks: int = 0
    kv_source: str = ""
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    input_offset: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    notes: tuple[str, ...] = ()
    client: ClientLimits | None = None
    load: LoadReport | None = None
    check: "PaceCheck | None" = None
    sim: Any = field(default=None, repr=False)
    accepted: np.ndarray | None = field(default=None, repr=False)
    sim_arrival_s: np.ndarray | None = field(default=None, repr=False)
    constants: Mapping[str, Any] | None = field(default=None, repr=False)
    kind: str = "experiment"
    per: str = "line"
    server: Mapping[str, Any] | None = field(default=None, repr=False)
    range_check: RangeCheck | None = None
    seed_errors: Mapping[int, Mapping[str, float]] | None = None

    @property
    def extrapolated(self) -> bool:
        """The replay's steps leave the predictor's operating range (its step time is an extrapolation)."""
        return bool(self.range_check is not None and self.range_check.extrapolates)

    @property
    def windows(self) -> tuple[str, ...]:
        return tuple(self.predicted)

    @property
    def saturated(self) -> bool:
        """The offered load of some stage exceeds the predicted capacity."""
        return bool(self.load is not None and self.load.saturated)

    @property
    def status(self) -> str:
        """``unexplained`` when the explanation check failed, ``explained`` when it passed, else ``ok``."""
        if self.check is None:
            return "ok"
        return "explained" if self.check.explained else "unexplained"

    @property
    def headline_window(self) -> str:
        return "summary" if "summary" in self.measured else next(iter(self.measured), "summary")

    def errors(self, window: str = "summary", stat: str = "mean") -> dict[str, float]:
        """Signed errors in percent (``100 (pred − meas) / meas``) of one window, successes only.

        Keys are those of :data:`ERROR_KEYS`; ``stat`` (``mean``, ``median``,
        ``p90``, ``p99``) applies to the latency metrics. NaN when not measured.
        """
        pred, meas = self.predicted.get(window), self.measured.get(window)
        out = {}
        for key, name in ERROR_KEYS.items():
            if pred is None or meas is None:
                out[key] = float("nan")
            elif name in LATENCY_METRICS:
                out[key] = relative_error(getattr(pred.metric(name), stat), getattr(meas.metric(name), stat))
            else:
                out[key] = relative_error(getattr(pred, name), getattr(meas, name))
        return out

    def failure_fractions(self, window: str | None = None) -> dict[str, float | None]:
        """``{"measured": fraction, "predicted": fraction}`` of failed requests in a window."""
        window = window or self.headline_window
        pred, meas = self.predicted.get(window), self.measured.get(window)
        return {"measured": meas.failure_fraction if meas is not None else None,
                "predicted": pred.failure_fraction if pred is not None else None}

    def seed_spread(self) -> dict[str, Any] | None:
        """``{"seeds": [...], KEY: [signed %, one per seed], "mean": {KEY: %}, "min": ..., "max": ...}`` or None.

        KEY: ``e2e_err``, ``ttft_err``, ``itl_err`` of the headline window.
        """
        return spread_of(self.seed_errors) if self.seed_errors else None

    def to_json_dict(self) -> dict[str, Any]:
        """The ``--json`` entry of this experiment (absolute errors of the whole run, in %).

        An ``unexplained`` experiment has no headline errors and no predicted failure
        fraction (None); its simulated windows are kept under ``simulated``.
        """
        window = self.headline_window
        errs = self.errors(window)
        unexplained = self.status == "unexplained"
        out: dict[str, Any] = {k: None if unexplained else abs(v) for k, v in errs.items()}
        failures = self.failure_fractions(window)
        if unexplained:
            failures["predicted"] = None
        windows = {w: s.to_dict() for w, s in self.predicted.items()}
        out.update({
            "window": window,
            "status": self.status,
            "saturated": self.saturated,
            "failures": failures,
            "signed": {k: None for k in errs} if unexplained else errs,
            "simulated" if unexplained else "predicted": windows,
            "measured": {w: s.to_dict() for w, s in self.measured.items()},
            "window_errors": {} if unexplained else {w: self.errors(w) for w in self.predicted if w in self.measured},
            "load": self.load.to_dict() if self.load is not None else None,
            "check": self.check.to_dict() if self.check is not None else None,
            "extrapolated": self.extrapolated,
            "operating_range": self.range_check.to_dict() if self.range_check is not None else None,
            "seed_spread": self.seed_spread(),
            "client_timeout_s": self.client.timeout_s if self.client is not None else None,
            "predictor": self.predictor,
            "seed": self.seed,
            "requests": int(len(self.requests)),
            "steps": int(self.num_steps),
            "kv_blocks": int(self.kv_blocks),
            "kv_source": self.kv_source,
            "input_offset": int(self.input_offset),
            "sim_seconds": self.sim_seconds,
            "wall_seconds": self.wall_seconds,
            "notes": list(self.notes),
            "kind": self.kind,
            "per": self.per,
        })
        if self.server is not None:
            out["server"] = dict(self.server)
        return json_safe(out)


#: The errors :meth:`ReplayResult.seed_spread` reports.
SPREAD_KEYS = ("e2e_err", "ttft_err", "itl_err")


def spread_of(seed_errors: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """``{"seeds": [...], KEY: [signed %, one per seed], "mean": {KEY: %}, "min": ..., "max": ...}``.

    ``seed_errors`` maps each workload seed to its headline errors (signed, %);
    KEY runs over :data:`SPREAD_KEYS`.
    """
    seeds = sorted(seed_errors)
    out: dict[str, Any] = {"seeds": seeds}
    for key in SPREAD_KEYS:
        out[key] = [float(seed_errors[s][key]) for s in seeds]
    for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
        out[stat] = {key: float(fn(out[key])) for key in SPREAD_KEYS}
    return out


def with_seed_spread(result: ReplayResult, exp_dir: str | Path, predictor: Any, n_seeds: int,
                     **replay_kwargs: Any) -> ReplayResult:
    """``result`` with the headline errors of ``n_seeds`` workload seeds (its own and the next ones).

    inference-perf draws a run's arrival times and prompts at random (unseeded), so
    a measurement is one realisation; near a limit (a full ``max_num_seqs``, a
    saturated stage) the queueing and hence TTFT depend on that draw. Replaying
    several seeds shows how much of an error is the draw. ``replay_kwargs`` are
    those ``result`` was replayed with; the extra replays skip the capacity
    estimate and the explanation check.
    """
    if n_seeds < 1:
        raise StepMLError(f"--seeds must be >= 1, got {n_seeds}")
    window = result.headline_window
    errors = {result.seed: result.errors(window)}
    kwargs = {**replay_kwargs, "capacity": False, "explain": False}
    for seed in range(result.seed + 1, result.seed + n_seeds):
        errors[seed] = replay_experiment(exp_dir, predictor, seed, **kwargs).errors(window)
    return replace(result, seed_errors=errors)


# -- replay ---------------------------------------------------------------------------------------

def replay_experiment(exp_dir: str | Path, predictor: Any, seed: int = 0, queue_overhead_s: float = 0.0,
                      post_overhead_s: float = 0.0, *, end_overhead_s: float = 0.0, line_gap_s: float = 0.0,
                      stages: Sequence[int] | None = None, prefix_mode: str = "prompt",
                      arrivals: str = "normalized", match_prompt_len: bool = True,
                      num_gpu_blocks: int | None = None, data_root: str | Path | None = None,
                      max_requests: int | None = None, client: ClientLimits | None | str = "experiment",
                      capacity: bool = True, explain: bool = True, async_scheduling: bool = False,
                      keep_sim: bool = False) -> ReplayResult:
    """Replay one experiment with a step-time predictor (see the module docstring).

    Parameters
    ----------
    exp_dir : str or Path
        ``blis/experiments/<id>`` (``exp-config.yaml``, ``profile.yaml``, optional ``results/``).
    predictor : Predictor
        ``name`` and ``predict(columns)`` returning µs.
    seed : int
        Workload seed (prompt shuffle, arrivals, client clock phases).
    queue_overhead_s, post_overhead_s, end_overhead_s : float
        Client → scheduler delay, step end → client delay per token, and last line →
        request end delay (s, >= 0).
    line_gap_s : float
        Spacing of SSE lines read back to back (s).
    stages : sequence of int, optional
        Replay only these stages (default: all). The measured ``summary`` is compared
        only when every stage is replayed.
    prefix_mode, arrivals : str
        See :func:`evaluation.workloads.requests_from_profile`.
    match_prompt_len : bool
        Shift inputs to the measured mean prompt length when results exist.
    num_gpu_blocks : int, optional
        Override the KV pool size.
    data_root : str or Path, optional
        Where to look for step data and metadata first.
    max_requests : int, optional
        Keep only the first N requests of each replayed stage (quick checks; the
        measured windows are then not comparable and are dropped).
    client : ClientLimits, None or "experiment"
        The client's timeout: ``"experiment"`` reads it from the experiment
        (:func:`evaluation.replay_setup.client_limits`), None applies none.
    capacity : bool
        Also compute the predicted capacity and saturation (:mod:`evaluation.capacity`).
    explain : bool
        Run the explanation check when failures were measured or predicted
        (:mod:`evaluation.saturation`).
    async_scheduling : bool
        vLLM's one-step-ahead scheduling (:mod:`evaluation.scheduler`; vLLM's default since 0.14).
    keep_sim : bool
        Keep the simulator's output for re-timing (:mod:`evaluation.calibration`).

    Returns
    -------
    ReplayResult
    """
    t_start = time.perf_counter()
    for label, value in (("queue_overhead_s", queue_overhead_s), ("post_overhead_s", post_overhead_s),
                         ("end_overhead_s", end_overhead_s), ("line_gap_s", line_gap_s)):
        if not (math.isfinite(value) and value >= 0):
            raise StepMLError(f"{label} must be a finite number >= 0, got {value!r}")
    setup = prepare_experiment(exp_dir, predictor, seed, stages=stages, prefix_mode=prefix_mode, arrivals=arrivals,
                               match_prompt_len=match_prompt_len, num_gpu_blocks=num_gpu_blocks,
                               data_root=data_root, max_requests=max_requests, async_scheduling=async_scheduling)
    limits = setup.client if isinstance(client, str) else client
    pname = str(getattr(predictor, "name", type(predictor).__name__))
    step_fn = step_time_function(predictor, setup.constants)
    t_sim = time.perf_counter()
    sim, placed, starts, accepted, deadline = _simulate_stages(setup, step_fn, pname, queue_overhead_s, limits)
    sim_seconds = time.perf_counter() - t_sim
    table, lines = client_view(placed, sim, accepted, deadline, queue_overhead_s, post_overhead_s,
                               end_overhead_s, line_gap_s)
    table, lines = _restage(table, lines, setup.stages, starts, setup.profile.interval_s)
    predicted = _predicted_windows(table, lines, setup.stages)
    chosen = list(setup.stages)
    all_stages = chosen == list(range(len(setup.profile.stages)))
    measured = {} if max_requests is not None else measured_windows(setup.exp_dir, chosen, all_stages)
    load = load_report(setup, step_fn, pname) if capacity else None
    kept: dict[str, Any] = {"range_check": replay_range_check(predictor, sim.steps, setup.constants)}
    if keep_sim:
        arrival = placed.loc[accepted, "arrival_s"].to_numpy(dtype=float) + queue_overhead_s
        kept.update(sim=sim, accepted=accepted, sim_arrival_s=arrival, constants=dict(setup.constants))
    result = ReplayResult(setup.meta.experiment_id, pname, int(seed), predicted, measured, table,
                          int(len(sim.steps)), int(setup.kv_blocks or 0), setup.kv_source, setup.config,
                          setup.input_offset, sim_seconds, 0.0,
                          _notes(setup, measured, predicted, limits, max_requests, load), limits, load, **kept)
    if explain and measured:
        from evaluation.saturation import needs_check, pace_check

        if needs_check(result):
            result = replace(result, check=pace_check(
                setup.exp_dir, predictor, result, queue_overhead_s=queue_overhead_s, post_overhead_s=post_overhead_s,
                end_overhead_s=end_overhead_s, line_gap_s=line_gap_s, stages=stages, prefix_mode=prefix_mode,
                arrivals=arrivals, match_prompt_len=match_prompt_len, num_gpu_blocks=num_gpu_blocks,
                data_root=data_root, client=client, async_scheduling=async_scheduling))
    return replace(result, wall_seconds=time.perf_counter() - t_start)


def _simulate_stages(setup: ExperimentSetup, step_fn: Any, pname: str, queue_overhead_s: float,
                     limits: ClientLimits | None) -> tuple[Any, pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate every chosen stage in one run with idle gaps between them.

    A gap too short for the previous stage to end before the next one is widened
    and the run repeated. Returns the simulation (of the accepted requests only),
    the placed requests, the stage starts, the accepted mask and each request's
    deadline on the simulation clock (inf: none).
    """
    reqs, profile = setup.requests, setup.profile
    cfg = setup.config
    inp, out = reqs["input_tokens"].to_numpy(), reqs["output_tokens"].to_numpy()
    accepted = (inp < cfg.max_model_len) & (inp + out <= cfg.max_model_len)
    if not accepted.any():
        raise StepMLError(f"{setup.exp_dir.name}: every request exceeds max_model_len {cfg.max_model_len} "
                          "(vLLM rejects them all)")
    gap = max(600.0, max(st.duration for st in profile.stages))
    for _attempt in range(6):
        starts = _stage_starts(profile, gap)
        placed = place_stages(reqs, starts)
        deadline = _deadlines(placed, limits)
        work = placed.loc[accepted].copy()
        work["arrival_s"] = work["arrival_s"] + queue_overhead_s
        if limits is not None and limits.timeout_s is not None:
            work["deadline_s"] = deadline[accepted]
        try:
            sim = simulate(to_workload(work), cfg, step_fn, record_token_times=True)
        except ValueError as exc:
            raise StepMLError(f"{setup.exp_dir.name}: replay with {pname} failed: {exc}") from None
        ends = placed["arrival_s"].to_numpy(dtype=float) + queue_overhead_s     # rejected: answered at once
        ends[accepted] = np.fmax(sim.requests["finish_s"].to_numpy(dtype=float),
                                 sim.requests["aborted_s"].to_numpy(dtype=float))
        if _drained(placed, np.where(np.isfinite(deadline), np.fmin(ends, deadline), ends), setup.stages):
            return sim, placed, starts, accepted, deadline
        gap *= 4.0
    raise StepMLError(f"{setup.exp_dir.name}: a stage never drained before the next one (overloaded beyond "
                      f"{gap:.0f} s of idle gap)")


def _deadlines(placed: pd.DataFrame, limits: ClientLimits | None) -> np.ndarray:
    """When the client gives up on each request (its send time + timeout + loop-clock rounding)."""
    send = placed["arrival_s"].to_numpy(dtype=float)
    if limits is None or limits.timeout_s is None:
        return np.full(send.size, np.inf)
    phase = placed["loop_phase_s"].to_numpy(dtype=float) if limits.ceil_to_second else 0.0
    return send + limits.timeout_s + phase


def _stage_starts(profile: Profile, gap: float) -> np.ndarray:
    durations = np.array([st.duration for st in profile.stages], dtype=float)
    return np.concatenate(([0.0], np.cumsum(durations + STAGE_WARMUP_S + gap)[:-1]))


def _drained(placed: pd.DataFrame, ends: np.ndarray, chosen: Sequence[int]) -> bool:
    stage = placed["stage"].to_numpy()
    arrival = placed["arrival_s"].to_numpy(dtype=float)
    for a, b in zip(chosen, chosen[1:]):
        done = ends[stage == a]
        if not np.isfinite(done).all() or done.max() >= arrival[stage == b].min():
            return False
    return True


def client_view(placed: pd.DataFrame, sim: Any, accepted: np.ndarray, deadline: np.ndarray, queue_s: float,
                post_s: float, end_s: float, gap_s: float, *, lines_per_event: int = 2,
                done_event: bool = True) -> tuple[pd.DataFrame, Ragged]:
    """Per-request client times, outcomes and the recorded timestamps.

    Each token reaches the client ``post_s`` after its step ends; the recorded
    series is :func:`~evaluation.latency_metrics.sse_line_times` of those times
    (inference-perf's lines by default; ``lines_per_event=1, done_event=False``
    gives one timestamp per token). A request succeeds when its last timestamp
    plus ``end_s`` comes before its deadline; a late one fails at the deadline, a
    rejected one ``queue_s`` after it was sent. Failed requests keep no timestamps.
    """
    n = len(placed)
    token_list = [np.zeros(0)] * n
    for i, times in zip(np.flatnonzero(accepted), sim.token_times):
        token_list[i] = times
    lines = sse_line_times(Ragged.from_list(token_list).shifted(post_s), lines_per_event=lines_per_event,
                           done_event=done_event, line_gap_s=gap_s)
    offs = lines.offsets
    has = lines.lengths > 0
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    first[has] = lines.values[offs[:-1][has]]
    last[has] = lines.values[offs[1:][has] - 1]
    start = placed["arrival_s"].to_numpy(dtype=float)
    end = last + end_s
    finished = np.zeros(n, dtype=bool)
    finished[accepted] = np.isfinite(sim.requests["finish_s"].to_numpy(dtype=float))
    ok = finished & (end <= deadline)
    outcome = np.where(ok, "ok", np.where(accepted, "timeout", "rejected"))
    end = np.where(ok, end, np.where(accepted, deadline, start + queue_s))
    first = np.where(ok, first, np.nan)
    if not ok.all():
        lines = lines.subset(ok) if ok.any() else Ragged(np.zeros(0), np.zeros(0, dtype=np.int64))
        lines = _expand(lines, ok)

    def per_request(column: str, fill: float) -> np.ndarray:
        values = np.full(n, fill)
        values[accepted] = sim.requests[column].to_numpy()
        return values

    table = pd.DataFrame({
        "request": placed["request"].to_numpy(),
        "stage": placed["stage"].to_numpy(),
        "start_s": start,
        "first_line_s": first,
        "end_s": end,
        "ttft_s": first - start,
        "e2e_s": end - start,
        "input_tokens": placed["input_tokens"].to_numpy(),
        "output_tokens": per_request("output_tokens", 0).astype(np.int64),
        "num_preemptions": per_request("num_preemptions", 0).astype(np.int64),
        "prefix_hit_tokens": per_request("prefix_hit_tokens", 0).astype(np.int64),
        "outcome": outcome,
    })
    return table, lines


def _expand(lines: Ragged, mask: np.ndarray) -> Ragged:
    """Series of the ``mask`` requests placed back among all requests (empty for the others)."""
    lengths = np.zeros(mask.size, dtype=np.int64)
    lengths[mask] = lines.lengths
    return Ragged(lines.values, lengths)


def _restage(table: pd.DataFrame, lines: Ragged, chosen: Sequence[int], sim_starts: np.ndarray,
             interval_s: float) -> tuple[pd.DataFrame, Ragged]:
    """Move each stage to start ``interval_s`` after the previous one ended, as inference-perf runs them.

    Latencies are unchanged (every time of a stage moves by the same amount); only
    the whole-run throughput window depends on it.
    """
    table = table.copy()
    stage = table["stage"].to_numpy()
    end = table["end_s"].to_numpy(dtype=float)
    shift = np.zeros(len(table))
    prev_end = None
    for s in chosen:
        m = stage == s
        if prev_end is not None:
            shift[m] = (prev_end + interval_s) - sim_starts[s]
        prev_end = float(np.nanmax(end[m] + shift[m])) if m.any() else prev_end
    for col in ("start_s", "first_line_s", "end_s"):
        table[col] = table[col].to_numpy(dtype=float) + shift
    return table, lines.shifted(shift)


def _predicted_windows(table: pd.DataFrame, lines: Ragged, chosen: Sequence[int]) -> dict[str, LifecycleSummary]:
    stage_arr = table["stage"].to_numpy()
    masks = {f"stage_{s}": stage_arr == s for s in chosen}
    masks["summary"] = np.ones(len(table), dtype=bool)
    return {w: _summary(table, lines, m) for w, m in masks.items()}


def _summary(table: pd.DataFrame, lines: Ragged, mask: np.ndarray) -> LifecycleSummary:
    outcome = table["outcome"].to_numpy()
    done = mask & (outcome == "ok")
    sub = table.loc[done]
    summary = summarize_lifecycle(sub["start_s"].to_numpy(), sub["end_s"].to_numpy(), lines.subset(done),
                                  sub["input_tokens"].to_numpy(), sub["output_tokens"].to_numpy())
    failed = mask & (outcome != "ok")
    if not failed.any():
        return summary
    return replace(summary, failures=int(failed.sum()),
                   failure_latency=summarize_values(table["e2e_s"].to_numpy(dtype=float)[failed]))


def _notes(setup: ExperimentSetup, measured: Mapping[str, LifecycleSummary],
           predicted: Mapping[str, LifecycleSummary], limits: ClientLimits | None, max_requests: int | None,
           load: LoadReport | None) -> tuple[str, ...]:
    notes = list(setup.notes)
    if not (setup.exp_dir / "results").is_dir():
        notes.append("no results/ folder: nothing measured to compare, and profile.yaml is replayed as written "
                     "(without results/config.yaml, the record of what inference-perf really ran)")
    inp, out = setup.requests["input_tokens"].to_numpy(), setup.requests["output_tokens"].to_numpy()
    rejected = int(np.count_nonzero((inp >= setup.config.max_model_len) | (inp + out > setup.config.max_model_len)))
    if rejected:
        notes.append(f"{rejected} of {inp.size} requests exceed max_model_len {setup.config.max_model_len} "
                     "(prompt + output) and are rejected at once, as vLLM answers them (HTTP 400)")
    if max_requests is not None:
        notes.append(f"only the first {max_requests} requests of each stage: measured windows not compared")
    timeout = f"client timeout {limits.timeout_s:g} s" if limits and limits.timeout_s else "no client timeout"
    for w, summ in measured.items():
        pred = predicted.get(w)
        n_pred = pred.failures if pred is not None else 0
        if summ.failures or n_pred:
            notes.append(f"{w}: {summ.failures} measured and {n_pred} predicted requests failed ({timeout})")
    if limits is not None and limits.max_in_flight is not None and setup.requests.groupby("stage").size().max() > \
            limits.max_in_flight:
        notes.append(f"a stage sends more requests than the client keeps in flight ({limits.max_in_flight}): "
                     "client-side queueing is not modelled")
    if load is not None and load.saturated:
        worst = max(load.stages, key=lambda s: s.utilization)
        notes.append(f"saturated: stage {worst.stage} offers {worst.offered_requests_per_s:.3g} req/s, predicted "
                     f"capacity {load.capacity.requests_per_s:.3g} req/s "
                     f"({load.capacity.output_tokens_per_s:.0f} output tokens/s)")
    if setup.input_offset:
        notes.append(f"inputs shifted by {setup.input_offset:+d} tokens to the measured mean prompt_len")
    return tuple(notes)


# -- calibration of the client-side overheads -------------------------------------------------------

def calibrate_overheads(exp_dir: str | Path, predictor: Any, seed: int = 0, **kwargs: Any) -> dict[str, float]:
    """Client overheads that make a replay of ``exp_dir`` match its measured report.

    Replays the experiment with zero overheads, then returns
    ``queue_overhead_s`` = measured − predicted *median* TTFT of the whole run (>= 0;
    the median, because the mean is dominated by a few queueing bursts in the tail;
    the time between the client's send and the scheduler seeing the request that
    the simulator does not model: HTTP, tokenisation, vLLM's one-step-ahead
    async scheduling, streaming back) and ``end_overhead_s`` = the measured gap
    between the last line and the request end (:func:`~evaluation.latency_metrics.end_tail_s`).
    Use it on the experiment the predictor was fitted on, then replay the others
    with the returned values.
    """
    kwargs = {"capacity": False, "explain": False, **kwargs}
    result = replay_experiment(exp_dir, predictor, seed, **kwargs)
    meas = result.measured.get("summary")
    if meas is None:
        raise StepMLError(f"{Path(exp_dir).name}: no measured summary to calibrate the overheads on")
    pred = result.predicted["summary"]
    queue = meas.time_to_first_token.median - pred.time_to_first_token.median
    out_len = experiment_profile(exp_dir).data.output_len
    tail = end_tail_s(meas, out_len)
    return {"queue_overhead_s": max(0.0, float(queue)) if math.isfinite(queue) else 0.0,
            "end_overhead_s": max(0.0, float(tail)) if math.isfinite(tail) else 0.0}


# -- command line (evaluation.replay_cli) -------------------------------------------------------------

def load_predictor(spec: str, fit_data: str | Path | None = None,
                   fit_experiments: Sequence[str] | None = None) -> Any:
    """A predictor from a CLI spec (:func:`evaluation.predictors.load_predictor`)."""
    from evaluation.predictors import load_predictor as load

    return load(spec, fit_data, fit_experiments)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.replay`` (:func:`evaluation.replay_cli.main`)."""
    from evaluation.replay_cli import main as cli_main

    return cli_main(argv)


def __getattr__(name: str) -> Any:
    """The request-log replay's entry points, re-exported lazily (that module imports this one)."""
    if name in ("is_request_trace", "replay_request_trace", "replay_requests"):
        from evaluation import request_replay

        return getattr(request_replay, name)
    raise AttributeError(f"module 'evaluation.replay' has no attribute '{name}'")


if __name__ == "__main__":
    from features.cli import run

    run(main, prog="evaluation.replay")
