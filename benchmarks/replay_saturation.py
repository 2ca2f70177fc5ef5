"""The four saturated ``reasoning`` experiments: measured failures, the replay's prediction, and its check.

For each of the BLIS ``reasoning`` runs (4 req/s for 1,200 s of 1,082-token prompts and
1,448-token outputs against vLLM with ``max_num_seqs`` 128) it prints

- the measurement: successes, failures, the failures' latency range (300–301 s: the
  client's aiohttp timeout), the successes' mean E2E and TTFT and their decode pace
  (``2 × TPOT``, the step time at the run's operating point);
- a fluid estimate from the measured numbers alone: the capacity implied by the decode
  pace (``128 / (E2E − TTFT)``), and the failures of a first-come-first-served queue
  whose waits grow at ``rate / capacity − 1`` per second until a request's wait plus its
  decode time passes the 300 s timeout (not applicable when the KV pool, not
  ``max_num_seqs``, bounds the batch: Llama-2-7B, where the replay runs ~54 requests);
- the replay with the predictor (``blackbox`` fitted on the model's ``general`` step
  data, or on Llama-2-70B's for the models without step data; overheads calibrated
  there): predicted capacity and utilization, failure fraction, the successes' E2E and
  TTFT errors, and the explanation check (:mod:`evaluation.saturation`): the step-time
  scale that matches the measured decode pace, and the failures, E2E and TTFT the model
  gives with it.

With ``--artifacts DIR`` (the folder ``evaluation.generalize --by model --out DIR`` wrote),
each run is replayed instead with the calibrated formula of the fold that held its model
out (``DIR/<model id>-stepml``: a formula that never saw that model), with the artifact's
own overheads and scheduling mode, and the run's steps are checked against the operating
range the artifact records (:mod:`evaluation.operating_range`).

Goals (issue 15): failures within 10 points, E2E and TTFT of the successes within 20 %.
Prints numbers; no assertions. About 3–5 minutes per experiment on an idle machine.

Run: ``python benchmarks/replay_saturation.py [--seed N] [--artifacts DIR] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import data_root_or_exit

REASONING = {
    "20260217-170634-llama-2-7b-tp1-reasoning": "20260217-202857-llama-2-70b-tp4-general",
    "20260218-065057-llama-2-70b-hf-tp4-reasoning": "20260217-202857-llama-2-70b-tp4-general",
    "20260218-135247-mixtral-8x7b-v0-1-tp2-reasoning": "20260217-202857-llama-2-70b-tp4-general",
    "20260218-160939-codellama-34b-tp2-reasoning": "20260218-150304-codellama-34b-tp2-general",
}
TIMEOUT_S = 300.0


def fluid_failures(rate: float, duration: float, capacity: float, decode_s: float) -> float:
    """Failed fraction of a fluid FCFS queue: arrivals after the wait reaches ``timeout − decode`` fail."""
    if capacity >= rate:
        return 0.0
    growth = rate / capacity - 1.0                  # seconds of wait added per second of arrivals
    t_star = (TIMEOUT_S - decode_s) / growth
    return max(0.0, duration - t_star) / duration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--artifacts", default=None, metavar="DIR",
                        help="replay each run with DIR/<model id>-stepml (evaluation.generalize --by model --out DIR)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    root = data_root_or_exit()
    from evaluation.predictors import load_predictor
    from evaluation.replay import calibrate_overheads, replay_experiment
    from evaluation.replay_setup import scheduler_config
    from evaluation.workloads import experiment_profile

    exp_root = root / "blis" / "experiments"
    out = {}
    for exp, train in REASONING.items():
        t0 = time.perf_counter()
        if args.artifacts:
            from discovery.formula import load_artifact
            from evaluation.generalize import group_of

            group = group_of(exp_root / exp, "model")
            name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in f"{group}-stepml").strip("-.")
            _, pred = load_artifact(Path(args.artifacts) / name)
            train = f"{name} (held out)"
            cal = dict(pred.overheads or {})
            res = replay_experiment(exp_root / exp, pred, args.seed, **cal,
                                    async_scheduling=bool(pred.async_scheduling))
        else:
            pred = load_predictor("baseline:blackbox", None, [train])
            cal = calibrate_overheads(exp_root / train, pred, seed=args.seed)
            res = replay_experiment(exp_root / exp, pred, args.seed, **cal)
        meas = res.measured["summary"]
        stage = experiment_profile(exp_root / exp).stages[0]
        seqs = scheduler_config(exp_root / exp, None).max_num_seqs
        decode_s = meas.request_latency.mean - meas.time_to_first_token.mean
        cap = seqs / decode_s
        fluid = fluid_failures(stage.rate, stage.duration, cap, decode_s)
        p = res.predicted["summary"]
        errs = res.errors()
        load, check = res.load, res.check
        print(f"\n== {exp}  (predictor {res.predictor}, calibrated on {train})")
        print(f"   measured: {meas.count} successes, {meas.failures} failures ({100 * meas.failure_fraction:.1f} %), "
              f"failure latency {meas.failure_latency.min:.2f}-{meas.failure_latency.max:.2f} s "
              f"(mean {meas.failure_latency.mean:.2f}); successes E2E {meas.request_latency.mean:.1f} s "
              f"(max {meas.request_latency.max:.1f}), TTFT {meas.time_to_first_token.mean:.1f} s, "
              f"decode pace {2e3 * meas.time_per_output_token.mean:.2f} ms/token")
        kv_bound = res.load.capacity.concurrency < 0.9 * seqs
        print(f"   fluid estimate: capacity {seqs} / {decode_s:.1f} s = {cap:.2f} req/s vs {stage.rate:g} offered "
              f"-> failures {100 * fluid:.1f} %" + (" (not applicable: KV-bound batch)" if kv_bound else ""))
        print(f"   replay: capacity {load.capacity.requests_per_s:.2f} req/s (step {1e3 * load.capacity.step_time_s:.2f} "
              f"ms at {load.capacity.concurrency:.0f} running), utilization {load.utilization:.2f}, "
              f"{'saturated' if res.saturated else 'not saturated'}; failures {100 * p.failure_fraction:.1f} %, "
              f"successes E2E {errs['e2e_err']:+.1f} %, TTFT {errs['ttft_err']:+.1f} %")
        if check is not None:
            print(f"   check: step time x{check.scale:.3f} ({check.step_time_error_pct:+.1f} % off the measured pace) "
                  f"-> failures {100 * check.failures_replayed:.1f} % vs {100 * check.failures_measured:.1f} %, "
                  f"E2E {check.e2e_err:+.1f} %, TTFT {check.ttft_err:+.1f} %: {res.status}"
                  f"{' (' + check.reason + ')' if check.reason else ''}")
        if res.range_check is not None:
            print("   operating range: " + ("EXTRAPOLATED: " + res.range_check.describe() if res.extrapolated
                                         else f"inside ({res.range_check.source})"))
        print(f"   {time.perf_counter() - t0:.0f} s")
        out[exp] = {"train": train, "calibration": cal, "fluid_failures": fluid, "implied_capacity": cap,
                    "replay": res.to_json_dict()}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
