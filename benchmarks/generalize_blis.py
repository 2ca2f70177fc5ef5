"""Fit once, predict every model: leave-one-model-out and in-sample on the 12 BLIS experiments (issue 10).

Runs ``python -m evaluation.generalize`` on the real data (the 12 non-``reasoning``
experiments, step traces of Llama-2-70B and CodeLlama-34B) and prints, beside the
goals and the anchors,

- leave-one-model-out: per held-out experiment the E2E / TTFT / ITL error of the
  calibrated formula and of the blackbox calibrated the same way; means, maxima,
  per-model E2E means, and the wall time;
- in-sample (``--by none``): the same with everything fitted on all 12.

Goals: leave-one-model-out mean E2E ≤ 7 % (stretch 5 %), every model ≤ 12 %, mean TTFT
≤ 20 %, mean ITL ≤ 8 %; in-sample every experiment E2E ≤ 5 % and TTFT ≤ 15 %; the
leave-one-model-out run within 30 minutes on 2 cores. Anchors: BLIS StepML round 5,
leave-one-model-out mean E2E 14.3 % (7B 24.0, 34B 9.6, 70B 13.1, Mixtral 10.6).
Prints numbers; no assertions.

Run: ``python benchmarks/generalize_blis.py [--budget S] [--processes N] [--requests N] [--iterations N]
[--seeds K] [--skip-in-sample] [--json PATH]`` (defaults: the README's command).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time

from _common import data_root_or_exit

ANCHOR = {"mean": 14.3, "llama-2-7b": 24.0, "codellama-34b": 9.6, "llama-2-70b": 13.1, "mixtral-8x7b": 10.6}


def run_generalize(by: str, args: argparse.Namespace) -> tuple[dict, float]:
    from evaluation import generalize

    argv = ["--by", by, "--budget", str(args.budget), "--processes", str(args.processes), "--json",
            "--requests", str(args.requests), "--iterations", str(args.iterations), "--seeds", str(args.seeds)]
    started = time.monotonic()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = generalize.main(argv)
    if code:
        raise SystemExit(code)
    return json.loads(out.getvalue()), time.monotonic() - started


def report(doc: dict, seconds: float, title: str) -> None:
    print(f"\n== {title} ({seconds / 60:.1f} min)")
    print(f"{'experiment':<48} {'E2E%':>6} {'TTFT%':>6} {'ITL%':>6}   {'bb E2E%':>7} {'bb TTFT%':>8} {'bb ITL%':>7}")
    for fold in doc["folds"].values():
        for exp, r in fold["experiments"].items():
            b = fold["baseline"][exp]
            print(f"{exp:<48} {r['e2e_err']:>6.1f} {r['ttft_err']:>6.1f} {r['itl_err']:>6.1f}   "
                  f"{b['e2e_err']:>7.1f} {b['ttft_err']:>8.1f} {b['itl_err']:>7.1f}")
    s, b = doc["summary"], doc["baseline_summary"]
    print(f"ours:     E2E mean {s['e2e_mean']:.1f} % (max {s['e2e_max']:.1f}), TTFT mean {s['ttft_mean']:.1f} %, "
          f"ITL mean {s['itl_mean']:.1f} %")
    print(f"blackbox: E2E mean {b['e2e_mean']:.1f} % (max {b['e2e_max']:.1f}), TTFT mean {b['ttft_mean']:.1f} %, "
          f"ITL mean {b['itl_mean']:.1f} %")
    print("per group E2E: " + ", ".join(f"{g} {v:.1f} %" for g, v in s["per_group"].items()))
    for group, fold in doc["folds"].items():
        print(f"  [{group}] {fold['formula']}  (calibration loss {fold['calibration_loss']:.2f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from evaluation.generalize import SEEDS

    # defaults: the command behind the README's tables
    parser.add_argument("--budget", type=float, default=0.0, help="search seconds per fold (default 0: priors only)")
    parser.add_argument("--processes", type=int, default=2, help="replay processes (default 2)")
    parser.add_argument("--requests", type=int, default=600, help="requests per stage in calibration (default 600)")
    parser.add_argument("--iterations", type=int, default=5, help="calibration iterations (default 5)")
    parser.add_argument("--seeds", type=int, default=SEEDS, help=f"workload draws per held-out replay (default {SEEDS})")
    parser.add_argument("--skip-in-sample", action="store_true", help="only leave-one-model-out")
    parser.add_argument("--json", default=None, help="also write both results to this JSON file")
    args = parser.parse_args()
    data_root_or_exit()
    results = {}
    lomo, seconds = run_generalize("model", args)
    results["model"] = {"result": lomo, "seconds": seconds}
    report(lomo, seconds, "leave one model out")
    print(f"goals: mean E2E <= 7 % (stretch 5), every model <= 12 %, TTFT <= 20 %, ITL <= 8 %, <= 30 min; "
          f"StepML round 5: mean E2E {ANCHOR['mean']} %")
    if not args.skip_in_sample:
        inside, seconds = run_generalize("none", args)
        results["none"] = {"result": inside, "seconds": seconds}
        report(inside, seconds, "in-sample (all 12)")
        print("goals: every experiment E2E <= 5 %, TTFT <= 15 %")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
