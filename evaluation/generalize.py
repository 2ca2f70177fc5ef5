"""``python -m evaluation.generalize --by model``: fit once, predict every model — leave one group out.

For each held-out group (a model, or a workload) of the experiments:

1. **search** (``--space``, default ``physics``, ``--budget`` seconds) on the
   step traces of the *other* groups' experiments, when there are any;
2. **calibrate** (:mod:`discovery.calibrate`) every candidate — the search's
   ``best`` formula and the space's physics priors (:data:`PRIORS`) — on the
   other groups' measured request latencies (and their step traces), and keep
   the candidate with the fewest constants among those within 5 % of the
   lowest calibrated loss (:func:`parsimonious`; selection sees the replay);
3. **replay** the held-out group's experiments in full with the calibrated
   formula and overheads (async scheduling on) and compare E2E, TTFT and ITL
   with their measurements.

The blackbox baseline (``c0 + c1·prefill_tokens + c2·decode_tokens``, the
simulators' default shape) is calibrated and replayed the same way beside it.
``--by none`` calibrates on every experiment and replays every experiment
(the in-sample check). Errors are absolute, in %, of the whole-run means, as
``evaluation.replay`` computes them; with ``--seeds K`` they are those of the
mean prediction over K workload draws (default :data:`SEEDS`; a measured run is one
random draw, and near a limit a single replayed draw's TTFT is mostly that draw's luck).

Default experiments: the 12 non-``reasoning`` experiments under
``<data root>/blis/experiments`` (the four ``reasoning`` runs are overloaded).
Default step traces: ``<data root>/blis/steps/enriched_steps.parquet``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from features.cli import run
from features.errors import StepMLError

__all__ = ["PRIORS", "BLACKBOX", "GROUPINGS", "SEEDS", "LOSS_TOLERANCE", "parsimonious", "default_experiments", "group_of", "folds", "generalize", "main"]

#: Physics prior formulas. Their constants are where calibration starts and what it is pulled towards
#: (``CalibrationSettings.prior_weight``) in directions the training models cannot identify: memory at
#: ~90 % of peak bandwidth, ~50 µs of kernel latency per layer, ~6 µs per all-reduce latency round (2 per
#: layer × log2(tp): NCCL's tree depth for small messages, so ~12 µs per all-reduce at tp = 2), the
#: all-reduce volume at ~25 % of NVLink's peak (``rl_tp_comm`` is in HBM time, NVLink being ~3.7× slower
#: on H100: 15 ≈ 3.7 / 0.25), ~10 µs more per MoE layer (router and token permutation), ~20–25 µs per
#: request, ~15 ns per token of context the batch holds (a per-KV-token cost beyond the KV bytes, the same on
#: every model: the traces cannot tell it from the per-request term — batch and KV tokens correlate at 0.99
#: in each — and calibration moves it where the experiments' context lengths differ), 0.3 ms per step. The
#: first adds the all-reduce volume (which grows with the batch, steepest at tp = 4) and the per-token term
#: to the second; :func:`parsimonious` keeps it only when it fits clearly better.
PRIORS: tuple[str, ...] = (
    "300.0 + 1.0*rl_memory + 0.5*rl_prefill_compute + 50.0*num_layers + 6.0*allreduce_rounds + 15.0*rl_tp_comm"
    " + 10.0*num_moe_layers + 20.0*batch_size + 0.015*kv_tokens",
    "300.0 + 1.1*rl_memory + 0.5*rl_prefill_compute + 50.0*num_layers + 6.0*allreduce_rounds + 10.0*num_moe_layers"
    " + 25.0*batch_size",
)
#: The blackbox baseline's shape with starting values.
BLACKBOX = "12000.0 + 30.0*prefill_tokens + 60.0*decode_tokens"
GROUPINGS = ("model", "workload", "none")
#: Workload draws a held-out experiment is scored on by default (the mean prediction over them): a measured
#: run is one draw of inference-perf's unseeded arrivals, and near the slot limit one replayed draw's TTFT
#: swings by ±25 % around the mean (70B ``general``), while E2E and ITL barely move.
SEEDS = 3
STEP_TABLE = Path("blis") / "steps" / "enriched_steps.parquet"


@dataclass(frozen=True)
class FoldResult:
    """One held-out group: the chosen formulas and the held-out replays."""

    group: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    formula: str
    overheads: dict[str, float]
    calibration_loss: float
    candidates: dict[str, float]
    errors: dict[str, dict[str, Any]]
    baseline_formula: str
    baseline_errors: dict[str, dict[str, Any]]
    seconds: float
    artifacts: dict[str, str] = field(default_factory=dict)


def default_experiments(root: Path | None = None) -> list[Path]:
    """The non-``reasoning`` experiment folders under the data root."""
    from features.metadata import default_data_root

    base = (root or default_data_root()) / "blis" / "experiments"
    if not base.is_dir():
        raise StepMLError(f"no experiments under {base} (give --experiments)")
    return sorted(p for p in base.iterdir() if (p / "exp-config.yaml").is_file() and "reasoning" not in p.name)


def group_of(exp_dir: Path, by: str) -> str:
    """The group of an experiment: its server's model id, or its workload name."""
    from features.metadata import load_server_config, parse_experiment_name

    if by == "none":
        return "all"
    if by == "model":
        server = load_server_config(exp_dir / "exp-config.yaml")
        return str(server.model_id or exp_dir.name)
    parsed = parse_experiment_name(exp_dir.name)
    if parsed is None:
        raise StepMLError(f"{exp_dir.name}: no workload in the experiment name (YYYYMMDD-HHMMSS-model-tpN-workload)")
    return parsed.workload


def folds(experiments: Sequence[Path], by: str) -> list[tuple[str, list[Path], list[Path]]]:
    """(held-out group, training experiments, held-out experiments) per fold."""
    if by not in GROUPINGS:
        raise StepMLError(f"unknown --by '{by}'; valid: {', '.join(GROUPINGS)}")
    groups: dict[str, list[Path]] = {}
    for e in experiments:
        groups.setdefault(group_of(e, by), []).append(e)
    if by == "none":
        return [("all", list(experiments), list(experiments))]
    if len(groups) < 2:
        raise StepMLError(f"--by {by}: only one group ({', '.join(groups)}); nothing to train on when it is held out")
    return [(g, [e for e in experiments if e not in members], members) for g, members in sorted(groups.items())]


def _check_experiments(experiments: Sequence[Path]) -> None:
    from features.metadata import metadata_roots, experiment_meta

    for e in experiments:
        if not list((e / "results").glob("stage_*_lifecycle_metrics.json")):
            raise StepMLError(f"{e.name}: no measured results (results/stage_*_lifecycle_metrics.json)")
        meta = experiment_meta(e.name, metadata_roots(e))
        if meta.arch is None:
            raise StepMLError(f"{e.name}: no model config found for {meta.model}")
        if meta.hardware is None:
            raise StepMLError(f"{e.name}: no hardware datasheet found")


def _search_candidate(space: str, steps: Path, train: Sequence[Path], budget: float, seed: int,
                      workdir: Path) -> str | None:
    """The search's ``best`` formula on the training experiments' step traces (None without traces)."""
    import pandas as pd

    from discovery import search

    ids = set(pd.read_parquet(steps, columns=["experiment_id"])["experiment_id"].astype(str)) \
        if steps.suffix == ".parquet" else set()
    wanted = [e.name for e in train if e.name in ids]
    if not wanted or budget <= 0:
        return None
    run_dir = workdir / f"search-{len(list(workdir.glob('search-*')))}"
    argv = ["--space", space, "--data", str(steps), "--experiments", ",".join(wanted), "--budget", str(budget),
            "--seed", str(seed), "--run-dir", str(run_dir), "--quiet", "--generations", "1000000",
            "--early-stop", "0"]
    search.search(search.build_parser().parse_args(argv), echo=lambda _: None)
    from discovery.calibrate import load_formula

    expr, _ = load_formula(f"{run_dir}:best")
    import sympy

    return sympy.srepr(expr)


def _calibrated(text: str, train: Sequence[Path], steps: Path | None, settings: Any, mapper: Any) -> Any:
    from discovery.calibrate import calibrate
    from features import catalog
    from search_spaces.operators import parse_formula

    expr = parse_formula(text, list(catalog.registry()), indexed=False)
    return calibrate(expr, train, steps, settings, mapper)


def _held_out(results: Sequence[Any], test: Sequence[Path], seed: int, mapper: Any,
              seeds: int) -> list[dict[str, dict[str, Any]]]:
    """Each calibrated result's held-out rows, every (result, experiment, draw) replay one mapper job.

    A row has the absolute and signed E2E, TTFT and ITL errors (%) of the mean
    prediction over the ``seeds`` draws ``seed`` … ``seed + seeds − 1`` (the mean
    of the draws' signed errors; ``seed_spread`` keeps each draw's), the measured
    and predicted means, and the first draw's flags and per-stage errors.
    """
    import sympy

    jobs = [(str(e), sympy.srepr(r.expr), dict(r.overheads), seed + k,
             r.operating_range.to_dict() if r.operating_range is not None else None, k == 0)
            for r in results for e in test for k in range(seeds)]
    draws = iter(mapper(replay_draw, *(list(col) for col in zip(*jobs))))
    return [{e.name: _row([next(draws) for _ in range(seeds)], seed) for e in test} for _ in results]


def replay_draw(exp_dir: str, srepr: str, overheads: Mapping[str, float], seed: int,
                operating_range: Mapping[str, Any] | None = None, first: bool = True) -> dict[str, Any]:
    """Full replay of one workload draw of an experiment with a calibrated formula (module-level: picklable).

    Returns its signed headline errors (%) and, for the ``first`` draw, the
    measured means, the flags (saturated; ``extrapolated`` when the replay leaves
    ``operating_range``, :meth:`~evaluation.operating_range.OperatingRange.to_dict`)
    and the per-stage errors.
    """
    from evaluation.operating_range import OperatingRange
    from evaluation.predictors import FormulaPredictor
    from evaluation.replay import replay_experiment
    from features import catalog
    from search_spaces.operators import parse_formula

    expr = parse_formula(srepr, list(catalog.registry()), indexed=False)
    span = OperatingRange.from_dict(operating_range) if operating_range is not None else None
    predictor = FormulaPredictor(expr, tuple(catalog.registry()), "generalize", span)
    result = replay_experiment(exp_dir, predictor, seed, queue_overhead_s=overheads["queue_overhead_s"],
                               end_overhead_s=overheads["end_overhead_s"], async_scheduling=True, explain=False,
                               capacity=first)
    window = result.headline_window
    draw: dict[str, Any] = {"signed": result.errors(window)}
    if not first:
        return draw
    meas = result.measured.get(window)
    draw["measured"] = {key: float(getattr(meas, metric).mean) if meas else float("nan") for key, metric in
                        (("e2e", "request_latency"), ("ttft", "time_to_first_token"), ("itl", "inter_token_latency"))}
    return {**draw, "saturated": bool(result.saturated), "extrapolated": result.extrapolated,
            "outside": result.range_check.describe() if result.range_check is not None else "",
            "load": result.load.to_dict() if result.load is not None else None,
            "stage_errors": {w: result.errors(w) for w in result.predicted if w in result.measured and w != "summary"}}


def _row(draws: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:
    """A held-out row from its draws (the first one complete): the mean prediction's errors when more than one."""
    from evaluation.replay import SPREAD_KEYS, spread_of

    first = draws[0]
    signed = first["signed"]
    spread = None
    if len(draws) > 1:
        spread = spread_of({seed + k: d["signed"] for k, d in enumerate(draws)})
        signed = {**signed, **spread["mean"]}
    means = {key: {"predicted": m * (1.0 + signed[err] / 100.0), "measured": m}
             for (key, m), err in zip(first["measured"].items(), SPREAD_KEYS)}
    return {**{k: abs(signed[k]) for k in SPREAD_KEYS}, "signed": {k: signed[k] for k in SPREAD_KEYS}, "means": means,
            **{k: first[k] for k in ("saturated", "extrapolated", "outside", "load", "stage_errors")},
            "seed_spread": spread}


def _write_artifact(result: Any, out: Path | None, group: str, kind: str, train: Sequence[Path],
                    steps: Path | None, settings: Any) -> str | None:
    """The fold's calibrated formula as an artifact under ``out/<group>-<kind>/`` (None without ``out``)."""
    if out is None:
        return None
    from discovery.calibrate import artifact_document, write_artifact

    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in f"{group}-{kind}").strip("-.")
    doc = artifact_document(result, name, f"evaluation.generalize, {group} held out", list(train), steps, settings)
    return str(write_artifact(doc, Path(out) / name, steps, [e.name for e in train]))


#: Candidates within this factor of the lowest calibrated loss count as equally good (see :func:`parsimonious`).
LOSS_TOLERANCE = 1.05


def parsimonious(results: Sequence[Any], tolerance: float = LOSS_TOLERANCE) -> Any:
    """The calibrated candidate with the fewest constants among those within ``tolerance`` × the lowest loss.

    Extra constants that lower the training loss by a few percent are directions
    the training models barely tell apart (e.g. separate weight and KV
    bandwidth efficiencies when every training model has grouped-query attention
    and little KV traffic); on a held-out model where that direction matters
    (Llama-2-7B's KV is 4–8× larger per token) they extrapolate worst. Ties in
    the count go to the lower loss.
    """
    import sympy

    best = min(r.loss for r in results)
    close = [r for r in results if r.loss <= tolerance * best]
    return min(close, key=lambda r: (sum(1 for a in sympy.preorder_traversal(r.expr) if isinstance(a, sympy.Float)),
                                     r.loss))


def run_fold(group: str, train: list[Path], test: list[Path], steps: Path | None, space: str, budget: float,
             settings: Any, mapper: Any, workdir: Path, echo: Callable[[str], None],
             priors: Sequence[str] = PRIORS, out: Path | None = None, seeds: int = SEEDS) -> FoldResult:
    """Search, calibrate the candidates, keep the best, replay the held-out experiments (module docstring)."""
    started = time.monotonic()
    texts = list(priors)
    found = _search_candidate(space, steps, train, budget, settings.seed, workdir) if steps else None
    if found is not None:
        texts.insert(0, found)
    results = {}
    for text in texts:
        results[text] = _calibrated(text, train, steps, settings, mapper)
        echo(f"  [{group}] candidate loss {results[text].loss:6.2f} %  {results[text].expr}")
    if not results:
        raise StepMLError("no candidate formula: give --priors >= 1 or a search --budget with step traces")
    chosen = parsimonious(list(results.values()))
    plain = replace(settings, roofline_floor=False)                 # a blackbox knows no roofline
    baseline = _calibrated(BLACKBOX, train, steps, plain, mapper)
    echo(f"  [{group}] blackbox loss {baseline.loss:6.2f} %  {baseline.expr}")
    import sympy

    ours, theirs = _held_out((chosen, baseline), test, settings.seed, mapper, seeds)
    for exp, r in ours.items():
        echo(f"  [{group}] held out {exp}: E2E {r['e2e_err']:.1f} %, TTFT {r['ttft_err']:.1f} %, ITL "
             f"{r['itl_err']:.1f} % (blackbox E2E {theirs[exp]['e2e_err']:.1f} %)"
             + ("; SATURATED" if r.get("saturated") else "")
             + (f"; EXTRAPOLATED ({r['outside']})" if r.get("extrapolated") else ""))
    artifacts = {kind: _write_artifact(res, out, group, kind, train, steps, used)
                 for kind, res, used in (("stepml", chosen, settings), ("blackbox", baseline, plain))}
    return FoldResult(group, tuple(e.name for e in train), tuple(e.name for e in test), sympy.sstr(chosen.expr),
                      dict(chosen.overheads), chosen.loss, {sympy.sstr(r.expr): r.loss for r in results.values()},
                      ours, sympy.sstr(baseline.expr), theirs, round(time.monotonic() - started, 1),
                      {k: v for k, v in artifacts.items() if v})


def summary(fold_results: Sequence[FoldResult], key: str = "errors") -> dict[str, Any]:
    """Means and maxima over held-out experiments, and the E2E mean per group."""
    rows = [(f.group, r) for f in fold_results for r in getattr(f, key).values()]
    if not rows:
        return {}
    e2e = [r["e2e_err"] for _, r in rows]
    per_group: dict[str, list[float]] = {}
    for g, r in rows:
        per_group.setdefault(g, []).append(r["e2e_err"])
    return {"e2e_mean": float(np.mean(e2e)), "e2e_max": float(np.max(e2e)),
            "ttft_mean": float(np.mean([r["ttft_err"] for _, r in rows])),
            "itl_mean": float(np.mean([r["itl_err"] for _, r in rows])),
            "per_group": {g: float(np.mean(v)) for g, v in per_group.items()}}


def table(fold_results: Sequence[FoldResult]) -> str:
    """The text report: one row per held-out experiment, ours beside the blackbox."""
    lines = [f"{'experiment':<45} {'held out':<28} {'E2E%':>6} {'TTFT%':>6} {'ITL%':>6}  "
             f"{'E2E meas/pred s':>16}  {'bb E2E%':>7} {'bb TTFT%':>8} {'bb ITL%':>7}  {'TTFT% over draws':>16}"]
    for f in fold_results:
        for exp, r in f.errors.items():
            b = f.baseline_errors[exp]
            m = r["means"]["e2e"]
            flag = ("*" if r.get("saturated") else "") + ("+" if r.get("extrapolated") else "")
            spread = r.get("seed_spread")
            draws = f"{spread['min']['ttft_err']:+.1f} .. {spread['max']['ttft_err']:+.1f}" if spread else ""
            lines.append(f"{exp:<43}{flag:<2} {f.group[:28]:<28} {r['e2e_err']:>6.1f} {r['ttft_err']:>6.1f} "
                         f"{r['itl_err']:>6.1f}  {m['measured']:>7.3f}/{m['predicted']:<8.3f}  {b['e2e_err']:>7.1f} "
                         f"{b['ttft_err']:>8.1f} {b['itl_err']:>7.1f}  {draws:>16}")
    ours, base = summary(fold_results), summary(fold_results, "baseline_errors")
    if any(r.get("saturated") for f in fold_results for r in f.errors.values()):
        lines.append("* saturated: the offered load exceeds the predicted capacity (evaluation.capacity)")
    if any(r.get("extrapolated") for f in fold_results for r in f.errors.values()):
        lines.append("+ extrapolated: the replay's steps leave the range the formula was calibrated on "
                     "(evaluation.operating_range)")
    if any(r.get("seed_spread") for f in fold_results for r in f.errors.values()):
        lines.append("TTFT% over draws: the signed TTFT error of each workload draw, lowest .. highest (the row's "
                     "errors are those of the draws' mean prediction)")
    if ours:
        lines.append(f"mean |error| — ours: E2E {ours['e2e_mean']:.1f} % (max {ours['e2e_max']:.1f}), TTFT "
                     f"{ours['ttft_mean']:.1f} %, ITL {ours['itl_mean']:.1f} %;  blackbox: E2E {base['e2e_mean']:.1f} %, "
                     f"TTFT {base['ttft_mean']:.1f} %, ITL {base['itl_mean']:.1f} %")
        lines.append("per group E2E: " + ", ".join(f"{g} {v:.1f} %" for g, v in ours["per_group"].items()))
    for f in fold_results:
        lines.append(f"[{f.group}] formula {f.formula}; queueing {f.overheads['queue_overhead_s'] * 1e3:.2f} ms, "
                     f"post-decode {f.overheads['end_overhead_s'] * 1e3:.2f} ms; calibration loss "
                     f"{f.calibration_loss:.2f} % ({f.seconds:.0f} s)")
    return "\n".join(lines)


def generalize(experiments: Sequence[Path], by: str, steps: Path | None, space: str, budget: float,
               settings: Any, mapper: Any, workdir: Path, echo: Callable[[str], None] = print,
               priors: Sequence[str] = PRIORS, out: Path | None = None, seeds: int = SEEDS) -> list[FoldResult]:
    """Run every fold (the Python API behind the CLI); ``out`` keeps each fold's calibrated artifacts; ``seeds``
    workload draws are averaged in the held-out replays (:func:`replay_draw`)."""
    _check_experiments(experiments)
    results = []
    for group, train, test in folds(experiments, by):
        echo(f"fold {group}: train on {len(train)}, hold out {len(test)}")
        results.append(run_fold(group, train, test, steps, space, budget, settings, mapper, workdir, echo, priors,
                                out, seeds))
    return results


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m evaluation.generalize", description=__doc__.splitlines()[0])
    p.add_argument("--by", default="model", help=f"held-out grouping: {', '.join(GROUPINGS)} (default model)")
    p.add_argument("--experiments", nargs="+", default=None, metavar="DIR",
                   help="experiment folders or ids (default: the 12 non-reasoning BLIS experiments)")
    p.add_argument("--steps", default=None, help="step traces (default: <data root>/blis/steps/enriched_steps.parquet)")
    p.add_argument("--space", default="physics", help="search space of the per-fold search (default physics)")
    p.add_argument("--budget", type=float, default=60.0, help="search seconds per fold (0 = priors only; default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of searches and replays (default 0)")
    p.add_argument("--seeds", type=int, default=SEEDS, metavar="K",
                   help="score each held-out experiment on the mean prediction of K workload draws (seed .. seed+K-1; "
                        f"inference-perf's arrivals are unseeded, so a measured run is one draw; default {SEEDS})")
    p.add_argument("--requests", type=int, default=800, help="requests per stage in calibration replays (default 800)")
    p.add_argument("--iterations", type=int, default=4, help="calibration outer iterations (default 4)")
    p.add_argument("--priors", type=int, default=len(PRIORS),
                   help=f"physics prior formulas calibrated as candidates (0..{len(PRIORS)}, default all)")
    p.add_argument("--no-roofline-floor", dest="roofline_floor", action="store_false",
                   help="calibrate the candidates as they are, without the floor Max(rl_bound, formula)")
    par = p.add_mutually_exclusive_group()
    par.add_argument("--workers", type=int, default=None, help="start a dask LocalCluster with N workers")
    par.add_argument("--scheduler", default=None, help="join an existing dask cluster at tcp://HOST:PORT")
    par.add_argument("--processes", type=int, default=None, help="replay in N local processes")
    p.add_argument("--out", default=None, help="write each fold's calibrated formula and blackbox as artifacts "
                                                "under OUT/<group>-stepml/ and OUT/<group>-blackbox/")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    import tempfile

    from discovery.calibrate import CalibrationSettings, _mapper
    from evaluation.replay_setup import resolve_experiment as _resolve_experiment
    from features.metadata import default_data_root
    from search_spaces.spaces import get_space

    args = build_parser().parse_args(argv)
    if args.by not in GROUPINGS:
        raise StepMLError(f"unknown --by '{args.by}'; valid: {', '.join(GROUPINGS)}")
    get_space(args.space)
    if args.seed < 0 or not args.budget >= 0:
        raise StepMLError("--seed and --budget must be >= 0")
    if args.seeds < 1:
        raise StepMLError(f"--seeds must be >= 1, got {args.seeds}")
    if not 0 <= args.priors <= len(PRIORS):
        raise StepMLError(f"--priors must be in 0..{len(PRIORS)}")
    settings = CalibrationSettings(requests_per_stage=args.requests, max_iterations=args.iterations, seed=args.seed,
                                   roofline_floor=args.roofline_floor)
    experiments = [_resolve_experiment(e) for e in args.experiments] if args.experiments else default_experiments()
    steps = Path(args.steps) if args.steps else default_data_root() / STEP_TABLE
    if args.steps and not steps.exists():
        raise StepMLError(f"--steps not found: {steps}")
    steps_or_none = steps if steps.exists() else None
    out = Path(args.out) if args.out else None
    if out is not None:
        from features.io import check_writable_dir

        check_writable_dir(out, "--out")
        if any(out.glob("*/artifact.json")):
            raise StepMLError(f"{out} already holds artifacts; choose another --out")
    echo = (lambda _: None) if args.json else print
    with tempfile.TemporaryDirectory(prefix="stepml-generalize-") as tmp, _mapper(args) as mapper:
        results = generalize(experiments, args.by, steps_or_none, args.space, args.budget, settings, mapper or map,
                             Path(tmp), echo, PRIORS[:args.priors], out, args.seeds)
    if args.json:
        from features.io import json_safe

        doc = {"by": args.by, "seeds": args.seeds,
               "folds": {f.group: {"experiments": f.errors, "baseline": f.baseline_errors, "formula": f.formula,
                                   "overheads": f.overheads, "calibration_loss": f.calibration_loss,
                                   "candidates": f.candidates, "baseline_formula": f.baseline_formula,
                                   "train": list(f.train), "seconds": f.seconds, "artifacts": f.artifacts}
                         for f in results},
               "summary": summary(results), "baseline_summary": summary(results, "baseline_errors")}
        print(json.dumps(json_safe(doc)))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    run(main, prog="evaluation.generalize")
