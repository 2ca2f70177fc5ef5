"""SYNTHETIC demo experiments: inference-perf-style folders whose "measurements" come from the demo law.

:func:`write_demo_experiments` lays out, under a root folder, what the real BLIS
data has under ``../shared/data/blis``:

- ``blis/experiments/<YYYYMMDD-HHMMSS-model-tpN-workload>/``: ``exp-config.yaml``
  (vLLM settings), ``profile.yaml`` (an inference-perf shared-prefix profile with
  two constant-rate stages) and ``results/stage_<N>_lifecycle_metrics.json``;
- ``blis/model_configs/<model>/config.json`` (Hugging Face style) for the four
  demo models of :mod:`features.demo`;
- ``blis/hardware/h100-sxm.json``.

The results are what the project's own replay (:mod:`evaluation.replay`, async
scheduling) reports when every step takes the demo's generating law
(:data:`features.demo.LAW_TERMS`) times ``exp(0.02·N(0,1))`` noise, with a 9 ms
client → scheduler delay and a 2 ms tail after the last token — so a
calibration or a leave-one-model-out run on them has a known truth. Everything is
drawn from one seeded generator; the same seed gives identical files. Labelled
synthetic in every ``exp-config.yaml`` (``synthetic: true``).

CLI: ``python -m features.demo_experiments --out DIR``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from features.demo import (DEMO_SEED, H100, LAW_INTERCEPT_US, LAW_TERMS, MODELS, NOISE_SIGMA, DemoModel,
                          demo_arguments)

__all__ = ["QUEUE_OVERHEAD_S", "END_OVERHEAD_S", "STAGES", "write_demo_experiments", "law_expression"]

#: The client → scheduler delay and the tail after the last token of the demo "measurements".
QUEUE_OVERHEAD_S = 0.009
END_OVERHEAD_S = 0.002
#: Two stages per experiment: (fraction of the model's demo rate, seconds).
STAGES = ((0.5, 30.0), (1.0, 30.0))
#: Requests per second at the full demo rate, per model key (about a third of the model's capacity).
RATES = {"dense-8b": 6.0, "dense-34b": 4.0, "moe-8x7b": 4.0, "moe-64x1b": 8.0}
#: Shared-prefix workloads: name → (system prompt, question, output tokens, groups, prompts per group).
WORKLOADS = {"chat": (100, 400, 120, 4, 5), "code": (100, 700, 80, 5, 4)}


def law_expression() -> Any:
    """The demo's noiseless generating law as a sympy formula over catalogue features."""
    import sympy

    return sympy.Float(LAW_INTERCEPT_US) + sum(sympy.Float(c) * sympy.Symbol(k) for k, c in LAW_TERMS.items())


class _NoisyLaw:
    """The demo law with log-normal noise per step, from the run's generator (a replay predictor)."""

    name = "demo-law"

    def __init__(self, rng: np.random.Generator) -> None:
        from evaluation.predictors import FormulaPredictor
        from features import catalog

        self._law = FormulaPredictor(law_expression(), tuple(catalog.registry()), "demo-law")
        self._rng = rng

    def step_function(self, constants: dict[str, float]) -> Any:
        law = self._law.step_function(constants)
        rng = self._rng
        return lambda columns: law(columns) * float(np.exp(NOISE_SIGMA * rng.standard_normal()))

    def predict(self, columns: Any) -> np.ndarray:  # pragma: no cover - the replay uses step_function
        return self._law.predict(columns)


def _config_json(model: DemoModel) -> dict[str, Any]:
    a = model.arch
    cfg = {"_name_or_path": a.name, "hidden_size": a.hidden_size, "num_attention_heads": a.num_heads,
           "num_hidden_layers": a.num_layers, "num_key_value_heads": a.num_kv_heads, "head_dim": a.head_dim,
           "intermediate_size": a.intermediate_size, "vocab_size": a.vocab_size, "torch_dtype": "bfloat16",
           "tie_word_embeddings": a.tie_word_embeddings, "synthetic": True}
    if a.num_experts > 1:
        cfg.update({"num_local_experts": a.num_experts, "num_experts_per_tok": a.experts_per_token})
    return cfg


def _datasheet() -> dict[str, Any]:
    return {"name": H100.name, "synthetic": True,
            "compute": {"bf16_tensor_core": H100.dense_bf16_flops / 1e12, "with_sparsity": False},
            "memory": {"bandwidth_tb_s": H100.hbm_bytes_per_s / 1e12, "capacity_gb": H100.memory_bytes / 1e9},
            "interconnect": {"nvlink_bandwidth_gb_s": H100.interconnect_bytes_per_s / 1e9}}


def _profile(workload: str, rate: float) -> dict[str, Any]:
    system, question, output, groups, per_group = WORKLOADS[workload]
    return {"api": {"streaming": True, "type": "completion"},
            "data": {"type": "shared_prefix",
                     "shared_prefix": {"num_groups": groups, "num_prompts_per_group": per_group,
                                       "system_prompt_len": system, "question_len": question, "output_len": output}},
            "load": {"type": "constant", "interval": 1.0,
                     "stages": [{"rate": round(rate * f, 3), "duration": d} for f, d in STAGES]},
            "server": {"ignore_eos": True}}


def _report(summary: Any, prompt_len: float) -> dict[str, Any]:
    """A ``*_lifecycle_metrics.json`` object (the fields :func:`parse_lifecycle_report` reads)."""
    from evaluation.latency_metrics import LATENCY_METRICS

    latency = {}
    for name in LATENCY_METRICS:
        m = summary.metric(name)
        latency[name] = {"mean": m.mean, "median": m.median, "p90": m.p90, "p99": m.p99}
    return {"load_summary": {"count": summary.count},
            "successes": {"count": summary.count, "latency": latency,
                          "throughput": {"requests_per_sec": summary.requests_per_sec,
                                         "input_tokens_per_sec": summary.input_tokens_per_sec,
                                         "output_tokens_per_sec": summary.output_tokens_per_sec},
                          "prompt_len": {"mean": prompt_len}},
            "failures": {"count": 0}, "synthetic": True}


def _write(path: Path, obj: Any, as_yaml: bool = False) -> None:
    import yaml

    from features.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=True) if as_yaml else json.dumps(obj, indent=1) + "\n")


def write_demo_experiments(root: str | Path, seed: int = DEMO_SEED) -> list[Path]:
    """Write the demo experiments (module docstring) under ``root``; return the experiment folders."""
    from evaluation.replay import replay_experiment

    root = Path(root)
    blis = root / "blis"
    _write(blis / "hardware" / "h100-sxm.json", _datasheet())
    rng = np.random.default_rng(seed)
    out = []
    for index, model in enumerate(MODELS):
        _write(blis / "model_configs" / model.arch.name / "config.json", _config_json(model))
        for k, workload in enumerate(WORKLOADS):
            exp = blis / "experiments" / f"20260102-{index:02d}{k:02d}00-{model.arch.name}-tp{model.tp}-{workload}"
            _write(exp / "exp-config.yaml", {"model": f"demo/{model.arch.name}", "tensor_parallelism": model.tp,
                                             "max_model_len": 4096, "max_num_batched_tokens": 2048,
                                             "max_num_seqs": 128, "app": "inference-perf", "synthetic": True},
                   as_yaml=True)
            _write(exp / "profile.yaml", _profile(workload, RATES[model.key]))
            result = replay_experiment(exp, _NoisyLaw(rng), int(rng.integers(0, 2**31)), QUEUE_OVERHEAD_S,
                                       end_overhead_s=END_OVERHEAD_S, match_prompt_len=False,
                                       async_scheduling=True)
            prompt = float(result.requests["input_tokens"].mean())
            for window, summary in result.predicted.items():
                name = "summary" if window == "summary" else window
                _write(exp / "results" / f"{name}_lifecycle_metrics.json", _report(summary, prompt))
            out.append(exp)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m features.demo_experiments --out DIR``."""
    args = demo_arguments(argv, "features.demo_experiments", "Write the SYNTHETIC demo experiments (known step-time "
                          "law).", "root folder (experiments go to OUT/blis/experiments)")
    paths = write_demo_experiments(args.out, args.seed)
    print(f"wrote {len(paths)} SYNTHETIC demo experiments under {Path(args.out) / 'blis' / 'experiments'}")
    return 0


if __name__ == "__main__":
    from features.cli import run

    run(main, prog="features.demo_experiments")
