"""Replay errors of a cycle-time predictor on the BLIS Llama-2-70B and CodeLlama-34B experiments.

For each model the ``blackbox`` baseline (``c0 + c1·prefill_tokens + c2·decode_tokens``)
is fitted on the cycle target of ONE experiment's step data only:

- Llama-2-70B (also the ``-hf`` experiments): ``20260217-202857-llama-2-70b-tp4-general``;
- CodeLlama-34B: ``20260218-150304-codellama-34b-tp2-general``;

then every experiment of that model (general, codegen, roleplay; reasoning reported
separately as overloaded, its errors those of the successes; see ``replay_saturation.py``
for its failures and the explanation check) is replayed (:mod:`evaluation.replay`) and compared with
its published inference-perf metrics: E2E, TTFT, ITL and TPOT means of the whole
run (and per stage), like with like (inference-perf's line-timestamp definitions,
:mod:`evaluation.latency_metrics`).

Two client-overhead settings are reported:

- ``raw``: no overhead beyond the simulated steps;
- ``calibrated``: the queue overhead (median-TTFT residual) and the end tail of the
  *training* experiment (:func:`evaluation.replay.calibrate_overheads`) applied to
  every experiment of the model. Nothing is taken from the test experiments.

Goals: |E2E| < 5 %, |TTFT| < 15 %, |ITL| < 10 %. Prints numbers; no assertions.

Run: ``python benchmarks/replay_blis.py [--seeds N] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import time

from _common import data_root_or_exit

import numpy as np

GOALS = {"e2e_err": 5.0, "ttft_err": 15.0, "itl_err": 10.0}
MODELS = {
    "Llama-2-70B": {
        "train": "20260217-202857-llama-2-70b-tp4-general",
        "experiments": ["20260217-202857-llama-2-70b-tp4-general", "20260217-203421-llama-2-70b-hf-tp4-codegen",
                        "20260218-084319-llama-2-70b-tp4-roleplay"],
        "overloaded": ["20260218-065057-llama-2-70b-hf-tp4-reasoning"],
    },
    "CodeLlama-34B": {
        "train": "20260218-150304-codellama-34b-tp2-general",
        "experiments": ["20260218-150304-codellama-34b-tp2-general", "20260218-150956-codellama-34b-tp2-codegen",
                        "20260218-155500-codellama-34b-tp2-roleplay"],
        "overloaded": ["20260218-160939-codellama-34b-tp2-reasoning"],
    },
}
KEYS = ("e2e_err", "ttft_err", "itl_err", "tpot_err", "throughput_err")


def short(exp_id: str) -> str:
    return exp_id[16:]


def mean_errors(results: list) -> dict[str, float]:
    """Signed whole-run errors averaged over seeds."""
    errs = [r.errors("summary") for r in results]
    return {k: float(np.mean([e[k] for e in errs])) for k in KEYS}


def row(label: str, errs: dict[str, float], marks: bool = True) -> str:
    cells = []
    for k in KEYS:
        v = errs[k]
        flag = " !" if marks and k in GOALS and not abs(v) < GOALS[k] else "  "
        cells.append(f"{v:>+8.2f}{flag}")
    return f"{label:<44} " + " ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="workload seeds to average (default 1)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    root = data_root_or_exit()
    from evaluation.baselines import fit_baseline
    from evaluation.replay import calibrate_overheads, replay_experiment
    from features.dataset import load_dataset

    t0 = time.perf_counter()
    data = load_dataset(root / "blis" / "steps" / "enriched_steps.parquet", "cycle")
    ids = data.frame["experiment_id"].astype(str).to_numpy()
    exp_root = root / "blis" / "experiments"
    seeds = list(range(max(1, args.seeds)))
    out: dict = {"seeds": seeds, "models": {}}
    head = f"{'experiment (whole run, signed %)':<44} " + " ".join(f"{k[:-4]:>8}  " for k in KEYS)
    for model, spec in MODELS.items():
        rows = np.flatnonzero(ids == spec["train"])
        pred = fit_baseline("blackbox", data, rows)
        coef = ", ".join(f"{c:.2f}" for c in pred.coef_)
        cal = calibrate_overheads(exp_root / spec["train"], pred, seed=0)
        print(f"\n== {model}: blackbox fitted on {len(rows)} cycle-time rows of {spec['train']}")
        print(f"   step time = {coef} (µs: c0, c1*prefill_tokens, c2*decode_tokens)")
        print(f"   calibrated on the training experiment: queue overhead {cal['queue_overhead_s'] * 1e3:.2f} ms, "
              f"end tail {cal['end_overhead_s'] * 1e3:.2f} ms")
        out["models"][model] = {"train": spec["train"], "coef": list(map(float, pred.coef_)), "calibration": cal,
                                "experiments": {}}
        for group in ("experiments", "overloaded"):
            print(f"\n   {'overloaded (reasoning)' if group == 'overloaded' else 'experiments'}; "
                  f"'!' = outside the goal (E2E < 5, TTFT < 15, ITL < 10 %)")
            print("   " + head)
            for exp in spec[group]:
                entry = {}
                for mode, kw in (("raw", {}), ("calibrated", {"queue_overhead_s": cal["queue_overhead_s"],
                                                              "end_overhead_s": cal["end_overhead_s"]})):
                    t = time.perf_counter()
                    results = [replay_experiment(exp_root / exp, pred, seed=s, capacity=False, explain=False, **kw)
                               for s in seeds]
                    errs = mean_errors(results)
                    tag = " (train)" if exp == spec["train"] else ""
                    print("   " + row(f"{short(exp)}{tag} {mode}", errs, marks=(mode == "calibrated")))
                    windows = [w for w in results[0].predicted if w.startswith("stage_")]
                    per_stage = {}
                    if mode == "calibrated" and len(windows) > 1:
                        for w in windows:
                            e = {k: float(np.mean([r.errors(w)[k] for r in results])) for k in KEYS}
                            per_stage[w] = e
                            print("   " + row(f"    {w}", e, marks=False))
                    r0 = results[0]
                    meas, predd = r0.measured.get("summary"), r0.predicted["summary"]
                    entry[mode] = {"errors": errs, "stages": per_stage, "replay_seconds": time.perf_counter() - t,
                                   "measured_e2e_s": meas.request_latency.mean if meas else None,
                                   "predicted_e2e_s": predd.request_latency.mean,
                                   "measured_ttft_s": meas.time_to_first_token.mean if meas else None,
                                   "predicted_ttft_s": predd.time_to_first_token.mean,
                                   "failures": meas.failures if meas else None}
                out["models"][model]["experiments"][exp] = entry
    # summary over the non-overloaded experiments (calibrated)
    print("\nmean |error| over the non-overloaded experiments (calibrated):")
    for label, pick in (("all", lambda m, e: True), ("held-out only", lambda m, e: e != MODELS[m]["train"])):
        vals = {k: [] for k in KEYS}
        for m, spec in MODELS.items():
            for e in spec["experiments"]:
                if pick(m, e):
                    for k in KEYS:
                        vals[k].append(abs(out["models"][m]["experiments"][e]["calibrated"]["errors"][k]))
        print("   " + row(label, {k: float(np.mean(v)) for k, v in vals.items()}, marks=True))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()
