"""Replay of a request log: its own arrivals and token counts on a described server.

:func:`replay_requests` takes a :class:`~features.request_log.RequestLog` (any table
of requests read through a request map) and a
:class:`~evaluation.server_spec.ServerSpec`, simulates the requests with the
predictor as step time (:mod:`evaluation.scheduler`, the replay's simulator), and
compares the predicted mean / p50 / p90 / p99 of E2E, TTFT, TPOT, ITL, NTPOT and the
request throughput with what the log measured, per group (tenant, stage: the map's
``group``) and over the whole log — a :class:`~evaluation.replay.ReplayResult`, as for
an experiment folder.

A folder of vLLM ``llm_request`` spans beside an ``exp-config.yaml`` (as in
``blis/request_traces/``) is the same replay: its spans are read through the shipped
``otlp_spans`` map and its ``exp-config.yaml`` becomes the server
(:func:`replay_request_trace`), so a span folder and the same requests written as a
CSV with a matching server file give the same prediction.

Model of a log
--------------
- A request reaches the scheduler ``queue_overhead_s`` after its logged arrival
  (the arrivals are relative to the first one); cached tokens (``[tokens] cached``)
  are in the prefix cache from the start (each request's own, block-aligned; with
  prefix caching off they are ignored); every request generates its logged output.
- Each token reaches the client ``post_overhead_s`` after its step ends; the request
  ends ``end_overhead_s`` after its last token. All three default to 0: a server-side
  log (spans) is compared as it is; a client-side one may want them
  (``--queue-overhead-s`` ...).
- The measured and the predicted values follow one definition, the map's ``per``:
  ``token`` — TTFT to the first token, TPOT ``(last − first token) / (n − 1)``, ITL the
  gaps between tokens; ``line`` — inference-perf's streamed lines
  (:mod:`evaluation.latency_metrics`). An ITL column of one value per request is
  compared with the predicted per-request mean gap (its TPOT), a column of lists with
  the pooled gaps. TPOT and ITL leave out one-token outputs on both sides; NTPOT is
  E2E / output tokens on both sides.
- No client timeout; a served request longer than ``max_model_len`` is an error (the
  server file is wrong: vLLM would have rejected it). The predicted capacity
  (:mod:`evaluation.capacity`) is reported beside the log's offered rate (requests
  over the span of the arrivals).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from evaluation.capacity import LoadReport, StageLoad, service_capacity
from evaluation.latency_metrics import LifecycleSummary, Ragged, lifecycle_from_values, request_latency_values
from evaluation.operating_range import replay_range_check
from evaluation.replay import ReplayResult, client_view
from evaluation.replay_setup import step_constants, step_time_function
from evaluation.scheduler import simulate
from evaluation.server_spec import ServerSpec, load_server_file, server_from_exp_config
from evaluation.workloads import requests_from_table, to_workload
from features.errors import StepMLError
from features.metadata import metadata_roots
from features.request_log import METRICS, RequestLog, read_request_log

__all__ = ["replay_requests", "replay_request_file", "replay_request_trace", "is_request_trace", "TRACE_NAMES"]

TRACE_NAMES = ("traces.json", "traces.json.gz")


def is_request_trace(path: str | Path) -> bool:
    """True for a folder holding ``traces.json`` request spans and ``exp-config.yaml`` (no inference-perf run)."""
    path = Path(path)
    return path.is_dir() and (path / "exp-config.yaml").is_file() and any(
        (path / name).is_file() for name in TRACE_NAMES)


def replay_requests(log: RequestLog, server: ServerSpec, predictor: Any, *, queue_overhead_s: float = 0.0,
                    post_overhead_s: float = 0.0, end_overhead_s: float = 0.0, line_gap_s: float = 0.0,
                    async_scheduling: bool | None = None, capacity: bool = True) -> ReplayResult:
    """Replay a request log on a server with a step-time predictor (module docstring).

    Parameters
    ----------
    log : RequestLog
    server : ServerSpec
    predictor : Predictor
        ``name`` and ``predict(columns)`` returning µs.
    queue_overhead_s, post_overhead_s, end_overhead_s, line_gap_s : float
        As in :func:`evaluation.replay.replay_experiment` (s, >= 0).
    async_scheduling : bool, optional
        vLLM's one-step-ahead scheduling; None: the server's setting, else async.
    capacity : bool
        Also simulate the predicted capacity.

    Returns
    -------
    ReplayResult
        Windows: ``summary`` and one per group label; ``kind`` is ``request log``.
    """
    t_start = time.perf_counter()
    for label, value in (("queue_overhead_s", queue_overhead_s), ("post_overhead_s", post_overhead_s),
                         ("end_overhead_s", end_overhead_s), ("line_gap_s", line_gap_s)):
        if not (np.isfinite(value) and value >= 0):
            raise StepMLError(f"{label} must be a finite number >= 0, got {value!r}")
    if not hasattr(predictor, "predict"):
        raise StepMLError(f"predictor {predictor!r} has no predict()")
    config = server.scheduler_config(async_scheduling)
    blocks, kv_source = server.kv_pool()
    frame = log.frame
    too_long = np.flatnonzero(frame["input_tokens"].to_numpy() + frame["output_tokens"].to_numpy()
                              > config.max_model_len)
    if too_long.size:
        i = int(too_long[0])
        raise StepMLError(f"{log.source}: {too_long.size} logged request(s) exceed max_model_len {config.max_model_len} "
                          f"of {server.source} (first: {frame['input_tokens'].iloc[i]} + "
                          f"{frame['output_tokens'].iloc[i]} tokens); vLLM would have rejected them: give the "
                          "server's max_model_len")
    labels = log.groups
    codes = pd.Categorical(frame["group"].astype(str), categories=labels or [""]).codes.astype(np.int64)
    cached = frame["cached_tokens"].to_numpy(dtype=np.int64)
    warm = (cached > 0) & bool(config.enable_prefix_caching)
    table = pd.DataFrame({"arrival_s": frame["arrival_s"].to_numpy(dtype=float),
                          "input_tokens": frame["input_tokens"].to_numpy(),
                          "output_tokens": frame["output_tokens"].to_numpy(),
                          "prefix_group": np.where(warm, np.arange(len(frame)), -1),
                          "prefix_len": np.where(warm, cached, 0), "stage": codes})
    placed = requests_from_table(table, source=log.source, relative=False)
    work = placed.assign(arrival_s=placed["arrival_s"] + queue_overhead_s, prefix_warm=warm)
    pname = str(getattr(predictor, "name", type(predictor).__name__))
    constants = step_constants(server.meta(log.name))
    step_fn = step_time_function(predictor, constants)
    t_sim = time.perf_counter()
    try:
        sim = simulate(to_workload(work), config, step_fn, record_token_times=True)
    except ValueError as exc:
        raise StepMLError(f"{log.name}: replay with {pname} failed: {exc}") from None
    sim_seconds = time.perf_counter() - t_sim
    accepted = np.ones(len(placed), dtype=bool)
    per = log.per or "token"
    view, series = client_view(placed, sim, accepted, np.full(len(placed), np.inf), queue_overhead_s,
                               post_overhead_s, end_overhead_s, line_gap_s,
                               lines_per_event=2 if per == "line" else 1, done_event=per == "line")
    view["group"] = frame["group"].to_numpy()
    pooled = log.itl_samples is not None
    masks = {label: frame["group"].to_numpy() == label for label in labels}
    masks["summary"] = np.ones(len(frame), dtype=bool)
    predicted = {w: _predicted_summary(view, series, m, pooled) for w, m in masks.items()}
    measured = {w: _measured_summary(log, m) for w, m in masks.items()} if log.measured else {}
    load = _load(log, placed, config, step_fn, pname) if capacity else None
    notes = list(log.notes)
    if not log.measured:
        notes.append("the log measured no latencies: nothing to compare")
    if cached.any() and not config.enable_prefix_caching:
        notes.append("the log reports cached prompt tokens but prefix caching is off: they are recomputed")
    if load is not None and load.saturated:
        notes.append(f"saturated: the log offers {load.stages[0].offered_requests_per_s:.3g} req/s, predicted capacity "
                     f"{load.capacity.requests_per_s:.3g} req/s")
    server_info = {"settings": server.settings(), "sources": dict(server.sources), "defaults": server.defaults(),
                   "kv_blocks": blocks, "kv_source": kv_source, "async_scheduling": config.async_scheduling}
    result = ReplayResult(log.name, pname, 0, predicted, measured, view, int(len(sim.steps)), int(blocks or 0),
                          kv_source, config, 0, sim_seconds, 0.0, tuple(notes), None, load, kind="request log",
                          per=per, server=server_info, range_check=replay_range_check(predictor, sim.steps, constants))
    return replace(result, wall_seconds=time.perf_counter() - t_start)


def _predicted_summary(view: pd.DataFrame, series: Ragged, mask: np.ndarray, pooled: bool) -> LifecycleSummary:
    """Predicted metrics of the requests in ``mask`` by the log's definitions (module docstring)."""
    sub = view.loc[mask]
    start, end = sub["start_s"].to_numpy(dtype=float), sub["end_s"].to_numpy(dtype=float)
    out = sub["output_tokens"].to_numpy()
    part = series.subset(mask)
    values = request_latency_values(start, end, part, out)
    values["time_to_first_token"] = sub["first_line_s"].to_numpy(dtype=float) - start
    tpot = values["time_per_output_token"][out[part.lengths > 1] > 1]      # one-token outputs left out
    values["time_per_output_token"] = tpot
    if not pooled:                                  # a per-request ITL column: each request's mean gap
        values["inter_token_latency"] = tpot
    return lifecycle_from_values(values, start, end, sub["input_tokens"].to_numpy(), out)


def _measured_summary(log: RequestLog, mask: np.ndarray) -> LifecycleSummary:
    """The log's own metrics of the requests in ``mask`` (unmeasured metrics are empty)."""
    sub = log.frame.loc[mask]
    out = sub["output_tokens"].to_numpy()
    start = sub["arrival_s"].to_numpy(dtype=float)
    e2e = sub["e2e_s"].to_numpy(dtype=float)
    multi = out > 1
    values: dict[str, np.ndarray | None] = {}
    for key, name in METRICS.items():
        if key not in log.measured:
            values[name] = None
            continue
        column = sub[f"{key}_s"].to_numpy(dtype=float)
        values[name] = column[multi] if key in ("itl", "tpot") else column
    if "itl" in log.measured and log.itl_samples is not None:
        chosen = [s for s, keep in zip(log.itl_samples, mask) if keep]
        values["inter_token_latency"] = np.concatenate(chosen) if chosen else np.zeros(0)
    if "e2e" in log.measured:
        values["normalized_time_per_output_token"] = e2e / out
    return lifecycle_from_values(values, start, start + e2e, sub["input_tokens"].to_numpy(), out)


def _load(log: RequestLog, placed: pd.DataFrame, config: Any, step_fn: Any, pname: str) -> LoadReport:
    """Predicted capacity on the log's own request shapes beside its offered rate."""
    cap = service_capacity(placed, config, step_fn)
    arrival = placed["arrival_s"].to_numpy(dtype=float)
    span = float(arrival.max() - arrival.min())
    rate = len(placed) / span if span > 0 else float("inf")
    stage = StageLoad("log", rate, rate * float(placed["input_tokens"].mean()),
                      rate * float(placed["output_tokens"].mean()), cap)
    return LoadReport(log.name, pname, cap, (stage,))


# -- entry points ---------------------------------------------------------------------------------

def replay_request_file(path: str | Path, server: ServerSpec | str | Path, predictor: Any, *,
                        colmap: str | Path | None = None, data_root: str | Path | None = None,
                        **options: Any) -> ReplayResult:
    """Read one log (through ``colmap``, or the shipped map its content calls for) and replay it.

    ``server`` is a :class:`ServerSpec` or the path of a server YAML file; other
    keywords go to :func:`replay_requests`.
    """
    path = Path(path)
    log = read_request_log(path, colmap)
    if not isinstance(server, ServerSpec):
        server = load_server_file(server, _roots(path, data_root))
    return replay_requests(log, server, predictor, **options)


def _roots(path: Path, data_root: str | Path | None) -> list[Path]:
    roots = metadata_roots(path.parent if path.is_file() else path)
    return ([Path(data_root)] if data_root else []) + roots


def replay_request_trace(trace_dir: str | Path, predictor: Any, queue_overhead_s: float = 0.0,
                         data_root: str | Path | None = None, **options: Any) -> ReplayResult:
    """Replay a folder of ``llm_request`` spans: the spans as a request log, ``exp-config.yaml`` as the server.

    The spans measured server-side E2E and TTFT (``gen_ai.latency.*``); they are
    compared like with like (no client overheads unless given).
    """
    trace_dir = Path(trace_dir)
    trace = next((trace_dir / n for n in TRACE_NAMES if (trace_dir / n).is_file()), None)
    if trace is None:
        raise StepMLError(f"{trace_dir}: no {' or '.join(TRACE_NAMES)}")
    log = read_request_log(trace, "otlp_spans", name=trace_dir.name)
    server = server_from_exp_config(trace_dir / "exp-config.yaml", _roots(trace_dir, data_root), trace_dir.name)
    return replay_requests(log, server, predictor, queue_overhead_s=queue_overhead_s, **options)


def server_for(paths: Sequence[Path], server: str | Path | None, data_root: str | Path | None = None) -> ServerSpec:
    """The server of a ``--requests`` entry: ``--server FILE``, else the ``exp-config.yaml`` beside a span trace."""
    first = paths[0]
    if server is not None:
        return load_server_file(server, _roots(first, data_root))
    beside = first.parent / "exp-config.yaml"
    if beside.is_file():
        return server_from_exp_config(beside, _roots(first, data_root), first.parent.name)
    raise StepMLError(f"{first}: no --server FILE.yaml (and no exp-config.yaml beside the log); README 'Request logs'")
