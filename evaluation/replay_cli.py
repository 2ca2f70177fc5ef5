"""Command line of the replay: ``python -m evaluation.replay``.

``python -m evaluation.replay --predictor RUN_DIR[:ROW]|ARTIFACT.json|baseline:NAME --experiments DIR [DIR ...]
[--fit-data PATH] [--fit-experiments ID[,ID...]] [--seed N] [--seeds N] [--queue-overhead-s S]
[--post-overhead-s S] [--end-overhead-s S] [--calibrate-on DIR] [--no-timeout] [--no-check] [--json]``

``python -m evaluation.replay --predictor P --requests FILE [FILE ...] [--colmap MAP] --server FILE.yaml [--json]``
replays request logs (:mod:`evaluation.request_replay`): each file (a folder or glob
names several) is one experiment, named after the file, read through the request
map ``--colmap`` (or the shipped map its content calls for: vLLM bench JSON, OTLP
spans) on the server ``--server`` describes (:mod:`evaluation.server_spec`; a span
trace beside an ``exp-config.yaml`` needs none).

``RUN_DIR[:ROW]`` replays a run's front row (``best`` by default, or ``accuracy``,
``knee``, or a row number) as a formula; ``baseline:NAME`` fits that baseline
(:mod:`evaluation.baselines`) on the cycle target of ``--fit-data`` (default: the
shared BLIS step table) restricted to ``--fit-experiments``; an ``artifact.json`` (or
an export folder) replays the exported formula. ``--calibrate-on DIR`` first derives
the queue and end overheads from that experiment
(:func:`evaluation.replay.calibrate_overheads`). ``--no-timeout`` serves every request
however long it takes (no client timeout); ``--no-check`` skips the explanation check
of failing experiments (:mod:`evaluation.saturation`). ``--json`` prints
``{"experiments": {id: {"e2e_err", "ttft_err", "itl_err", "tpot_err",
"throughput_err", "status", "saturated", "failures": {"measured", "predicted"},
"load", "check", "extrapolated", "operating_range", "predicted", "measured", "kind",
"per", ...}}}`` with absolute errors in percent of the measured whole-run means of
the successes (throughput: requests per
second; a request log adds ``server``: its settings and where each came from);
an ``unexplained`` experiment has None instead of errors and a predicted failure
fraction. ``extrapolated`` is true when the replay's steps leave the operating range
the predictor records (:mod:`evaluation.operating_range`); ``operating_range`` gives,
per quantity, the shares of steps below and above that range. ``--seeds N`` also
replays the next ``N − 1`` workload seeds of each experiment and prints the mean and
range of its E2E, TTFT and ITL errors over the ``N`` draws (JSON ``seed_spread``).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

from evaluation.latency_metrics import LATENCY_METRICS, relative_error
from evaluation.predictors import load_predictor
from evaluation.replay import ReplayResult, calibrate_overheads, replay_experiment, with_seed_spread
from evaluation.replay_setup import resolve_experiment
from evaluation.request_replay import is_request_trace, replay_request_trace, replay_requests, server_for
from evaluation.server_spec import ServerSpec
from features.errors import StepMLError
from features.request_log import RequestLog, log_name, read_request_log, request_files

__all__ = ["main", "build_parser", "format_result"]

_SHORT = {"request_latency": "E2E", "time_to_first_token": "TTFT", "time_per_output_token": "TPOT",
          "inter_token_latency": "ITL", "normalized_time_per_output_token": "NTPOT"}


def _metric_rows(result: ReplayResult) -> list[str]:
    head = (f"  {'window':<8} {'metric':<6} {'pred mean':>10} {'meas mean':>10} {'err%':>7} {'|err|%':>7} "
            f"{'pred p50':>9} {'meas p50':>9} {'err%':>7} {'pred p90':>9} {'meas p90':>9} {'err%':>7} "
            f"{'pred p99':>9} {'meas p99':>9} {'err%':>7}")
    lines = [head]
    for window, pred in result.predicted.items():
        meas = result.measured.get(window)
        for name in LATENCY_METRICS:
            p = pred.metric(name)
            m = meas.metric(name) if meas else None
            cells = [f"  {window:<8} {_SHORT[name]:<6}"]
            for stat in ("mean", "median", "p90", "p99"):
                pv = getattr(p, stat) * 1e3
                mv = getattr(m, stat) * 1e3 if m else float("nan")
                err = relative_error(pv, mv)
                width = 10 if stat == "mean" else 9
                cells.append(f"{pv:>{width}.2f} {mv:>{width}.2f} {err:>+7.1f}")
                if stat == "mean":
                    cells.append(f"{abs(err):>7.1f}")
            lines.append(" ".join(cells))
        thr_p = pred.requests_per_sec
        thr_m = meas.requests_per_sec if meas else float("nan")
        err = relative_error(thr_p, thr_m)
        lines.append(f"  {window:<8} {'req/s':<6} {thr_p:>10.3f} {thr_m:>10.3f} {err:>+7.1f} {abs(err):>7.1f}")
        if pred.failures or (meas is not None and meas.failures):
            mf = f"{meas.failures} ({100 * meas.failure_fraction:.1f} %)" if meas else "-"
            lines.append(f"  {window:<8} {'fail':<6} {pred.failures:>5} ({100 * pred.failure_fraction:.1f} %) "
                         f"predicted vs {mf} measured; failed latency mean {pred.failure_latency.mean:.2f} s "
                         f"vs {meas.failure_latency.mean if meas else float('nan'):.2f} s; successes "
                         f"{pred.count} vs {meas.count if meas else '-'}")
    if result.kind == "experiment":
        lines.append("  (latencies of the successes in ms; err% = 100 (pred - meas) / meas; ITL/TPOT per streamed line "
                     "as inference-perf reports them; measured NTPOT divides by re-tokenised output counts, so it is "
                     "not comparable)")
    else:
        what = ("per streamed line (inference-perf's Feb 2026 definition)" if result.per == "line"
                else "per token: TPOT (last - first token) / (n - 1), ITL the gaps between tokens")
        lines.append(f"  (latencies in ms; err% = 100 (pred - meas) / meas; ITL/TPOT {what}, one-token outputs left "
                     "out; NTPOT = E2E / output tokens; nan: not in the log)")
    return lines


def _load_rows(result: ReplayResult) -> list[str]:
    load = result.load
    if load is None:
        return []
    cap = load.capacity
    lines = [f"  capacity (predicted): {cap.requests_per_s:.3f} req/s, {cap.input_tokens_per_s:.0f} input + "
             f"{cap.output_tokens_per_s:.0f} output tokens/s at {cap.concurrency:.0f} running, "
             f"step {cap.step_time_s * 1e3:.2f} ms"]
    for st in load.stages:
        label = st.stage if isinstance(st.stage, str) else f"stage_{st.stage}"
        lines.append(f"  {label} offered {st.offered_requests_per_s:.3f} req/s "
                     f"({st.offered_output_tokens_per_s:.0f} output tokens/s): utilization {st.utilization:.2f}"
                     f"{'  SATURATED' if st.saturated else ''}")
    return lines


def _check_rows(result: ReplayResult) -> list[str]:
    check = result.check
    if check is None:
        return []
    head = (f"  check: with the step time x{check.scale:.3f} (the predictor is {check.step_time_error_pct:+.1f} % "
            f"off the measured decode pace; TPOT {check.tpot_err:+.1f} %, {check.replays} replays) the model gives "
            f"failures {100 * check.failures_replayed:.1f} % vs {100 * check.failures_measured:.1f} % measured, "
            f"successes' E2E {check.e2e_err:+.1f} %, TTFT {check.ttft_err:+.1f} %")
    verdict = "  -> explained" if check.explained else f"  -> UNEXPLAINED: {check.reason}"
    return [head, verdict]


def _spread_rows(result: ReplayResult) -> list[str]:
    """The headline errors over the workload seeds (``--seeds``)."""
    spread = result.seed_spread()
    if spread is None:
        return []
    parts = [f"{label} {spread['mean'][key]:+.1f} % [{spread['min'][key]:+.1f}, {spread['max'][key]:+.1f}]"
             for label, key in (("E2E", "e2e_err"), ("TTFT", "ttft_err"), ("ITL", "itl_err"))]
    return [f"  over {len(spread['seeds'])} workload seeds ({spread['seeds'][0]}-{spread['seeds'][-1]}), error mean "
            f"[min, max]: " + ", ".join(parts)]


def _server_rows(result: ReplayResult) -> list[str]:
    """The server's settings, and the ones taken by default with the reason."""
    if result.server is None:
        return []
    settings = result.server["settings"]
    given = "; ".join(f"{k} {v}" for k, v in settings.items() if v is not None and k != "description")
    rows = [f"  server: {given}"]
    if result.server.get("defaults"):
        rows.append("  not in the server description, so: " + "; ".join(result.server["defaults"]))
    return rows


def format_result(result: ReplayResult) -> str:
    """Text report of one replay: per window and metric, predicted vs measured mean / p50 / p90 / p99 (ms),
    failures, capacity and saturation; an unexplained experiment shows its evidence instead."""
    if result.kind == "experiment":
        head = (f"experiment {result.experiment_id}   predictor {result.predictor}   seed {result.seed}   "
                f"status {result.status}{'   SATURATED' if result.saturated else ''}"
                f"{'   EXTRAPOLATED' if result.extrapolated else ''}")
        timeout = result.client.timeout_s if result.client and result.client.timeout_s else "none"
        detail = f", inputs {result.input_offset:+d} tokens, client timeout {timeout} s"
    else:
        head = (f"request log {result.experiment_id}   predictor {result.predictor}   "
                f"{'async' if result.config.async_scheduling else 'sync'} scheduling"
                f"{'   SATURATED' if result.saturated else ''}")
        detail = ""
    lines = [head, f"  {len(result.requests)} requests, {result.num_steps} steps, KV {result.kv_blocks} blocks "
                   f"({result.kv_source}){detail}, replay {result.wall_seconds:.1f} s"]
    lines.extend(_server_rows(result))
    if result.extrapolated:
        lines.append(f"  EXTRAPOLATED: the steps leave the predictor's operating range "
                     f"({result.range_check.source}): {result.range_check.describe()}; its step time there is "
                     "an extrapolation, not a calibrated prediction")
    if result.status == "unexplained":
        lines.append("  UNEXPLAINED: the replay's model does not reproduce this run even at the measured decode "
                     "pace, so no prediction is printed")
    else:
        lines.extend(_metric_rows(result))
    lines.extend(_spread_rows(result))
    lines.extend(_load_rows(result))
    lines.extend(_check_rows(result))
    for note in result.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.replay",
        description="Replay inference-perf experiments or request logs with a step-time predictor; compare request "
                    "latencies.")
    parser.add_argument("--predictor", required=True, help="RUN_DIR[:ROW] (ROW = best|accuracy|knee|N), ARTIFACT.json "
                        "(or an export folder) or baseline:NAME")
    parser.add_argument("--experiments", nargs="+", metavar="DIR", default=[],
                        help="experiment directories (blis/experiments/<id>) or experiment ids; a folder with "
                             "llm_request spans (traces.json) and exp-config.yaml is replayed from its requests")
    parser.add_argument("--requests", nargs="+", metavar="FILE", default=[],
                        help="request logs (CSV, TSV, parquet, JSON lines, vllm bench JSON, OTLP spans; a folder or a "
                             "quoted glob names several): each is replayed from its own arrivals and token counts")
    parser.add_argument("--colmap", default=None, metavar="MAP",
                        help="request map of the --requests logs (a .toml or a shipped name: vllm_bench, otlp_spans; "
                             "default: picked by the file's content)")
    parser.add_argument("--server", default=None, metavar="FILE.yaml",
                        help="the server the --requests logs are replayed on (model, hardware, vLLM settings)")
    parser.add_argument("--fit-data", default=None,
                        help="step data a baseline is fitted on (default: <data root>/blis/steps/enriched_steps.parquet)")
    parser.add_argument("--fit-experiments", default=None, help="comma-separated experiment ids to fit a baseline on")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="also replay the next N-1 workload seeds and report the spread of the E2E, TTFT and ITL "
                             "errors (inference-perf draws arrivals at random: one run is one draw; default 1)")
    parser.add_argument("--queue-overhead-s", type=float, default=0.0, help="client send -> scheduler delay (s)")
    parser.add_argument("--post-overhead-s", type=float, default=0.0, help="step end -> client delay per token (s)")
    parser.add_argument("--end-overhead-s", type=float, default=0.0, help="last streamed line -> request end (s)")
    parser.add_argument("--calibrate-on", default=None, metavar="DIR",
                        help="derive the queue and end overheads from this experiment's measurements first")
    parser.add_argument("--no-timeout", action="store_true",
                        help="no client timeout: serve every request however long it takes")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the explanation check of experiments with failed requests")
    parser.add_argument("--scheduling", choices=("async", "sync"), default=None,
                        help="vLLM's one-step-ahead (async, vLLM's default since 0.14) or one-step (sync) scheduling; "
                             "default: the server file's async_scheduling, else the artifact's setting, else async")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _request_logs(args: argparse.Namespace) -> list[tuple[RequestLog, ServerSpec]]:
    """Every ``--requests`` log, read and checked with its server before anything is fitted or replayed.

    Each file is one experiment named after it (:func:`features.request_log.log_name`;
    two files of one name are told apart by their folders).
    """
    if not args.requests:
        return []
    files = request_files(list(args.requests))
    names = [log_name(f) for f in files]
    out = []
    for file, name in zip(files, names):
        if names.count(name) > 1:
            name = f"{file.resolve().parent.name}/{name}"
        server = server_for([file], args.server)
        out.append((read_request_log(file, args.colmap, name=name), server))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.replay``."""
    args = build_parser().parse_args(argv)
    if args.seed < 0:
        raise StepMLError(f"--seed must be >= 0, got {args.seed}")
    if args.seeds < 1:
        raise StepMLError(f"--seeds must be >= 1, got {args.seeds}")
    if not args.requests and (args.server is not None or args.colmap is not None):
        raise StepMLError("--server and --colmap describe --requests logs; give --requests FILE")
    if not args.experiments and not args.requests:
        raise StepMLError("nothing to replay: give --experiments DIR ... or --requests FILE ... (with --server FILE.yaml)")
    fit_exps = [e.strip() for e in args.fit_experiments.split(",") if e.strip()] if args.fit_experiments else None
    for label, value in (("--queue-overhead-s", args.queue_overhead_s), ("--post-overhead-s", args.post_overhead_s),
                         ("--end-overhead-s", args.end_overhead_s)):
        if not (math.isfinite(value) and value >= 0):
            raise StepMLError(f"{label} must be a finite number >= 0, got {value}")
    experiments = [resolve_experiment(e) for e in args.experiments]
    logs = _request_logs(args)
    predictor = load_predictor(args.predictor, args.fit_data, fit_exps)
    overheads = {"queue_overhead_s": args.queue_overhead_s, "post_overhead_s": args.post_overhead_s,
                 "end_overhead_s": args.end_overhead_s}
    calibrated = getattr(predictor, "overheads", None)
    if calibrated and not args.calibrate_on and not any(overheads.values()):
        overheads.update(calibrated)      # an artifact of discovery.calibrate carries its own
    default_async = getattr(predictor, "async_scheduling", None)
    use_async = args.scheduling == "async" if args.scheduling else (True if default_async is None else default_async)
    if args.calibrate_on:
        calibration = calibrate_overheads(resolve_experiment(args.calibrate_on), predictor, args.seed,
                                          async_scheduling=use_async)
        overheads.update(calibration)
        if not args.json:
            print(f"calibrated on {Path(args.calibrate_on).name}: queue overhead "
                  f"{calibration['queue_overhead_s'] * 1e3:.2f} ms, end overhead {calibration['end_overhead_s'] * 1e3:.2f} ms")
    results: dict[str, ReplayResult] = {}

    def show(result: ReplayResult) -> None:
        results[result.experiment_id] = result
        if not args.json:
            print(format_result(result))
            print()

    for log, server in logs:
        # --scheduling, else the server file's async_scheduling, else the artifact's mode, else async
        mode = (args.scheduling == "async" if args.scheduling else
                server.async_scheduling if server.async_scheduling is not None else use_async)
        show(replay_requests(log, server, predictor, async_scheduling=mode, **overheads))
    options = {"client": None} if args.no_timeout else {}
    for exp in experiments:
        if is_request_trace(exp):
            show(replay_request_trace(exp, predictor, overheads["queue_overhead_s"],
                                      post_overhead_s=overheads["post_overhead_s"],
                                      end_overhead_s=overheads["end_overhead_s"], async_scheduling=use_async))
            continue
        kwargs = {"queue_overhead_s": overheads["queue_overhead_s"], "post_overhead_s": overheads["post_overhead_s"],
                  "end_overhead_s": overheads["end_overhead_s"], "async_scheduling": use_async, **options}
        result = replay_experiment(exp, predictor, args.seed, explain=not args.no_check, **kwargs)
        if args.seeds > 1 and result.measured:
            result = with_seed_spread(result, exp, predictor, args.seeds, **kwargs)
        show(result)
    if args.json:
        print(json.dumps({"predictor": str(getattr(predictor, "name", "")), "seed": args.seed,
                          "overheads": overheads, "scheduling": "async" if use_async else "sync", "calibrated_on": args.calibrate_on,
                          "client_timeout": not args.no_timeout,
                          "experiments": {k: r.to_json_dict() for k, r in results.items()}}))
    return 0
