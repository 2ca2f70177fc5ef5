"""A SYNTHETIC request log, as a user's client would write one, for the README's request-log example.

:func:`write_demo_request_log` writes into a folder:

- ``requests.csv``: one row per request, ``tenant_id, request_idx, ttft_ms, tpot_ms,
  mean_itl_ms, e2e_ms, num_input_tokens, num_output_tokens, start_time`` (unix
  seconds), in send order. Two tenants send Poisson streams for two minutes:
  ``chat`` (3 req/s, log-normal prompts of mean ~600 tokens and outputs of ~180) and
  ``code`` (2 req/s, ~1,400 and ~110). ``tpot_ms`` is ``(e2e − ttft) / (output − 1)``
  and ``mean_itl_ms`` the request's mean gap between output tokens (both per token,
  empty for a one-token output);
- ``summary.json``: the model, hardware, offered rate and duration;
- ``model_configs/demo-dense-8b/config.json``: the model (the demo's dense 8B).

The latencies are what the project's request-log replay
(:func:`evaluation.request_replay.replay_requests`, async scheduling) gives when
every step takes the demo's generating law (:data:`features.demo.LAW_TERMS`) times
``exp(0.02·N(0,1))`` noise, on the server of :data:`SERVER` (no client overheads).
Replaying the log with that law therefore reproduces it up to the noise. Everything
is drawn from one seeded generator: the same seed gives identical files. Labelled
synthetic in ``summary.json``.

CLI: ``python -m features.demo_requests --out DIR``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from features.demo import DEMO_SEED, MODELS, demo_arguments

__all__ = ["write_demo_request_log", "SERVER", "TENANTS", "DURATION_S", "START_UNIX_S"]

#: The server the log was "measured" on (the README's server file says the same).
SERVER: dict[str, Any] = {"model": "demo-dense-8b", "hardware": "h100-sxm", "tensor_parallel_size": 1,
                          "max_num_seqs": 256, "max_num_batched_tokens": 2048}
#: tenant → (requests/s, mean prompt tokens, mean output tokens).
TENANTS = {"chat": (3.0, 600.0, 180.0), "code": (2.0, 1400.0, 110.0)}
DURATION_S = 120.0
#: 2026-01-01 00:00:00 UTC: the first instant of the log's clock.
START_UNIX_S = 1767225600.0
MAX_POSITION_EMBEDDINGS = 8192


def _lognormal(rng: np.random.Generator, mean: float, n: int, low: int, high: int) -> np.ndarray:
    sigma = 0.5
    draws = rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, n)
    return np.clip(np.round(draws), low, high).astype(np.int64)


def _requests(rng: np.random.Generator) -> pd.DataFrame:
    parts = []
    for tenant, (rate, prompt, output) in TENANTS.items():
        gaps = rng.exponential(1.0 / rate, int(rate * DURATION_S * 1.5))
        times = np.cumsum(gaps)
        times = times[times < DURATION_S]
        n = times.size
        parts.append(pd.DataFrame({"tenant_id": tenant, "request_idx": np.arange(n), "start_s": times,
                                   "num_input_tokens": _lognormal(rng, prompt, n, 16, 4000),
                                   "num_output_tokens": _lognormal(rng, output, n, 1, 1000)}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values("start_s", kind="stable").reset_index(drop=True)


def write_demo_request_log(out: str | Path, seed: int = DEMO_SEED) -> Path:
    """Write the demo log (module docstring) into ``out``; return the path of ``requests.csv``."""
    from evaluation.request_replay import replay_requests
    from evaluation.server_spec import server_from_settings
    from features.demo_experiments import _config_json, _NoisyLaw, _write
    from features.io import atomic_write_frame
    from features.request_log import RequestLog

    out = Path(out)
    model = MODELS[0]
    config = {**_config_json(model), "max_position_embeddings": MAX_POSITION_EMBEDDINGS}
    _write(out / "model_configs" / model.arch.name / "config.json", config)
    rng = np.random.default_rng(seed)
    reqs = _requests(rng)
    frame = pd.DataFrame({"request_id": reqs["tenant_id"] + "-" + reqs["request_idx"].astype(str),
                          "group": reqs["tenant_id"], "arrival_s": reqs["start_s"],
                          "input_tokens": reqs["num_input_tokens"], "output_tokens": reqs["num_output_tokens"],
                          "cached_tokens": 0})
    server = server_from_settings(SERVER, {k: "demo" for k in SERVER}, [out], "demo server", base=out)
    result = replay_requests(RequestLog("requests", "demo", frame, per="token"), server, _NoisyLaw(rng),
                             async_scheduling=True, capacity=False)
    view = result.requests
    n = reqs["num_output_tokens"].to_numpy()
    ttft, e2e = view["ttft_s"].to_numpy(), view["e2e_s"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        per_token = np.where(n > 1, (e2e - ttft) / (n - 1), np.nan)
        gaps = np.where(n > 1, (view["end_s"].to_numpy() - view["first_line_s"].to_numpy()) / (n - 1), np.nan)
    log = pd.DataFrame({"tenant_id": reqs["tenant_id"], "request_idx": reqs["request_idx"],
                        "ttft_ms": np.round(ttft * 1e3, 3), "tpot_ms": np.round(per_token * 1e3, 3),
                        "mean_itl_ms": np.round(gaps * 1e3, 3), "e2e_ms": np.round(e2e * 1e3, 3),
                        "num_input_tokens": reqs["num_input_tokens"], "num_output_tokens": n,
                        "start_time": np.round(START_UNIX_S + reqs["start_s"].to_numpy(), 6)})
    path = out / "requests.csv"
    atomic_write_frame(path, log)
    rate = sum(r for r, _, _ in TENANTS.values())
    _write(out / "summary.json", {"model": model.arch.name, "hardware": SERVER["hardware"],
                                  "tensor_parallel_size": SERVER["tensor_parallel_size"],
                                  "offered_rate_rps": rate, "duration_s": DURATION_S,
                                  "tenants": {t: r for t, (r, _, _) in TENANTS.items()}, "requests": int(len(log)),
                                  "synthetic": True, "note": "SYNTHETIC: the demo step-time law with 2 % noise"})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m features.demo_requests --out DIR``."""
    args = demo_arguments(argv, "features.demo_requests", "Write a SYNTHETIC per-request log (known step-time law).",
                          "folder for requests.csv, summary.json and model_configs/")
    path = write_demo_request_log(args.out, args.seed)
    print(f"wrote a SYNTHETIC request log: {path} ({len(pd.read_csv(path))} requests)")
    return 0


if __name__ == "__main__":
    from features.cli import run

    run(main, prog="features.demo_requests")
