"""``python -m evaluation.blis --artifact PATH --experiments DIR... [--blis-binary PATH] [--json]``.

Runs an exported formula inside the real BLIS simulator, side by side with
BLIS's own step-time models and with our Python replay, on inference-perf
experiments (``blis/experiments/<id>``):

1. builds BLIS with the artifact's overlay (``discovery.export ... --blis``;
   built once per content hash, its Go tests run in the build tree, see
   :mod:`evaluation.blis_build`), and plain BLIS for BLIS's own models — or
   uses ``--blis-binary`` (a build with a StepML overlay) for all three;
2. for each experiment, runs ``blis run`` with ``--latency-model stepml``,
   ``trained-physics`` and ``roofline`` on the same workload and server
   (:mod:`evaluation.blis_run`), and replays it with
   :func:`evaluation.replay.replay_experiment`;
3. prints, per experiment, measured / replay / BLIS+ours / BLIS trained-physics
   / BLIS roofline mean E2E, TTFT and ITL with their errors, and how far our
   replay and BLIS+ours are apart.

Errors are signed, in %: ``100 (predicted − measured) / measured`` of the
whole-run means (both stages pooled). ITL is compared like with like: the
measured ITL is inference-perf's per-streamed-line gap, the replay computes the
same, and BLIS's per-token ITL is converted (``Σ itl·(n − 1) / Σ (2n + 1)``,
:mod:`evaluation.blis_run`). ``agreement`` is ``|replay error − BLIS+ours
error|`` in points.

Request-level overheads of the artifact reach both simulators with the same
meaning where one exists: ``queueing_us`` is the replay's ``queue_overhead_s``
(BLIS ``QueueingTime``: arrival → wait queue, in TTFT and E2E) and
``post_decode_us`` its ``end_overhead_s`` (BLIS ``PostDecodeFixedOverhead``:
after the last token, E2E only). ``output_token_us`` (BLIS
``OutputTokenProcessingTime``) is added by BLIS to every token's recorded
latency — TTFT once, each ITL once, E2E n times — and has no counterpart in
the replay (its ``post_overhead_s`` shifts every token by a constant, which
changes TTFT and E2E once and ITL not at all), so it is applied to BLIS only,
and the output says so.

``--calibrate-on DIR`` fits ``queueing_us`` and ``post_decode_us`` on one
experiment with the replay (:func:`calibrated_overheads`) and gives them to
both simulators, as ``evaluation.replay --calibrate-on`` does for the replay.

``--json``: ``{"experiments": {ID: {"measured": {...}, "replay": {...},
"blis_stepml": {...}, "blis_trained_physics": {...}, "blis_roofline": {...},
"agreement": {...}}}}``, each inner object with ``e2e_ms``, ``ttft_ms``,
``itl_ms`` and ``e2e_err``, ``ttft_err``, ``itl_err`` (signed %).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from features.errors import StepMLError

__all__ = ["compare_experiment", "main", "KEYS"]

KEYS = ("e2e", "ttft", "itl")
_LABELS = {"measured": "measured", "replay": "replay (Python)", "blis_stepml": "BLIS+ours",
           "blis_trained_physics": "BLIS trained-physics", "blis_roofline": "BLIS roofline"}


def _with_errors(values: dict[str, float], measured: dict[str, float] | None) -> dict[str, Any]:
    from evaluation.latency_metrics import relative_error

    out: dict[str, Any] = {f"{k}_ms": values[k] for k in KEYS}
    for k in KEYS:
        out[f"{k}_err"] = (relative_error(values[k], measured[k]) if measured and math.isfinite(measured[k])
                           else None)
    return out


def _measured(exp_dir: Path) -> dict[str, float] | None:
    from evaluation.latency_metrics import read_lifecycle_report

    path = exp_dir / "results" / "summary_lifecycle_metrics.json"
    if not path.is_file():
        return None
    rep = read_lifecycle_report(path)
    return {"e2e": rep.request_latency.mean * 1e3, "ttft": rep.time_to_first_token.mean * 1e3,
            "itl": rep.inter_token_latency.mean * 1e3}


def compare_experiment(exp_dir: Path, predictor: Any, overheads: Any, binaries: dict[str, Path], seed: int = 0,
                       echo=None) -> dict[str, Any]:
    """Measured, replay and every BLIS backend of ``binaries`` on one experiment (see the module docstring)."""
    from evaluation.blis_run import BACKENDS, experiment_setup, run_backend
    from evaluation.replay import replay_experiment

    setup = experiment_setup(exp_dir)
    measured = _measured(exp_dir)
    notes = list(setup.notes)
    result = replay_experiment(exp_dir, predictor, seed, overheads.queueing_us / 1e6,
                               end_overhead_s=overheads.post_decode_us / 1e6)
    pred = result.predicted["summary"]
    out: dict[str, Any] = {"measured": ({f"{k}_ms": v for k, v in measured.items()} if measured else None)}
    out["replay"] = _with_errors({"e2e": pred.request_latency.mean * 1e3, "ttft": pred.time_to_first_token.mean * 1e3,
                                  "itl": pred.inter_token_latency.mean * 1e3}, measured)
    out["replay"]["wall_seconds"] = result.wall_seconds
    if overheads.output_token_us:
        notes.append(f"output_token_us = {overheads.output_token_us:g} µs is applied by BLIS only (no replay "
                     "counterpart)")
    for backend, binary in binaries.items():
        if echo:
            echo(f"  {setup.experiment_id}: blis run --latency-model {backend} ...")
        m = run_backend(binary, setup, backend, seed)
        entry = _with_errors({"e2e": m.e2e_ms, "ttft": m.ttft_ms, "itl": m.itl_ms}, measured)
        entry.update({"itl_token_ms": m.itl_token_ms, "requests": m.requests, "wall_seconds": m.wall_seconds,
                      "columns_checked": m.columns_checked})
        out[BACKENDS[backend]] = entry
        notes.extend(f"{backend}: {n}" for n in m.notes)
    if "blis_stepml" in out:
        a, b = out["replay"], out["blis_stepml"]
        out["agreement"] = {f"{k}_pts": (abs(a[f"{k}_err"] - b[f"{k}_err"]) if a[f"{k}_err"] is not None
                                         else abs(100 * (b[f"{k}_ms"] - a[f"{k}_ms"]) / a[f"{k}_ms"]))
                            for k in KEYS}
    out["notes"] = notes
    return out


def format_experiment(exp_id: str, entry: dict[str, Any]) -> str:
    """The text block of one experiment."""
    lines = [exp_id, f"  {'':<22} {'E2E ms':>9} {'TTFT ms':>9} {'ITL ms':>8} {'E2E err':>8} {'TTFT err':>9} "
                     f"{'ITL err':>8}"]
    for key, label in _LABELS.items():
        row = entry.get(key)
        if not row:
            continue
        errs = [row.get(f"{k}_err") for k in KEYS]
        cells = " ".join(f"{e:>+8.1f}%" if e is not None else f"{'':>9}" for e in errs)
        lines.append(f"  {label:<22} {row['e2e_ms']:>9.1f} {row['ttft_ms']:>9.2f} {row['itl_ms']:>8.3f} {cells}")
    if "agreement" in entry:
        a = entry["agreement"]
        lines.append(f"  replay vs BLIS+ours: E2E {a['e2e_pts']:.2f} pts, TTFT {a['ttft_pts']:.2f} pts, "
                     f"ITL {a['itl_pts']:.2f} pts")
    lines += [f"  note: {n}" for n in entry.get("notes", [])]
    return "\n".join(lines)


def format_summary(results: dict[str, dict[str, Any]]) -> str:
    """One line per experiment: the E2E error of every source."""
    keys = [k for k in _LABELS if k != "measured"]
    head = f"{'experiment':<48} " + " ".join(f"{_LABELS[k]:>21}" for k in keys) + f" {'|replay-BLIS+ours|':>19}"
    lines = ["E2E error (%)", head]
    for exp_id, entry in results.items():
        cells = []
        for k in keys:
            e = (entry.get(k) or {}).get("e2e_err")
            cells.append(f"{e:>+20.1f}%" if e is not None else f"{'-':>21}")
        agree = entry.get("agreement", {}).get("e2e_pts")
        lines.append(f"{exp_id:<48} " + " ".join(cells) + (f" {agree:>16.2f} pts" if agree is not None else ""))
    return "\n".join(lines)


def calibrated_overheads(exp_dir: Path, predictor: Any, seed: int = 0):
    """Queueing and post-decode overheads fitted on one experiment by the replay.

    :func:`evaluation.replay.calibrate_overheads`: ``queue_overhead_s`` (the
    median-TTFT residual) becomes ``queueing_us`` and ``end_overhead_s`` (the
    last-line → request-end tail) ``post_decode_us``; no per-token term.
    """
    from discovery.printers.go_source import Overheads
    from evaluation.replay import calibrate_overheads

    cal = calibrate_overheads(exp_dir, predictor, seed)
    return Overheads(queueing_us=cal["queue_overhead_s"] * 1e6, post_decode_us=cal["end_overhead_s"] * 1e6,
                     source=f"evaluation.replay.calibrate_overheads on {Path(exp_dir).name}",
                     given=("queueing_us", "post_decode_us"))


def blis_binaries(artifact: Path, blis_binary: str | None, backends: Sequence[str], echo,
              overheads=None) -> dict[str, Path]:
    from discovery.blis_export import export_artifact_to_blis
    from evaluation.blis_build import build_blis, which_blis

    if blis_binary:
        binary = which_blis(blis_binary)
        return {b: binary for b in backends}
    out: dict[str, Path] = {}
    if "stepml" in backends:
        with tempfile.TemporaryDirectory(prefix="stepml-overlay-") as tmp:
            overlay = export_artifact_to_blis(artifact, Path(tmp) / "overlay", echo=lambda *_: None,
                                              overheads=overheads)
            build = build_blis(overlay)
        echo(f"BLIS with the StepML overlay: {build.binary}{' (cached)' if build.cached else ''}; "
             f"{build.go_test_summary()}")
        if build.go_test_ok is False:
            echo(f"  warning: the overlay's Go tests fail; see {build.go_test_log}")
        out["stepml"] = build.binary
    others = [b for b in backends if b != "stepml"]
    if others:
        plain = build_blis(None)
        echo(f"plain BLIS: {plain.binary}{' (cached)' if plain.cached else ''}")
        out.update({b: plain.binary for b in others})
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.blis", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, help="artifact.json (or an export folder)")
    parser.add_argument("--experiments", required=True, nargs="+", metavar="DIR",
                        help="experiment directories (blis/experiments/<id>) or experiment ids")
    parser.add_argument("--blis-binary", default=None,
                        help="a blis binary built with a StepML overlay, used for every backend (default: build)")
    parser.add_argument("--backends", default="stepml,trained-physics,roofline",
                        help="comma-separated BLIS latency backends (default: stepml,trained-physics,roofline)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed of both simulators (default 0)")
    parser.add_argument("--calibrate-on", default=None, metavar="DIR",
                        help="fit the queueing and post-decode overheads on this experiment with the replay "
                             "(evaluation.replay --calibrate-on) and give them to both simulators, instead of "
                             "the artifact's")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m evaluation.blis``."""
    import sys

    from discovery.formula import artifact_overheads, load_artifact
    from evaluation.blis_run import BACKENDS
    from evaluation.replay_setup import resolve_experiment
    from features.io import json_safe

    args = build_parser().parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise StepMLError(f"--backends: unknown {', '.join(unknown) or '(none)'}; valid: {', '.join(BACKENDS)}")
    artifact = Path(args.artifact)
    artifact = artifact / "artifact.json" if artifact.is_dir() else artifact
    doc, predictor = load_artifact(artifact)
    overheads = artifact_overheads(doc, artifact)
    experiments = [resolve_experiment(e) for e in args.experiments]

    def echo(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.calibrate_on:
        if args.blis_binary:
            raise StepMLError("--calibrate-on builds the overlay with the calibrated overheads: drop --blis-binary")
        overheads = calibrated_overheads(resolve_experiment(args.calibrate_on), predictor, args.seed)
        echo(f"calibrated on {Path(args.calibrate_on).name}: QueueingTime {overheads.queueing_us:.0f} µs, "
             f"PostDecodeFixedOverhead {overheads.post_decode_us:.0f} µs")
    binaries = blis_binaries(artifact, args.blis_binary, backends, echo, overheads)
    results = {}
    for exp in experiments:
        results[exp.name] = compare_experiment(exp, predictor, overheads, binaries, args.seed, echo)
        if not args.json:
            print(format_experiment(exp.name, results[exp.name]) + "\n", flush=True)
    if args.json:
        print(json.dumps(json_safe({"artifact": str(artifact), "seed": args.seed, "overheads": {
            "queueing_us": overheads.queueing_us, "output_token_us": overheads.output_token_us,
            "post_decode_us": overheads.post_decode_us, "absent": list(overheads.absent)},
            "binaries": {b: str(p) for b, p in binaries.items()}, "experiments": results})))
    else:
        print(format_summary(results))
    return 0


if __name__ == "__main__":
    from features.cli import run

    run(main, prog="evaluation.blis")
