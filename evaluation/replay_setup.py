"""Everything a replay needs to know about one experiment before it simulates.

Server settings (``exp-config.yaml``), the KV pool, the model/hardware constants a
predictor sees, the client's limits (``results/config.yaml``), the measured
reports, and the requests of the profile, gathered into one
:class:`ExperimentSetup` by :func:`prepare_experiment`. Used by
:mod:`evaluation.replay` and :mod:`evaluation.capacity`.

KV pool
-------
``kv.blocks_total_gpu`` of the experiment when the step data
(``<data root>/blis/steps/enriched_steps.parquet``) has it, else estimated as
``floor((0.9 · M · TP − W − TP · R) / (16 · 2 · L · H_kv · d · b))`` with ``M`` the
per-GPU memory (the datasheet's "80 GB" read as 80 GiB, as the device reports),
0.9 vLLM's default ``gpu_memory_utilization``, ``W`` the weight bytes
(``arch.total_params · bytes_per_param``), ``R = 1.72 GB`` per GPU of activation /
CUDA-graph reserve, ``L`` layers, ``H_kv`` KV heads, ``d`` head dim, ``b`` bytes per
value. ``R`` was calibrated on the two known pools and reproduces both:
31,356 blocks (Llama-2-70B TP4) and 26,602 (CodeLlama-34B TP2).

Client limits (inference-perf, February 2026)
---------------------------------------------
``results/config.yaml`` is inference-perf's dump of the configuration it ran. Its
``load.request_timeout`` is passed to ``aiohttp.ClientTimeout(total=...)``; when it
is null (every BLIS run) the session keeps aiohttp's ``DEFAULT_TIMEOUT``:
``total = 5 * 60`` s. aiohttp rounds a timeout above its ``ceil_threshold`` (5 s)
*up to the next whole second of the event-loop clock*, so a request sent at loop
time ``t`` is cancelled at ``ceil(t + 300)``: 300–301 s after it was sent. The
measured failures agree: in all four ``reasoning`` runs every failed request has a
latency between 300.00 and 301.00 s (mean 300.3–300.5 s). ``num_workers ×
worker_max_concurrency`` (224 × 100) bounds the requests a stage has in flight and
``worker_max_tcp_connections`` (2,500) the connections of one worker; neither
binds here (a stage sends at most 12,000 requests, all pulled by the workers at its
start, and the measured ``schedule_delay`` stays under 10 ms).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from evaluation.latency_metrics import LifecycleSummary, read_lifecycle_report
from evaluation.scheduler import SchedulerConfig
from evaluation.workloads import Profile, experiment_profile, requests_from_profile
from features.errors import StepMLError
from features.metadata import (ExperimentMeta, arch_columns, default_data_root, experiment_meta,
                               find_experiment_dir, load_server_config, metadata_roots, parse_experiment_name)

__all__ = ["ClientLimits", "ExperimentSetup", "prepare_experiment", "client_limits", "scheduler_config",
           "estimate_kv_blocks", "kv_blocks_from_memory", "kv_blocks_for", "step_time_function", "step_constants", "roots_for",
           "experiment_metadata", "measured_windows", "measured_prompt_len", "matched_input_offset", "resolve_experiment",
           "BLOCK_SIZE", "STEP_TABLE", "AIOHTTP_DEFAULT_TIMEOUT_S"]

BLOCK_SIZE = 16
GPU_MEMORY_UTILIZATION = 0.9
#: Per-GPU memory vLLM keeps outside the KV pool (activations, CUDA graphs), bytes; calibrated.
RESERVE_BYTES_PER_GPU = 1.72e9
STEP_TABLE = Path("blis") / "steps" / "enriched_steps.parquet"
#: aiohttp's ``DEFAULT_TIMEOUT.total`` (s), used by inference-perf when ``request_timeout`` is null.
AIOHTTP_DEFAULT_TIMEOUT_S = 300.0
#: aiohttp's ``ClientTimeout.ceil_threshold`` (s): longer timeouts end on a whole second of the loop clock.
AIOHTTP_CEIL_THRESHOLD_S = 5.0


@dataclass(frozen=True)
class ClientLimits:
    """What the load generator's client did with slow requests (module docstring).

    Attributes
    ----------
    timeout_s : float or None
        Total time a request may take before the client cancels it (None: never).
    ceil_to_second : bool
        The deadline is rounded up to a whole second of the client's loop clock
        (aiohttp, for timeouts above 5 s): 0–1 s more, drawn uniformly.
    max_in_flight : int or None
        Requests the client can have in flight (``num_workers × worker_max_concurrency``).
    source : str
        Where the values come from.
    """

    timeout_s: float | None = AIOHTTP_DEFAULT_TIMEOUT_S
    ceil_to_second: bool = True
    max_in_flight: int | None = None
    source: str = "inference-perf defaults (request_timeout null -> aiohttp total timeout 300 s)"


@dataclass(frozen=True)
class ExperimentSetup:
    """One experiment, ready to simulate (see :func:`prepare_experiment`)."""

    exp_dir: Path
    meta: ExperimentMeta
    profile: Profile
    config: SchedulerConfig
    kv_blocks: int | None
    kv_source: str
    input_offset: int
    constants: Mapping[str, Any]
    client: ClientLimits
    requests: pd.DataFrame = field(repr=False)
    stages: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()


def roots_for(exp_dir: Path, data_root: Path | None) -> list[Path]:
    """Metadata roots of an experiment, ``data_root`` first."""
    roots = metadata_roots(exp_dir)
    if data_root is not None:
        roots.insert(0, Path(data_root))
    return roots


def experiment_metadata(exp_dir: Path, roots: list[Path]) -> ExperimentMeta:
    """Model, hardware and server metadata of an experiment folder."""
    exp_id = exp_dir.name
    server = load_server_config(exp_dir / "exp-config.yaml")
    tp = None if parse_experiment_name(exp_id) else server.tp
    meta = experiment_meta(exp_id, roots, tp=tp)
    if meta.directory is None or meta.directory.resolve() != exp_dir.resolve():
        meta = ExperimentMeta(meta.experiment_id, meta.model, meta.workload, meta.tp, exp_dir, server,
                              meta.arch, meta.hardware)
    return meta


def scheduler_config(exp_dir: str | Path, num_gpu_blocks: int | None,
                     async_scheduling: bool = False) -> SchedulerConfig:
    """The vLLM scheduler settings of an experiment (``exp-config.yaml``)."""
    server = load_server_config(Path(exp_dir) / "exp-config.yaml")
    try:
        return SchedulerConfig(max_num_seqs=server.max_num_seqs, max_num_batched_tokens=server.max_num_batched_tokens,
                               max_model_len=server.max_model_len, block_size=BLOCK_SIZE,
                               num_gpu_blocks=num_gpu_blocks, enable_chunked_prefill=True,
                               enable_prefix_caching=True, async_scheduling=async_scheduling)
    except ValueError as exc:
        raise StepMLError(f"{exp_dir}/exp-config.yaml: {exc}") from None


def estimate_kv_blocks(meta: ExperimentMeta) -> int | None:
    """KV pool estimate from model and GPU memory (module docstring); None without metadata."""
    if meta.arch is None or meta.hardware is None:
        return None
    return kv_blocks_from_memory(meta.arch, meta.hardware.memory_bytes, meta.tp)


def kv_blocks_from_memory(arch: Any, memory_bytes: float, tp: int, *,
                          gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION, block_size: int = BLOCK_SIZE,
                          kv_cache_memory_bytes: float | None = None) -> int | None:
    """KV blocks of a server (module docstring); None when nothing is left for the KV cache.

    Parameters
    ----------
    arch : ModelArch
    memory_bytes : float
        Datasheet memory per GPU (its "80 GB" is read as 80 GiB, as the device reports it).
    tp : int
        Tensor-parallel GPUs.
    gpu_memory_utilization : float
        vLLM's ``--gpu-memory-utilization`` (0.9 by default).
    block_size : int
        Tokens per KV block.
    kv_cache_memory_bytes : float, optional
        vLLM's ``--kv-cache-memory-bytes``: KV memory per GPU, used instead of the estimate.
    """
    tp = max(1, int(tp))
    kv_per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * arch.bytes_per_param
    if kv_cache_memory_bytes is not None:
        usable = float(kv_cache_memory_bytes) * tp
    else:
        per_gpu = memory_bytes / 1e9 * 2**30                   # datasheet GB read as GiB
        weights = arch.total_params * arch.bytes_per_param
        usable = gpu_memory_utilization * per_gpu * tp - weights - tp * RESERVE_BYTES_PER_GPU
    blocks = int(usable // (block_size * kv_per_token))
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


def step_constants(meta: ExperimentMeta) -> dict[str, Any]:
    """The per-experiment columns a predictor sees besides the step's own (arch, hw, ids, tp)."""
    constants: dict[str, Any] = dict(arch_columns(meta.arch, meta.hardware, meta.tp))
    constants.update({"experiment_id": meta.experiment_id, "model": meta.model, "workload": meta.workload,
                      "tp": float(meta.tp)})
    return constants


def step_time_function(predictor: Any, constants: Mapping[str, Any]):
    """``feats -> µs``: the predictor on the experiment constants plus one step's columns.

    Every call builds a fresh one-row column dict — each value a length-1 array, the
    form every predictor accepts (``FormulaPredictor`` rejects 0-d scalars) — and
    predicts it; nothing is cached between steps. A predictor with a
    ``step_function(constants)`` (a formula) supplies its own compiled scalar
    function instead: far faster, the same values.
    """
    name = str(getattr(predictor, "name", type(predictor).__name__))
    fast = _compiled_step_function(predictor, constants, name)
    if fast is not None:
        return fast
    predict = predictor.predict
    base = {k: np.asarray([v]) for k, v in constants.items()}
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


def _compiled_step_function(predictor: Any, constants: Mapping[str, Any], name: str):
    """The predictor's own compiled ``step_function`` wrapped to fail in one line, or None."""
    if not hasattr(predictor, "step_function"):
        return None
    numeric = {k: float(v) for k, v in constants.items() if isinstance(v, (int, float, np.number))}
    try:
        fast = predictor.step_function(numeric)
    except (StepMLError, AttributeError, KeyError, TypeError, ValueError):
        return None

    def step_time_us(features: dict[str, float]) -> float:
        try:
            return fast(features)
        except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
            raise StepMLError(f"predictor {name} failed on a simulated step ({type(exc).__name__}: {exc})") from None

    return step_time_us


def measured_windows(exp_dir: Path, stages: Sequence[int], all_stages: bool) -> dict[str, LifecycleSummary]:
    """The published report of every replayed stage, and ``summary`` when all stages are replayed."""
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


def measured_prompt_len(exp_dir: Path) -> float | None:
    """Mean ``prompt_len`` of the successes in the published summary (None when absent)."""
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
    measured_len = measured_prompt_len(Path(exp_dir))
    return 0 if measured_len is None else int(round(measured_len - profile.data.nominal_input))



def client_limits(exp_dir: str | Path) -> ClientLimits:
    """The client's timeout and in-flight bound from ``results/config.yaml`` (defaults without it)."""
    path = Path(exp_dir) / "results" / "config.yaml"
    if not path.is_file():
        return ClientLimits()
    try:
        dump = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StepMLError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None
    load = (dump or {}).get("load") if isinstance(dump, Mapping) else None
    if not isinstance(load, Mapping):
        return ClientLimits()
    raw = load.get("request_timeout")
    try:
        timeout = AIOHTTP_DEFAULT_TIMEOUT_S if raw in (None, 0) else float(raw)
        workers, per_worker = load.get("num_workers"), load.get("worker_max_concurrency")
        in_flight = int(workers) * int(per_worker) if workers and per_worker else None
    except (TypeError, ValueError):
        raise StepMLError(f"{path}: load.request_timeout / num_workers / worker_max_concurrency must be numbers") from None
    if not timeout > 0:
        raise StepMLError(f"{path}: load.request_timeout must be > 0, got {raw!r}")
    what = "aiohttp default 300 s" if raw in (None, 0) else f"{timeout:g} s"
    return ClientLimits(timeout, timeout > AIOHTTP_CEIL_THRESHOLD_S, in_flight,
                        f"results/config.yaml (request_timeout {raw!r} -> {what})")


def prepare_experiment(exp_dir: str | Path, predictor: Any, seed: int = 0, *, stages: Sequence[int] | None = None,
                       prefix_mode: str = "prompt", arrivals: str = "normalized", match_prompt_len: bool = True,
                       num_gpu_blocks: int | None = None, data_root: str | Path | None = None,
                       max_requests: int | None = None, async_scheduling: bool = False) -> ExperimentSetup:
    """Validate an experiment folder and build its :class:`ExperimentSetup`.

    Arguments as in :func:`evaluation.replay.replay_experiment`. The requests are
    those of the chosen stages, in send order, before any stage placement.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise StepMLError(f"experiment directory not found: {exp_dir}")
    for name in ("exp-config.yaml", "profile.yaml"):
        if not (exp_dir / name).is_file():
            raise StepMLError(f"{exp_dir}: no {name} (not an experiment directory?)")
    if not hasattr(predictor, "predict"):
        raise StepMLError(f"predictor {predictor!r} has no predict()")
    roots = roots_for(exp_dir, Path(data_root) if data_root else None)
    meta = experiment_metadata(exp_dir, roots)
    profile = experiment_profile(exp_dir)
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
    reqs = requests_from_profile(profile, seed, arrivals=arrivals, prefix_mode=prefix_mode, input_offset=offset)
    reqs = reqs[reqs["stage"].isin(chosen)]
    if max_requests is not None:
        reqs = reqs[reqs["stage_index"] < int(max_requests)]
    reqs = reqs.reset_index(drop=True)
    if reqs.empty:
        raise StepMLError(f"{exp_dir.name}: no requests to replay")
    return ExperimentSetup(exp_dir, meta, profile, scheduler_config(exp_dir, blocks, async_scheduling), blocks,
                           kv_source, offset,
                           step_constants(meta), client_limits(exp_dir), reqs, tuple(chosen), tuple(profile.notes))


def resolve_experiment(arg: str) -> Path:
    """An experiment folder from a path or an experiment id under the default data root."""
    path = Path(arg)
    if path.is_dir():
        return path
    found = find_experiment_dir(arg, [default_data_root()])
    if found is not None:
        return found
    raise StepMLError(f"experiment directory not found: {arg}")
