"""The bundled SYNTHETIC demo dataset: a known step-time law under real batching dynamics.

``demo_steps()`` simulates a few dense and MoE model configurations serving
Poisson request streams through the project's continuous-batching scheduler
(:mod:`evaluation.scheduler`, the same one the replay uses), times every step
with a stated closed-form law, samples about one step in four (as vLLM's
tracing samples steps) and returns BATCH_SUMMARY-schema rows.

The generating law (µs), in catalogue features (:mod:`features.catalog`)::

    step_time = 150
              + 1.25 · rl_weight_load
              + 1.5  · (rl_prefill_compute + rl_decode_compute + rl_attn_compute)
              + 1.8  · rl_kv_read
              + 1.0  · rl_allreduce
    observed  = step_time · exp(0.02 · N(0, 1))

Timestamps count busy time only (idle gaps removed) and the run is cut at
the last arrival (steady state). ``step.duration_us`` mimics vLLM's recorded value: scheduler bookkeeping time
unrelated to the step's wall time (~300–700 µs). The cycle time
(Δts/Δid) carries the law. Everything is drawn from one seeded generator:
same seed → identical data. The data is labelled synthetic wherever it appears.

CLI: ``python -m features.demo --out DIR`` writes ``demo_steps_synthetic.parquet``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd

from features.metadata import Hardware, ModelArch, arch_columns

DEMO_SEED = 20260226
SAMPLE_PROBABILITY = 0.25
NOISE_SIGMA = 0.02
LAW_INTERCEPT_US = 150.0
#: feature name → coefficient of the generating law.
LAW_TERMS: dict[str, float] = {
    "rl_weight_load": 1.25,
    "rl_prefill_compute": 1.5,
    "rl_decode_compute": 1.5,
    "rl_attn_compute": 1.5,
    "rl_kv_read": 1.8,
    "rl_allreduce": 1.0,
}

H100 = Hardware("H100 SXM (demo)", dense_bf16_flops=989.5e12, hbm_bytes_per_s=3.35e12,
                interconnect_bytes_per_s=900e9, memory_bytes=80e9)


@dataclass(frozen=True)
class DemoModel:
    """One demo model configuration."""

    key: str
    arch: ModelArch
    tp: int


@dataclass(frozen=True)
class DemoWorkload:
    """A Poisson request stream with log-normal prompt and output lengths and a shared prefix."""

    name: str
    prompt_mean: float
    output_mean: float
    prefix_len: int
    prefix_groups: int
    requests: int


MODELS: tuple[DemoModel, ...] = (
    DemoModel("dense-8b", ModelArch("demo-dense-8b", 32, 4096, 32, 8, 128, 14336, 128256), 1),
    DemoModel("dense-34b", ModelArch("demo-dense-34b", 48, 8192, 64, 8, 128, 22016, 32000), 2),
    DemoModel("moe-8x7b", ModelArch("demo-moe-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, 8, 2), 2),
    DemoModel("moe-64x1b", ModelArch("demo-moe-64x1b", 24, 2048, 16, 16, 128, 1408, 151936, 64, 6), 1),
)
WORKLOADS: tuple[DemoWorkload, ...] = (
    DemoWorkload("chat", prompt_mean=600, output_mean=180, prefix_len=200, prefix_groups=6, requests=420),
    DemoWorkload("code", prompt_mean=1400, output_mean=110, prefix_len=400, prefix_groups=4, requests=520),
)


@lru_cache(maxsize=1)
def _law() -> tuple[object, tuple[str, ...]]:
    """The noiseless law as one compiled function of canonical columns (built once)."""
    import sympy

    from features.catalog import get_feature

    expr = sympy.Float(LAW_INTERCEPT_US) + sum(sympy.Float(c) * get_feature(k).sympy_expr()
                                               for k, c in LAW_TERMS.items())
    columns = tuple(sorted(str(s) for s in expr.free_symbols))
    symbols = [sympy.Symbol(c.replace(".", "__")) for c in columns]
    safe = expr.xreplace({sympy.Symbol(c): s for c, s in zip(columns, symbols)})
    return sympy.lambdify(symbols, safe, modules="math", docstring_limit=0), columns


def law_time_us(columns: dict[str, float]) -> float:
    """The noiseless generating law for one step's canonical columns (µs)."""
    fn, names = _law()
    return float(fn(*(float(columns[c]) for c in names)))  # type: ignore[operator]


def _workload(rng: np.random.Generator, w: DemoWorkload, rate: float):
    from evaluation.scheduler import Workload

    n = w.requests
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    sigma = 0.6
    prompt = np.clip(rng.lognormal(np.log(w.prompt_mean) - sigma**2 / 2, sigma, n), w.prefix_len + 8, 3000)
    output = np.clip(rng.lognormal(np.log(w.output_mean) - sigma**2 / 2, sigma, n), 4, 900)
    group = rng.integers(0, w.prefix_groups, n)
    return Workload(arrivals, prompt.astype(np.int64), output.astype(np.int64), group,
                    np.full(n, w.prefix_len, dtype=np.int64))


def simulate_experiment(model: DemoModel, workload: DemoWorkload, rng: np.random.Generator) -> pd.DataFrame:
    """Simulate one demo experiment and return its sampled BATCH_SUMMARY rows."""
    from evaluation.scheduler import SchedulerConfig, simulate

    constants = arch_columns(model.arch, H100, model.tp)
    # Offered load: ~70 % of the capacity estimated from one prompt's prefill plus its share of
    # decode steps at a batch of 64.
    kv_mean = workload.prompt_mean + workload.output_mean / 2
    decode = dict(constants, **{"batch.prefill_tokens": 0.0, "batch.decode_tokens": 64.0,
                                "batch.scheduled_tokens": 64.0, "batch.prefill_context_sum": 0.0,
                                "kv.tokens_in_use": 64.0 * kv_mean})
    prefill = dict(decode, **{"batch.prefill_tokens": workload.prompt_mean,
                              "batch.scheduled_tokens": 64.0 + workload.prompt_mean,
                              "batch.prefill_context_sum": workload.prompt_mean ** 2 / 2})
    per_request_s = ((law_time_us(prefill) - law_time_us(decode))
                     + law_time_us(decode) * workload.output_mean / 64) * 1e-6
    rate = 0.7 / per_request_s
    kv_bytes = 2 * model.arch.num_layers * model.arch.num_kv_heads * model.arch.head_dim * 2
    free = 0.9 * H100.memory_bytes * model.tp - model.arch.total_params * model.arch.bytes_per_param
    blocks = int(free / (kv_bytes * 16))
    config = SchedulerConfig(max_num_seqs=128, max_num_batched_tokens=2048, max_model_len=4096,
                             num_gpu_blocks=blocks)
    noise_rng = rng

    def step_time(agg: dict[str, float]) -> float:
        return law_time_us({**constants, **agg}) * float(np.exp(NOISE_SIGMA * noise_rng.standard_normal()))

    requests = _workload(rng, workload, rate)
    steps = simulate(requests, config, step_time).steps
    # Keep the steady state (steps that start before the last arrival) and count busy time only,
    # so the cycle target carries the law without idle gaps.
    steps = steps.loc[steps["step.ts_start_ns"] <= float(requests.arrival_s.max() - requests.arrival_s.min()) * 1e9]
    busy_ns = np.round(steps["step.duration_us"].to_numpy(float) * 1e3).astype(np.int64)
    steps = steps.assign(**{"step.ts_start_ns": np.concatenate([[0], np.cumsum(busy_ns)[:-1]])})
    keep = rng.random(len(steps)) < SAMPLE_PROBABILITY
    out = steps.loc[keep].reset_index(drop=True)
    out["step.duration_us"] = np.round(300 + 2.5 * (out["batch.num_prefill_reqs"] + out["batch.num_decode_reqs"])
                                       + rng.gamma(2.0, 60.0, len(out))).astype(np.int64)
    out["step.ts_end_ns"] = out["step.ts_start_ns"] + out["step.duration_us"] * 1000
    index = [m.key for m in MODELS].index(model.key) * len(WORKLOADS) + [w.name for w in WORKLOADS].index(workload.name)
    experiment_id = f"20260101-{index:02d}0000-demo-{model.key}-tp{model.tp}-{workload.name}"
    out.insert(0, "experiment_id", experiment_id)
    out["model"] = f"demo-{model.key}"
    out["workload"] = workload.name
    out["tp"] = model.tp
    for name, value in constants.items():
        out[name] = value
    return out


@lru_cache(maxsize=2)
def _demo(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [simulate_experiment(m, w, rng) for m in MODELS for w in WORKLOADS]
    frame = pd.concat(parts, ignore_index=True)
    for col in ("step.id", "step.ts_start_ns", "step.ts_end_ns", "step.duration_us", "queue.running_depth",
                "queue.waiting_depth", "batch.num_prefill_reqs", "batch.num_decode_reqs", "batch.scheduled_tokens",
                "batch.prefill_tokens", "batch.decode_tokens", "batch.num_finished", "batch.num_preempted",
                "kv.blocks_total_gpu", "kv.blocks_free_gpu"):
        frame[col] = frame[col].round().astype(np.int64)
    return frame


def demo_steps(seed: int = DEMO_SEED) -> pd.DataFrame:
    """The synthetic demo step table (a copy; deterministic for a seed)."""
    return _demo(seed).copy()


def demo_arguments(argv: Sequence[str] | None, prog: str, description: str, out_help: str) -> argparse.Namespace:
    """``--out DIR [--seed N]`` of the demo writers, checked (seed >= 0, a writable folder) before any work."""
    from features.errors import StepMLError
    from features.io import check_writable_dir

    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise StepMLError(f"--seed must be >= 0, got {args.seed}")
    check_writable_dir(args.out, "--out")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write the demo data for inspection: ``python -m features.demo --out DIR``."""
    from pathlib import Path

    from features.io import atomic_write_frame

    args = demo_arguments(argv, "features.demo", "Write the SYNTHETIC demo step table.", "output folder")
    path = atomic_write_frame(Path(args.out) / "demo_steps_synthetic.parquet", demo_steps(args.seed))
    print(f"wrote {path} (SYNTHETIC demo data, seed {args.seed})")
    return 0


if __name__ == "__main__":
    from features.cli import run

    run(main, prog="features.demo")
