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
  block size 16, no long-prefill cap.
- KV pool: ``kv.blocks_total_gpu`` of the experiment when the step data
  (``<data root>/blis/steps/enriched_steps.parquet``) has it, else estimated as
  ``floor((0.9 · M · TP − W − TP · R) / (16 · 2 · L · H_kv · d · b))`` with ``M`` the
  per-GPU memory (the datasheet's "80 GB" read as 80 GiB, as the device reports),
  0.9 vLLM's default ``gpu_memory_utilization``, ``W`` the weight bytes
  (``arch.total_params · bytes_per_param``), ``R = 1.72 GB`` per GPU of activation /
  CUDA-graph reserve, ``L`` layers, ``H_kv`` KV heads, ``d`` head dim, ``b`` bytes per
  value. ``R`` was calibrated on the two known pools and reproduces both:
  31,356 blocks (Llama-2-70B TP4) and 26,602 (CodeLlama-34B TP2).
- Step time: ``predictor.predict({**arch/hw constants, **the step's aggregates and
  queue/KV state, experiment_id, model, workload})`` → float µs, evaluated fresh
  every step (nothing is cached).
- Client side: a request is sent at its profile time and reaches the scheduler
  ``queue_overhead_s`` later; each token reaches the client ``post_overhead_s``
  after its step ends; inference-perf's line timestamps follow
  (:func:`~evaluation.latency_metrics.sse_line_times`, ``line_gap_s`` apart) and the
  request ends ``end_overhead_s`` after its last line (measured ≈ 1.6–2.5 ms:
  re-tokenising prompt and output). All three default to 0.
- Stages run one after another: a stage starts when every request of the previous
  one has finished, plus ``load.interval`` and inference-perf's 1 s warm-up, so
  latencies of different stages never interact.
- Input lengths: when the experiment has measured results, every input is shifted
  so its mean equals the measured mean ``prompt_len`` (the re-tokenised prompt
  the server really processed; ``match_prompt_len``).
- Prefix cache: the 100 prompts repeat, so a repeated request's whole prompt is
  cached (``prefix_mode="prompt"``, see :mod:`evaluation.workloads`). The step data
  agrees: Llama-2-70B general averages 4.25 prefill tokens per step, ≈ 15 per
  request (the last partial block), where caching only the system prompt would
  prefill ~475 per request — and would overload the replay (E2E +600 % with the
  blackbox baseline).

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
the blackbox baseline.

CLI
---
``python -m evaluation.replay --predictor RUN_DIR[:ROW]|baseline:NAME --experiments DIR [DIR ...]
[--fit-data PATH] [--fit-experiments ID[,ID...]] [--seed N] [--queue-overhead-s S]
[--post-overhead-s S] [--end-overhead-s S] [--calibrate-on DIR] [--json]``

``RUN_DIR[:ROW]`` replays a run's front row (``best`` by default, or ``accuracy``,
``knee``, or a row number) as a formula; ``baseline:NAME`` fits that baseline
(:mod:`evaluation.baselines`) on the cycle target of ``--fit-data`` (default: the
shared BLIS step table) restricted to ``--fit-experiments``; an ``artifact.json`` (or
an export folder) replays the exported formula. ``--calibrate-on DIR`` first derives the queue and
end overheads from that experiment (:func:`calibrate_overheads`). ``--json`` prints
``{"experiments": {id: {"e2e_err", "ttft_err", "itl_err", "tpot_err",
"throughput_err", "predicted", "measured", ...}}}`` with absolute errors in percent
of the measured whole-run means (throughput: requests per second).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from evaluation.latency_metrics import (LATENCY_METRICS, LifecycleSummary, Ragged, end_tail_s,
                                        read_lifecycle_report, relative_error, sse_line_times,
                                        summarize_lifecycle)
from evaluation.scheduler import SchedulerConfig, simulate
from evaluation.workloads import (STAGE_WARMUP_S, Profile, experiment_profile, place_stages,
                                  requests_from_profile, to_workload)
from features.errors import StepMLError
from features.io import json_safe
from features.metadata import (ExperimentMeta, arch_columns, default_data_root, experiment_meta,
                               find_experiment_dir, load_server_config, metadata_roots, parse_experiment_name)

__all__ = ["ReplayResult", "replay_experiment", "calibrate_overheads", "scheduler_config", "kv_blocks_for",
           "matched_input_offset", "roots_for", "experiment_metadata", "resolve_experiment",
           "estimate_kv_blocks", "step_time_function", "load_predictor", "main", "ERROR_KEYS"]

BLOCK_SIZE = 16
GPU_MEMORY_UTILIZATION = 0.9
#: Per-GPU memory vLLM keeps outside the KV pool (activations, CUDA graphs), bytes; calibrated.
RESERVE_BYTES_PER_GPU = 1.72e9
STEP_TABLE = Path("blis") / "steps" / "enriched_steps.parquet"

#: JSON error key → (latency metric or throughput attribute).
ERROR_KEYS: dict[str, str] = {
    "e2e_err": "request_latency",
    "ttft_err": "time_to_first_token",
    "itl_err": "inter_token_latency",
    "tpot_err": "time_per_output_token",
    "throughput_err": "requests_per_sec",
}
_SHORT = {"request_latency": "E2E", "time_to_first_token": "TTFT", "time_per_output_token": "TPOT",
          "inter_token_latency": "ITL", "normalized_time_per_output_token": "NTPOT"}


@dataclass(frozen=True)
class ReplayResult:
    """Predicted and measured request metrics of one replayed experiment.

    Attributes
    ----------
    experiment_id, predictor : str
    seed : int
    predicted, measured : mapping
        Window (``stage_0``, ``stage_1``, ..., ``summary``) →
        :class:`~evaluation.latency_metrics.LifecycleSummary`. ``measured`` holds the
        published windows that match the replayed ones (``summary`` only when every
        stage was replayed).
    requests : pandas.DataFrame
        One row per replayed request: ``stage``, client ``start_s``, ``first_line_s``,
        ``end_s``, ``ttft_s``, ``e2e_s``, ``input_tokens``, ``output_tokens``,
        ``num_preemptions``, ``prefix_hit_tokens``.
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

    @property
    def windows(self) -> tuple[str, ...]:
        return tuple(self.predicted)

    def errors(self, window: str = "summary", stat: str = "mean") -> dict[str, float]:
        """Signed errors in percent (``100 (pred − meas) / meas``) of one window.

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

    def to_json_dict(self) -> dict[str, Any]:
        """The ``--json`` entry of this experiment (absolute errors of the whole run, in %)."""
        window = "summary" if "summary" in self.measured else next(iter(self.measured), "summary")
        errs = self.errors(window)
        out: dict[str, Any] = {k: abs(v) for k, v in errs.items()}
        out.update({
            "window": window,
            "signed": errs,
            "predicted": {w: s.to_dict() for w, s in self.predicted.items()},
            "measured": {w: s.to_dict() for w, s in self.measured.items()},
            "window_errors": {w: self.errors(w) for w in self.predicted if w in self.measured},
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
        })
        return json_safe(out)


# -- experiment set-up ---------------------------------------------------------------------------

def roots_for(exp_dir: Path, data_root: Path | None) -> list[Path]:
    roots = metadata_roots(exp_dir)
    if data_root is not None:
        roots.insert(0, Path(data_root))
    return roots


def experiment_metadata(exp_dir: Path, roots: list[Path]) -> ExperimentMeta:
    exp_id = exp_dir.name
    server = load_server_config(exp_dir / "exp-config.yaml")
    tp = None if parse_experiment_name(exp_id) else server.tp
    meta = experiment_meta(exp_id, roots, tp=tp)
    if meta.directory is None or meta.directory.resolve() != exp_dir.resolve():
        meta = ExperimentMeta(meta.experiment_id, meta.model, meta.workload, meta.tp, exp_dir, server,
                              meta.arch, meta.hardware)
    return meta


def scheduler_config(exp_dir: str | Path, num_gpu_blocks: int | None) -> SchedulerConfig:
    """The vLLM scheduler settings of an experiment (``exp-config.yaml``)."""
    server = load_server_config(Path(exp_dir) / "exp-config.yaml")
    try:
        return SchedulerConfig(max_num_seqs=server.max_num_seqs, max_num_batched_tokens=server.max_num_batched_tokens,
                               max_model_len=server.max_model_len, block_size=BLOCK_SIZE,
                               num_gpu_blocks=num_gpu_blocks, enable_chunked_prefill=True,
                               enable_prefix_caching=True)
    except ValueError as exc:
        raise StepMLError(f"{exp_dir}/exp-config.yaml: {exc}") from None


def estimate_kv_blocks(meta: ExperimentMeta) -> int | None:
    """KV pool estimate from model and GPU memory (module docstring); None without metadata."""
    arch, hw = meta.arch, meta.hardware
    if arch is None or hw is None:
        return None
    tp = max(1, int(meta.tp))
    per_gpu = hw.memory_bytes / 1e9 * 2**30                    # datasheet GB read as GiB
    weights = arch.total_params * arch.bytes_per_param
    kv_per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * arch.bytes_per_param
    usable = GPU_MEMORY_UTILIZATION * per_gpu * tp - weights - tp * RESERVE_BYTES_PER_GPU
    blocks = int(usable // (BLOCK_SIZE * kv_per_token))
    return blocks if blocks >= 1 else None


def _step_table(roots: list[Path]) -> Path | None:
    for root in roots:
        for candidate in (root / STEP_TABLE, root / "steps" / "enriched_steps.parquet"):
            if candidate.is_file():
                return candidate
    return None


def kv_blocks_for(meta: ExperimentMeta, roots: list[Path]) -> tuple[int | None, str]:
    """``(blocks, source)``: the measured pool of the experiment, else the estimate."""
    table = _step_table(roots)
    if table is not None:
        try:
            steps = pd.read_parquet(table, columns=["experiment_id", "kv.blocks_total_gpu"])
        except Exception:  # unreadable or without those columns: fall back to the estimate
            steps = None
        if steps is not None:
            rows = steps.loc[steps["experiment_id"].astype(str) == meta.experiment_id, "kv.blocks_total_gpu"]
            rows = pd.to_numeric(rows, errors="coerce").dropna()
            if len(rows):
                return int(rows.max()), f"step data ({table.name})"
    est = estimate_kv_blocks(meta)
    if est is not None:
        return est, "estimated from model and GPU memory"
    return None, "unlimited (no step data, model config or hardware sheet)"


def step_time_function(predictor: Any, constants: Mapping[str, Any]):
    """``feats -> µs``: the predictor on the experiment constants plus one step's columns.

    Every call builds a fresh one-row column dict — each value a length-1 array, the
    form every predictor accepts (``FormulaPredictor`` rejects 0-d scalars) — and
    predicts it; nothing is cached between steps.
    """
    predict = predictor.predict
    base = {k: np.asarray([v]) for k, v in constants.items()}
    name = str(getattr(predictor, "name", type(predictor).__name__))
    array = np.array

    def step_time_us(features: dict[str, float]) -> float:
        columns = dict(base)
        for key, value in features.items():
            columns[key] = array([value], dtype=float)
        try:
            with np.errstate(all="ignore"):
                value = predict(columns)
            return float(np.asarray(value, dtype=float).reshape(-1)[0])
        except StepMLError:
            raise
        except Exception as exc:  # a predictor bug must still end as one line
            raise StepMLError(f"predictor {name} failed on a simulated step ({type(exc).__name__}: {exc})") from None

    return step_time_us


def _measured_windows(exp_dir: Path, stages: Sequence[int], all_stages: bool) -> dict[str, LifecycleSummary]:
    out: dict[str, LifecycleSummary] = {}
    results = exp_dir / "results"
    for s in stages:
        path = results / f"stage_{s}_lifecycle_metrics.json"
        if path.is_file():
            out[f"stage_{s}"] = read_lifecycle_report(path)
    path = results / "summary_lifecycle_metrics.json"
    if all_stages and path.is_file():
        out["summary"] = read_lifecycle_report(path)
    return out


def _measured_prompt_len(exp_dir: Path) -> float | None:
    path = exp_dir / "results" / "summary_lifecycle_metrics.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        return float(report["successes"]["prompt_len"]["mean"])
    except (ValueError, KeyError, TypeError):
        return None


def matched_input_offset(exp_dir: str | Path, profile: Profile) -> int:
    """Tokens added to every input so its length is the measured mean ``prompt_len`` (0 without results)."""
    measured_len = _measured_prompt_len(Path(exp_dir))
    return 0 if measured_len is None else int(round(measured_len - profile.data.nominal_input))


# -- replay ---------------------------------------------------------------------------------------

def replay_experiment(exp_dir: str | Path, predictor: Any, seed: int = 0, queue_overhead_s: float = 0.0,
                      post_overhead_s: float = 0.0, *, end_overhead_s: float = 0.0, line_gap_s: float = 0.0,
                      stages: Sequence[int] | None = None, prefix_mode: str = "prompt",
                      arrivals: str = "normalized", match_prompt_len: bool = True,
                      num_gpu_blocks: int | None = None, data_root: str | Path | None = None,
                      max_requests: int | None = None) -> ReplayResult:
    """Replay one experiment with a step-time predictor (see the module docstring).

    Parameters
    ----------
    exp_dir : str or Path
        ``blis/experiments/<id>`` (``exp-config.yaml``, ``profile.yaml``, optional ``results/``).
    predictor : Predictor
        ``name`` and ``predict(columns)`` returning µs.
    seed : int
        Workload seed (prompt shuffle and arrivals).
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

    Returns
    -------
    ReplayResult
    """
    t_start = time.perf_counter()
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise StepMLError(f"experiment directory not found: {exp_dir}")
    for name in ("exp-config.yaml", "profile.yaml"):
        if not (exp_dir / name).is_file():
            raise StepMLError(f"{exp_dir}: no {name} (not an experiment directory?)")
    for label, value in (("queue_overhead_s", queue_overhead_s), ("post_overhead_s", post_overhead_s),
                         ("end_overhead_s", end_overhead_s), ("line_gap_s", line_gap_s)):
        if not (math.isfinite(value) and value >= 0):
            raise StepMLError(f"{label} must be a finite number >= 0, got {value!r}")
    if not hasattr(predictor, "predict"):
        raise StepMLError(f"predictor {predictor!r} has no predict()")
    pname = str(getattr(predictor, "name", type(predictor).__name__))
    roots = roots_for(exp_dir, Path(data_root) if data_root else None)
    meta = experiment_metadata(exp_dir, roots)
    profile = experiment_profile(exp_dir)
    notes = list(profile.notes)
    n_stages = len(profile.stages)
    chosen = sorted(set(range(n_stages) if stages is None else (int(s) for s in stages)))
    bad = [s for s in chosen if not 0 <= s < n_stages]
    if bad or not chosen:
        raise StepMLError(f"{exp_dir.name}: stage(s) {bad or chosen} not in the profile (stages 0..{n_stages - 1})")

    offset = matched_input_offset(exp_dir, profile) if match_prompt_len else 0
    if num_gpu_blocks is not None:
        blocks, kv_source = int(num_gpu_blocks), "given"
    else:
        blocks, kv_source = kv_blocks_for(meta, roots)
    config = scheduler_config(exp_dir, blocks)

    reqs = requests_from_profile(profile, seed, arrivals=arrivals, prefix_mode=prefix_mode, input_offset=offset)
    reqs = reqs[reqs["stage"].isin(chosen)]
    if max_requests is not None:
        reqs = reqs[reqs["stage_index"] < int(max_requests)]
    reqs = reqs.reset_index(drop=True)
    if reqs.empty:
        raise StepMLError(f"{exp_dir.name}: no requests to replay")

    constants: dict[str, Any] = dict(arch_columns(meta.arch, meta.hardware, meta.tp))
    constants.update({"experiment_id": meta.experiment_id, "model": meta.model, "workload": meta.workload,
                      "tp": float(meta.tp)})
    step_fn = step_time_function(predictor, constants)

    # Stages are simulated in one run with long idle gaps between them; a gap that is too
    # short for the previous stage to drain is widened and the run repeated.
    gap = max(600.0, max(st.duration for st in profile.stages))
    t_sim = time.perf_counter()
    for _attempt in range(6):
        starts = _stage_starts(profile, gap)
        placed = place_stages(reqs, starts)
        work = placed.copy()
        work["arrival_s"] = work["arrival_s"] + queue_overhead_s
        try:
            sim = simulate(to_workload(work), config, step_fn, record_token_times=True)
        except ValueError as exc:
            raise StepMLError(f"{exp_dir.name}: replay with {pname} failed: {exc}") from None
        finish = sim.requests["finish_s"].to_numpy(dtype=float)
        if _drained(placed, finish, chosen):
            break
        gap *= 4.0
    else:
        raise StepMLError(f"{exp_dir.name}: a stage never drained before the next one (overloaded beyond "
                          f"{gap:.0f} s of idle gap)")
    sim_seconds = time.perf_counter() - t_sim

    table, lines = _client_view(placed, sim, post_overhead_s, end_overhead_s, line_gap_s)
    table, lines = _restage(table, lines, chosen, starts, profile.interval_s)
    predicted: dict[str, LifecycleSummary] = {}
    stage_arr = table["stage"].to_numpy()
    for s in chosen:
        m = stage_arr == s
        predicted[f"stage_{s}"] = _summary(table, lines, m)
    predicted["summary"] = _summary(table, lines, np.ones(len(table), dtype=bool))

    all_stages = chosen == list(range(n_stages))
    measured = {} if max_requests is not None else _measured_windows(exp_dir, chosen, all_stages)
    if max_requests is not None:
        notes.append(f"only the first {max_requests} requests of each stage: measured windows not compared")
    for w, summ in measured.items():
        if summ.failures:
            notes.append(f"{w}: {summ.failures} measured requests failed (the replay serves all)")
    if offset:
        notes.append(f"inputs shifted by {offset:+d} tokens to the measured mean prompt_len")
    return ReplayResult(meta.experiment_id, pname, int(seed), predicted, measured, table,
                        int(len(sim.steps)), int(blocks or 0), kv_source, config, offset, sim_seconds,
                        time.perf_counter() - t_start, tuple(notes))


def _stage_starts(profile: Profile, gap: float) -> np.ndarray:
    durations = np.array([st.duration for st in profile.stages], dtype=float)
    return np.concatenate(([0.0], np.cumsum(durations + STAGE_WARMUP_S + gap)[:-1]))


def _drained(placed: pd.DataFrame, finish: np.ndarray, chosen: Sequence[int]) -> bool:
    stage = placed["stage"].to_numpy()
    arrival = placed["arrival_s"].to_numpy(dtype=float)
    for a, b in zip(chosen, chosen[1:]):
        done = finish[stage == a]
        if not np.isfinite(done).all() or done.max() >= arrival[stage == b].min():
            return False
    return True


def _client_view(placed: pd.DataFrame, sim: Any, post_s: float, end_s: float,
                 gap_s: float) -> tuple[pd.DataFrame, Ragged]:
    """Per-request client times and the recorded line timestamps."""
    tokens = Ragged.from_list(sim.token_times).shifted(post_s)
    lines = sse_line_times(tokens, line_gap_s=gap_s)
    offs = lines.offsets
    has = lines.lengths > 0
    first = np.full(len(placed), np.nan)
    last = np.full(len(placed), np.nan)
    first[has] = lines.values[offs[:-1][has]]
    last[has] = lines.values[offs[1:][has] - 1]
    start = placed["arrival_s"].to_numpy(dtype=float)
    end = last + end_s
    req = sim.requests
    table = pd.DataFrame({
        "request": placed["request"].to_numpy(),
        "stage": placed["stage"].to_numpy(),
        "start_s": start,
        "first_line_s": first,
        "end_s": end,
        "ttft_s": first - start,
        "e2e_s": end - start,
        "input_tokens": req["input_tokens"].to_numpy(),
        "output_tokens": req["output_tokens"].to_numpy(),
        "num_preemptions": req["num_preemptions"].to_numpy(),
        "prefix_hit_tokens": req["prefix_hit_tokens"].to_numpy(),
    })
    return table, lines


def _restage(table: pd.DataFrame, lines: Ragged, chosen: Sequence[int], sim_starts: np.ndarray,
             interval_s: float) -> tuple[pd.DataFrame, Ragged]:
    """Move each stage to start ``interval_s`` after the previous one drained, as inference-perf runs them.

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


def _summary(table: pd.DataFrame, lines: Ragged, mask: np.ndarray) -> LifecycleSummary:
    done = mask & np.isfinite(table["end_s"].to_numpy())
    sub = table.loc[done]
    return summarize_lifecycle(sub["start_s"].to_numpy(), sub["end_s"].to_numpy(), lines.subset(done),
                               sub["input_tokens"].to_numpy(), sub["output_tokens"].to_numpy())


# -- replay of a per-request table (llm_request spans) ---------------------------------------------

def is_request_trace(path: str | Path) -> bool:
    """True for a folder holding ``traces.json`` request spans and ``exp-config.yaml`` (no inference-perf run)."""
    path = Path(path)
    return path.is_dir() and (path / "exp-config.yaml").is_file() and any(
        (path / name).is_file() for name in ("traces.json", "traces.json.gz"))


def replay_request_trace(trace_dir: str | Path, predictor: Any, queue_overhead_s: float = 0.0,
                         data_root: str | Path | None = None) -> dict[str, Any]:
    """Replay the requests of vLLM ``llm_request`` spans (arrival, prompt and completion tokens).

    The server-side latencies the spans measured (``gen_ai.latency.e2e``,
    ``gen_ai.latency.time_to_first_token``) are compared with the simulated ones,
    like with like (no client streaming involved). Returns the JSON-ready entry
    ``{"e2e_err", "ttft_err", "predicted": {...}, "measured": {...}, ...}`` with
    absolute errors in percent of the measured means.
    """
    from features.otlp import read_request_spans
    from evaluation.workloads import requests_from_table

    trace_dir = Path(trace_dir)
    trace = next(trace_dir / n for n in ("traces.json", "traces.json.gz") if (trace_dir / n).is_file())
    spans = read_request_spans(trace)
    reqs = requests_from_table(spans, source=str(trace))
    reqs["arrival_s"] = reqs["arrival_s"] + queue_overhead_s
    roots = roots_for(trace_dir, Path(data_root) if data_root else None)
    server = load_server_config(trace_dir / "exp-config.yaml")
    base = experiment_meta(trace_dir.name, roots, model=server.model_id.rsplit("/", 1)[-1] or trace_dir.name,
                           tp=server.tp)
    meta = ExperimentMeta(base.experiment_id, base.model, base.workload, server.tp, trace_dir, server,
                          base.arch, base.hardware)
    blocks, kv_source = kv_blocks_for(meta, roots)
    config = scheduler_config(trace_dir, blocks)
    constants: dict[str, Any] = dict(arch_columns(meta.arch, meta.hardware, meta.tp))
    constants.update({"experiment_id": meta.experiment_id, "model": meta.model, "workload": meta.workload,
                      "tp": float(meta.tp)})
    pname = str(getattr(predictor, "name", type(predictor).__name__))
    try:
        sim = simulate(to_workload(reqs), config, step_time_function(predictor, constants))
    except ValueError as exc:
        raise StepMLError(f"{trace_dir.name}: replay with {pname} failed: {exc}") from None
    out = sim.requests
    predicted = {"e2e_s": float(np.nanmean(out["e2e_s"])), "ttft_s": float(np.nanmean(out["ttft_s"])),
                 "requests": int(len(out))}
    measured = {"e2e_s": float(spans["e2e_s"].mean()), "ttft_s": float(spans["ttft_s"].mean()),
                "requests": int(len(spans))}
    return json_safe({
        "e2e_err": abs(relative_error(predicted["e2e_s"], measured["e2e_s"])),
        "ttft_err": abs(relative_error(predicted["ttft_s"], measured["ttft_s"])),
        "itl_err": None, "tpot_err": None, "throughput_err": None,
        "predicted": predicted, "measured": measured, "kind": "request trace (server-side latencies)",
        "kv_blocks": blocks, "kv_source": kv_source, "steps": int(len(sim.steps)),
    })


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


# -- predictors ---------------------------------------------------------------------------------------

_PICKS = ("best", "accuracy", "knee", "score")


def load_predictor(spec: str, fit_data: str | Path | None = None,
                   fit_experiments: Sequence[str] | None = None) -> Any:
    """A predictor from a CLI spec: ``RUN_DIR[:ROW]``, ``baseline:NAME`` or an artifact path.

    ``RUN_DIR[:ROW]``: the run's front row ``ROW`` (``best`` default, ``accuracy``,
    ``knee`` or a row number) as a :class:`~evaluation.predictors.FormulaPredictor`.
    ``ARTIFACT.json`` (or an export folder): the exported formula
    (:class:`~discovery.formula.ArtifactPredictor`).
    ``baseline:NAME``: that baseline fitted on the cycle target of ``fit_data``
    (default: the shared BLIS step table) restricted to ``fit_experiments``.
    """
    spec = str(spec).strip()
    if not spec:
        raise StepMLError("--predictor is empty")
    if spec.startswith("baseline:"):
        return _fit_baseline(spec.split(":", 1)[1], fit_data, fit_experiments)
    path_part, row = spec, "best"
    head, sep, tail = spec.rpartition(":")
    if sep and head and (tail in _PICKS or tail.isdigit()):
        path_part, row = head, tail
    if path_part.endswith(".json") or (Path(path_part) / "artifact.json").is_file():
        from discovery.formula import load_artifact

        return load_artifact(path_part)[1]
    run_dir = Path(path_part)
    if not run_dir.is_dir():
        raise StepMLError(f"predictor not found: {path_part} (expected RUN_DIR[:ROW] or baseline:NAME)")
    from discovery.review import front_of, pick_row
    from discovery.rundir import expr_of, read_hof
    from evaluation.predictors import FormulaPredictor
    from features import catalog

    front = front_of(read_hof(run_dir))
    k = pick_row(front, row)
    expr = expr_of(front.iloc[k])
    return FormulaPredictor(expr, tuple(catalog.registry()), name=f"{run_dir.name}:{row}")


def _fit_baseline(name: str, fit_data: str | Path | None, fit_experiments: Sequence[str] | None) -> Any:
    from evaluation.baselines import fit_baseline, make_baseline
    from features.dataset import load_dataset

    make_baseline(name)                                 # unknown names fail before loading data
    path = Path(fit_data) if fit_data else default_data_root() / STEP_TABLE
    if not path.exists():
        raise StepMLError(f"fit data not found: {path} (give --fit-data)")
    dataset = load_dataset(path, "cycle")
    ids = dataset.frame["experiment_id"].astype(str).to_numpy()
    if fit_experiments:
        wanted = [str(e) for e in fit_experiments]
        unknown = [e for e in wanted if e not in set(ids)]
        if unknown:
            raise StepMLError(f"--fit-experiments: {', '.join(unknown)} not in {path} "
                              f"(has: {', '.join(sorted(set(ids)))})")
        rows = np.flatnonzero(np.isin(ids, wanted))
    else:
        rows = np.arange(len(ids))
    model = fit_baseline(name, dataset, rows)
    if fit_experiments:
        model.name = f"{name}[{','.join(fit_experiments)}]"
    return model


# -- CLI ----------------------------------------------------------------------------------------------

def resolve_experiment(arg: str) -> Path:
    path = Path(arg)
    if path.is_dir():
        return path
    found = find_experiment_dir(arg, [default_data_root()])
    if found is not None:
        return found
    raise StepMLError(f"experiment directory not found: {arg}")


def format_result(result: ReplayResult) -> str:
    """Text report of one replay: per window and metric, predicted vs measured mean / p90 / p99 (ms)."""
    lines = [f"experiment {result.experiment_id}   predictor {result.predictor}   seed {result.seed}",
             f"  {len(result.requests)} requests, {result.num_steps} steps, KV {result.kv_blocks} blocks "
             f"({result.kv_source}), inputs {result.input_offset:+d} tokens, replay {result.wall_seconds:.1f} s"]
    head = (f"  {'window':<8} {'metric':<6} {'pred mean':>10} {'meas mean':>10} {'err%':>7} {'|err|%':>7} "
            f"{'pred p90':>9} {'meas p90':>9} {'err%':>7} {'pred p99':>9} {'meas p99':>9} {'err%':>7}")
    lines.append(head)
    for window, pred in result.predicted.items():
        meas = result.measured.get(window)
        for name in LATENCY_METRICS:
            p = pred.metric(name)
            m = meas.metric(name) if meas else None
            cells = [f"  {window:<8} {_SHORT[name]:<6}"]
            for stat in ("mean", "p90", "p99"):
                pv = getattr(p, stat) * 1e3
                mv = getattr(m, stat) * 1e3 if m else float("nan")
                err = relative_error(pv, mv)
                width = 10 if stat == "mean" else 9
                cells.append(f"{pv:>{width}.2f} {mv:>{width}.2f} {err:>+7.1f}")
                if stat == "mean":
                    cells.append(f"{abs(err):>7.1f}")
            lines.append(" ".join(cells))
        thr_p = pred.requests_per_sec
        thr_m = meas.requests_per_sec if meas else float("nan")
        err = relative_error(thr_p, thr_m)
        lines.append(f"  {window:<8} {'req/s':<6} {thr_p:>10.3f} {thr_m:>10.3f} {err:>+7.1f} {abs(err):>7.1f}")
    lines.append("  (latencies in ms; err% = 100 (pred - meas) / meas; ITL/TPOT per streamed line as inference-perf "
                 "reports them; measured NTPOT divides by re-tokenised output counts, so it is not comparable)")
    for note in result.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.replay",
        description="Replay inference-perf experiments with a step-time predictor; compare request latencies.")
    parser.add_argument("--predictor", required=True, help="RUN_DIR[:ROW] (ROW = best|accuracy|knee|N), ARTIFACT.json (or an export "
                             "folder) or baseline:NAME")
    parser.add_argument("--experiments", required=True, nargs="+", metavar="DIR",
                        help="experiment directories (blis/experiments/<id>) or experiment ids; a folder with "
                             "llm_request spans (traces.json) and exp-config.yaml is replayed from its requests")
    parser.add_argument("--fit-data", default=None,
                        help="step data a baseline is fitted on (default: <data root>/blis/steps/enriched_steps.parquet)")
    parser.add_argument("--fit-experiments", default=None, help="comma-separated experiment ids to fit a baseline on")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--queue-overhead-s", type=float, default=0.0, help="client send -> scheduler delay (s)")
    parser.add_argument("--post-overhead-s", type=float, default=0.0, help="step end -> client delay per token (s)")
    parser.add_argument("--end-overhead-s", type=float, default=0.0, help="last streamed line -> request end (s)")
    parser.add_argument("--calibrate-on", default=None, metavar="DIR",
                        help="derive the queue and end overheads from this experiment's measurements first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.replay``."""
    args = build_parser().parse_args(argv)
    fit_exps = [e.strip() for e in args.fit_experiments.split(",") if e.strip()] if args.fit_experiments else None
    for label, value in (("--queue-overhead-s", args.queue_overhead_s), ("--post-overhead-s", args.post_overhead_s),
                         ("--end-overhead-s", args.end_overhead_s)):
        if not (math.isfinite(value) and value >= 0):
            raise StepMLError(f"{label} must be a finite number >= 0, got {value}")
    experiments = [resolve_experiment(e) for e in args.experiments]
    predictor = load_predictor(args.predictor, args.fit_data, fit_exps)
    overheads = {"queue_overhead_s": args.queue_overhead_s, "post_overhead_s": args.post_overhead_s,
                 "end_overhead_s": args.end_overhead_s}
    calibration = None
    if args.calibrate_on:
        calibration = calibrate_overheads(resolve_experiment(args.calibrate_on), predictor, args.seed)
        overheads.update(calibration)
        if not args.json:
            print(f"calibrated on {Path(args.calibrate_on).name}: queue overhead "
                  f"{calibration['queue_overhead_s'] * 1e3:.2f} ms, end overhead {calibration['end_overhead_s'] * 1e3:.2f} ms")
    results = {}
    traces = {}
    for exp in [e for e in experiments if is_request_trace(e)]:
        traces[exp.name] = replay_request_trace(exp, predictor, overheads["queue_overhead_s"])
        if not args.json:
            t = traces[exp.name]
            print(f"{exp.name} (request trace, server-side latencies): mean E2E predicted "
                  f"{t['predicted']['e2e_s']:.3f} s vs measured {t['measured']['e2e_s']:.3f} s "
                  f"(|err| {t['e2e_err']:.1f} %), mean TTFT {t['predicted']['ttft_s'] * 1e3:.1f} ms vs "
                  f"{t['measured']['ttft_s'] * 1e3:.1f} ms (|err| {t['ttft_err']:.1f} %)")
            print()
    for exp in [e for e in experiments if not is_request_trace(e)]:
        result = replay_experiment(exp, predictor, args.seed, overheads["queue_overhead_s"],
                                   overheads["post_overhead_s"], end_overhead_s=overheads["end_overhead_s"])
        results[result.experiment_id] = result
        if not args.json:
            print(format_result(result))
            print()
    if args.json:
        print(json.dumps({"predictor": str(getattr(predictor, "name", "")), "seed": args.seed,
                          "overheads": overheads, "calibrated_on": args.calibrate_on,
                          "experiments": {**{k: r.to_json_dict() for k, r in results.items()}, **traces}}))
    return 0


if __name__ == "__main__":
    from features.cli import run

    run(main, prog="evaluation.replay")
