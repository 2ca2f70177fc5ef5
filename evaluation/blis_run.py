"""Run an inference-perf experiment through the real BLIS, as the Python replay runs it.

:func:`experiment_setup` reads an experiment folder (``exp-config.yaml``,
``profile.yaml``, the measured results) with the same helpers as
:mod:`evaluation.replay`, so both simulators get the same workload:

* requests: each stage of the profile is one BLIS run of a v2 workload spec
  (``version: "2"``, :func:`stage_spec`) with one client per prompt, Poisson
  arrivals at ``rate / P`` each — together a Poisson stream at the stage's rate,
  cut at its ``rate × duration``-th request by ``num_requests`` (inference-perf's
  constant timer is the same process conditioned on that count); stages run
  one after another, each on an idle server, as inference-perf ran them (and
  as the replay places them). BLIS's own ``inference_perf`` block is not used:
  its per-client normalised timers make every client's last request arrive at
  the very end of the stage (a burst of ``P`` simultaneous requests), and its
  multi-stage path draws plain Poisson counts;
* prompts: the ``num_groups × num_prompts_per_group`` prompts repeat, and the
  replay caches a repeated prompt whole (``prefix_mode="prompt"``, see
  :mod:`evaluation.workloads`); BLIS gets the same by making each prompt's
  client its own prefix group of ``input − 1`` tokens followed by 1 token,
  ``input`` being the nominal length shifted to the measured mean
  ``prompt_len`` exactly as the replay shifts it; so a repeated prompt has the
  same ``floor((input − 1)/16)·16`` tokens cached in both;
* outputs: ``output_len`` tokens (the experiments ran with ``ignore_eos``);
* server: ``--max-num-seqs``, ``--max-num-batched-tokens``, ``--max-model-len``
  from ``exp-config.yaml``, ``--tp``, ``--total-kv-blocks`` = the replay's KV pool
  (:func:`evaluation.replay.kv_blocks_for`), block size 16, the model's HF
  ``config.json`` folder (``--model-config-folder``) and BLIS's ``H100``
  hardware entry (the datasheet ``h100-sxm``).

Multi-turn profiles are refused (BLIS's closed-loop sessions are not the
replay's model).

Metrics (:class:`BlisMetrics`): means over every completed request of every
stage, from the per-request records of ``--metrics-path``. BLIS's ITL is per
output token (``itl_ms`` = the request's Σ inter-token gaps / (n − 1), each gap
= a step plus ``OutputTokenProcessingTime``); the measured ITL is per streamed
*line* (:mod:`evaluation.latency_metrics`: 2 (n + 1) timestamps per request, so
2n + 1 gaps spanning the first to the last token). The comparable value is
therefore ``Σ_requests itl_ms·(n − 1) / Σ_requests (2n + 1)`` — about
(n − 1)/(2n + 1) ≈ 0.5 of BLIS's ``itl_mean_ms`` — reported as ``itl_ms``
(BLIS's own per-token mean is kept as ``itl_token_ms``).

A ``stepml`` run logs (at info level) every architecture/hardware column the
model computed from BLIS's parse of ``config.json``; each is compared with the
column the replay uses (:func:`features.metadata.arch_columns`) and a difference
becomes a note.

Runs are cached by the binary's hash, the arguments (but the log level) and the
spec (``~/.cache/stepml/blis/runs``).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from features.errors import StepMLError

__all__ = ["ExperimentSetup", "BlisMetrics", "experiment_setup", "stage_spec", "blis_args", "run_backend",
           "BLIS_GPU", "BACKENDS"]

#: Datasheet name (features.metadata) → BLIS ``hardware_config.json`` entry.
BLIS_GPU = {"h100-sxm": "H100"}
#: BLIS latency backends compared, with their result keys.
BACKENDS = {"stepml": "blis_stepml", "trained-physics": "blis_trained_physics", "roofline": "blis_roofline"}
BLOCK_SIZE = 16


@dataclass(frozen=True)
class ExperimentSetup:
    """What BLIS needs to run one experiment like the replay does."""

    experiment_id: str
    model: str
    model_config_dir: Path
    gpu: str
    tp: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    kv_blocks: int
    stages: tuple[tuple[float, float], ...]
    num_prompts: int
    input_tokens: int
    output_tokens: int
    notes: tuple[str, ...] = ()
    columns: dict[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class BlisMetrics:
    """BLIS's request metrics of one experiment (means over all stages, ms)."""

    e2e_ms: float
    ttft_ms: float
    itl_ms: float
    itl_token_ms: float
    requests: int
    injected: int
    wall_seconds: float
    notes: tuple[str, ...] = field(default=())
    columns_checked: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_config_dir(model: str, roots: Sequence[Path]) -> Path | None:
    from features.metadata import find_model_config

    for root in roots:
        for sub in ("model_configs", "blis/model_configs"):
            if (root / sub).is_dir():
                found = find_model_config(model, root / sub)
                if found is not None:
                    return found
    return None


def experiment_setup(exp_dir: str | Path, data_root: str | Path | None = None) -> ExperimentSetup:
    """The BLIS configuration of one experiment (see the module docstring)."""
    from evaluation.replay_setup import experiment_metadata, kv_blocks_for, matched_input_offset, roots_for
    from evaluation.workloads import experiment_profile
    from features.metadata import DEFAULT_HARDWARE, arch_columns

    exp_dir = Path(exp_dir)
    for name in ("exp-config.yaml", "profile.yaml"):
        if not (exp_dir / name).is_file():
            raise StepMLError(f"{exp_dir}: no {name} (not an experiment directory?)")
    roots = roots_for(exp_dir, Path(data_root) if data_root else None)
    meta = experiment_metadata(exp_dir, roots)
    profile = experiment_profile(exp_dir)
    if profile.data.multi_turn:
        raise StepMLError(f"{exp_dir.name}: multi-turn profiles are not supported by evaluation.blis")
    server = meta.server
    model = server.model_id or meta.model
    config_dir = _model_config_dir(model, roots) or _model_config_dir(meta.model, roots)
    if config_dir is None:
        raise StepMLError(f"{exp_dir.name}: no HF config.json for model {model} under model_configs/")
    blocks, kv_source = kv_blocks_for(meta, roots)
    if blocks is None:
        raise StepMLError(f"{exp_dir.name}: KV pool unknown ({kv_source})")
    offset = matched_input_offset(exp_dir, profile)
    return ExperimentSetup(meta.experiment_id, model, config_dir, BLIS_GPU[DEFAULT_HARDWARE], int(meta.tp),
                           server.max_num_seqs, server.max_num_batched_tokens, server.max_model_len, int(blocks),
                           tuple((s.rate, s.duration) for s in profile.stages), profile.data.num_prompts,
                           profile.data.nominal_input + offset, profile.data.output_len,
                           tuple(profile.notes) + (f"KV pool {blocks} blocks ({kv_source})",),
                           arch_columns(meta.arch, meta.hardware, meta.tp))


#: A stage's clients stay active this much longer than the stage, so that the N-th arrival
#: (``num_requests`` truncates there) falls inside the window.
WINDOW_MARGIN = 1.25


def stage_spec(setup: ExperimentSetup, stage: int, seed: int) -> dict[str, Any]:
    """The v2 workload spec of one stage (see the module docstring).

    One client per prompt (``rate_fraction`` 1 each, so each gets ``rate/P``), its
    own prefix group of ``input − 1`` tokens plus a 1-token question, Poisson
    arrivals; the superposition is a Poisson stream of the stage's rate, cut at
    the stage's ``rate × duration``-th request.
    """
    rate, duration = setup.stages[stage]
    n = int(rate * duration)
    if setup.input_tokens < 2:
        raise StepMLError(f"{setup.experiment_id}: input length {setup.input_tokens} < 2")
    end_us = int(round(duration * WINDOW_MARGIN * 1e6))
    clients = [{"id": f"prompt-{k}", "slo_class": "standard", "rate_fraction": 1.0, "streaming": True,
                "arrival": {"process": "poisson"},
                "input_distribution": {"type": "constant", "params": {"value": 1}},
                "output_distribution": {"type": "constant", "params": {"value": int(setup.output_tokens)}},
                "prefix_group": f"prompt-{k}", "prefix_length": int(setup.input_tokens) - 1,
                "lifecycle": {"windows": [{"start_us": 0, "end_us": end_us}]}}
               for k in range(int(setup.num_prompts))]
    return {"version": "2", "seed": int(seed), "num_requests": n, "aggregate_rate": float(rate), "clients": clients}


def blis_args(setup: ExperimentSetup, backend: str, spec: Path, metrics: Path, seed: int,
              home: Path | None = None, log: str = "error") -> list[str]:
    """``blis run`` arguments (after the binary) for one stage and backend."""
    from discovery.printers.blis import blis_home

    src = (Path(home) if home else blis_home()) / "src"
    return ["run", "--model", setup.model, "--hardware", setup.gpu, "--tp", str(setup.tp),
            "--max-num-seqs", str(setup.max_num_seqs), "--max-num-batched-tokens", str(setup.max_num_batched_tokens),
            "--max-model-len", str(setup.max_model_len), "--total-kv-blocks", str(setup.kv_blocks),
            "--block-size-in-tokens", str(BLOCK_SIZE), "--workload-spec", str(spec), "--seed", str(seed),
            "--defaults-filepath", str(src / "defaults.yaml"), "--hardware-config", str(src / "hardware_config.json"),
            "--model-config-folder", str(setup.model_config_dir), "--latency-model", backend,
            "--metrics-path", str(metrics), "--log", log]


_BINARY_HASHES: dict[Path, str] = {}


def _binary_hash(binary: Path) -> str:
    key = Path(binary).resolve()
    if key not in _BINARY_HASHES:
        _BINARY_HASHES[key] = hashlib.sha256(key.read_bytes()).hexdigest()
    return _BINARY_HASHES[key]


def _run_stage(binary: Path, setup: ExperimentSetup, backend: str, stage: int, seed: int,
               home: Path | None, timeout: float) -> dict[str, Any]:
    """Sums over the completed requests of one BLIS run (cached)."""
    from evaluation.blis_build import cache_root

    spec_text = yaml.safe_dump(stage_spec(setup, stage, seed), sort_keys=True)
    args = blis_args(setup, backend, Path("SPEC"), Path("METRICS"), seed, home)   # the log level is not in the key
    log = "info" if backend == "stepml" else "error"     # StepMLModel logs the columns it computed at info
    key = hashlib.sha256((_binary_hash(binary) + json.dumps(args) + spec_text
                          + setup.model_config_dir.joinpath("config.json").read_text()).encode()).hexdigest()[:24]
    cached = cache_root() / "blis" / "runs" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    with tempfile.TemporaryDirectory(prefix="stepml-blis-run-") as tmp:
        spec, metrics = Path(tmp) / "spec.yaml", Path(tmp) / "metrics.json"
        spec.write_text(spec_text)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([str(binary), *blis_args(setup, backend, spec, metrics, seed, home, log)], cwd=tmp,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StepMLError(f"{setup.experiment_id}: blis run --latency-model {backend} timed out "
                              f"after {timeout:g} s") from None
        if proc.returncode != 0 or not metrics.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise StepMLError(f"{setup.experiment_id}: blis run --latency-model {backend} failed "
                              f"(exit {proc.returncode}): {last}")
        doc = json.loads(metrics.read_text())
        wall = time.perf_counter() - t0
    reqs = [r for r in doc.get("requests") or [] if r.get("e2e_ms", 0) > 0]
    out = {"n": len(reqs), "injected": int(doc.get("injected_requests", 0)), "wall": wall,
           "e2e": sum(r["e2e_ms"] for r in reqs), "ttft": sum(r["ttft_ms"] for r in reqs),
           "gaps": sum(r["itl_ms"] * max(int(r["num_decode_tokens"]) - 1, 1) for r in reqs),
           "tokens_m1": sum(max(int(r["num_decode_tokens"]) - 1, 1) for r in reqs),
           "lines": sum(2 * int(r["num_decode_tokens"]) + 1 for r in reqs),
           "columns": {m[1]: float(m[2]) for m in re.finditer(r"stepml: (\S+) = (\S+) \(from", proc.stderr)}}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = cached.with_suffix(".partial")
    tmp_path.write_text(json.dumps(out))
    tmp_path.replace(cached)
    return out


def run_backend(binary: str | Path, setup: ExperimentSetup, backend: str, seed: int = 0,
                home: Path | None = None, timeout: float = 3600.0) -> BlisMetrics:
    """Run every stage of an experiment through ``blis run --latency-model backend``; the pooled metrics."""
    parts = [_run_stage(Path(binary), setup, backend, s, seed, home, timeout) for s in range(len(setup.stages))]
    n = sum(p["n"] for p in parts)
    injected = sum(p["injected"] for p in parts)
    if n == 0:
        raise StepMLError(f"{setup.experiment_id}: BLIS ({backend}) completed no request")
    notes = [] if n == injected else [f"BLIS completed {n} of {injected} requests"]
    for name, value in parts[0].get("columns", {}).items():   # BLIS's parse of config.json vs ours
        ours = setup.columns.get(name)
        if ours is None or abs(value - ours) > 1e-9 * abs(ours):
            notes.append(f"BLIS computed {name} = {value:.10g}, the replay uses {ours}")
    return BlisMetrics(e2e_ms=sum(p["e2e"] for p in parts) / n, ttft_ms=sum(p["ttft"] for p in parts) / n,
                       itl_ms=sum(p["gaps"] for p in parts) / sum(p["lines"] for p in parts),
                       itl_token_ms=sum(p["gaps"] for p in parts) / sum(p["tokens_m1"] for p in parts),
                       requests=n, injected=injected, wall_seconds=sum(p["wall"] for p in parts), notes=tuple(notes),
                       columns_checked=len(parts[0].get("columns", {})))
