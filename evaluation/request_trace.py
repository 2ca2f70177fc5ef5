"""Replay of a folder of vLLM ``llm_request`` spans from its own arrivals and token counts.

A folder with ``traces.json`` (or ``.gz``) request spans beside an ``exp-config.yaml``
(as in ``blis/request_traces/``) is no inference-perf run: its requests are replayed
as the spans record them (arrival, prompt and completion tokens) and compared on the
server-side latencies the spans measured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.latency_metrics import relative_error
from evaluation.replay_setup import kv_blocks_for, roots_for, scheduler_config, step_constants, step_time_function
from evaluation.scheduler import simulate
from evaluation.workloads import requests_from_table, to_workload
from features.errors import StepMLError
from features.io import json_safe
from features.metadata import ExperimentMeta, experiment_meta, load_server_config
from features.otlp import read_request_spans

__all__ = ["is_request_trace", "replay_request_trace"]


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
    constants = step_constants(meta)
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
