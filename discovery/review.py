"""``python -m discovery.review [RUN_DIR]``: the Pareto front of a run, with selections marked.

Prints the validation front (complexity × validation MAPE) and marks
``best``, ``accuracy`` and ``knee``; writes ``pareto.png`` and ``report.md`` into the
run directory. Default: the latest run under ``results/``.

``best`` is PySR's rule (highest score among rows with loss ≤ 1.5 × the
minimum) until the front is replayed: ``--experiments`` replays every member
(async scheduling) and saves the errors in ``replay.json``; from then on
``best`` — here, in ``export``, ``replay`` and ``calibrate`` — is the row with the
lowest E2E + TTFT + ITL error among those within 1.5 × the lowest validation
error. When the run's data contain prefill steps, a formula with no prefill
dependence is never ``best``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from discovery.pareto import REPLAY_COLUMNS, loss_column, pick_row
from discovery.rundir import REPLAY_FILE, expr_of, latest_run, read_hof, read_run_json, reviewed_front
from features.cli import run
from features.errors import StepMLError
from features.io import atomic_write_bytes, atomic_write_text

MARKS = ("best", "accuracy", "knee")


def selections(front: pd.DataFrame, eligible: Sequence[bool] | None = None) -> dict[str, int]:
    """Row index of each selection in ``front`` (``e2e`` too when replay columns exist)."""
    marks = {kind: pick_row(front, kind, eligible) for kind in MARKS}
    if "e2e_err" in front.columns and front["e2e_err"].notna().any():
        marks["e2e"] = int(front["e2e_err"].astype(float).fillna(np.inf).to_numpy().argmin())
    return marks


def replay_columns(front: pd.DataFrame, experiments: Sequence[str], calibrate_on: str | None = None,
                   seed: int = 0, operating_range: Any = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Add the mean absolute E2E, TTFT and ITL replay errors (%) over ``experiments`` to each front row.

    Each row's formula drives the continuous-batching replay
    (:mod:`evaluation.replay`); ``calibrate_on`` first fits the client overheads on
    that experiment, per row. Also returns the experiments whose replay leaves
    ``operating_range`` (the run's fitted range, :mod:`evaluation.operating_range`)
    for some row, with what lies outside: their errors are extrapolations.
    """
    from evaluation.predictors import FormulaPredictor
    from evaluation.replay import calibrate_overheads, replay_experiment
    from evaluation.replay_setup import resolve_experiment
    from features import catalog

    dirs = [resolve_experiment(e) for e in experiments]
    out = front.copy()
    for col in REPLAY_COLUMNS:
        out[col] = np.nan
    outside: dict[str, str] = {}
    options = {"capacity": False, "explain": False, "async_scheduling": True}
    for i, row in front.iterrows():
        predictor = FormulaPredictor(expr_of(row), tuple(catalog.registry()), f"row {i}", operating_range)
        overheads = calibrate_overheads(resolve_experiment(calibrate_on), predictor, seed, **options) \
            if calibrate_on else {}
        errs = {col: [] for col in REPLAY_COLUMNS}
        for d in dirs:
            try:
                result = replay_experiment(d, predictor, seed, **options, **overheads)
            except (ValueError, StepMLError):  # the formula gave a non-positive step time
                e = {col: np.inf for col in REPLAY_COLUMNS}
            else:
                e = result.errors()
                if result.extrapolated:
                    outside.setdefault(d.name, result.range_check.describe())
            for col in REPLAY_COLUMNS:
                errs[col].append(abs(e[col]))
        for col in REPLAY_COLUMNS:
            out.loc[i, col] = float(np.mean(errs[col]))
    return out, outside


def save_replay(run_dir: Path, front: pd.DataFrame, experiments: Sequence[str], calibrate_on: str | None,
                seed: int, outside: dict[str, str] | None = None) -> Path:
    """Write the front's replay errors to ``replay.json`` (keyed by each row's exact formula), atomically;
    ``outside``: the replayed experiments that leave the run's operating range (see :func:`replay_columns`)."""
    from features.io import atomic_write_json, json_safe

    import sympy

    rows = {sympy.srepr(expr_of(r)): {c: float(r[c]) for c in REPLAY_COLUMNS} for _, r in front.iterrows()}
    doc = {"experiments": [str(e) for e in experiments], "calibrate_on": calibrate_on, "seed": seed,
           "scheduling": "async", "rows": rows, "extrapolated": dict(outside or {})}
    return atomic_write_json(run_dir / REPLAY_FILE, json_safe(doc))


def front_table(front: pd.DataFrame, marks: dict[str, int]) -> str:
    """Text table of the front with selection marks (and replay errors when present)."""
    tags = {i: ",".join(k for k, v in marks.items() if v == i) for i in range(len(front))}
    replay = [c for c in REPLAY_COLUMNS if c in front.columns]
    lines = [f"{'row':>3} {'cx':>3} {'train%':>7} {'val%':>7} {'test%':>7} {'score':>6} "
             + "".join(f"{c.replace('_err', '%'):>7} " for c in replay) + f"{'engine':<7} {'selected':<20} formula"]
    for i, r in front.iterrows():
        lines.append(f"{i:>3} {int(r['Complexity']):>3} {float(r['Loss']):>7.2f} "
                     f"{float(r.get('val_mape', np.nan)):>7.2f} {float(r.get('test_mape', np.nan)):>7.2f} "
                     f"{float(r.get('score', np.nan)):>6.3f} " + "".join(f"{float(r[c]):>7.2f} " for c in replay)
                     + f"{str(r.get('engine', '')):<7} {tags[i]:<20} {r['Equation']}")
    return "\n".join(lines)


def plot_front(front: pd.DataFrame, hof: pd.DataFrame, marks: dict[str, int], path: Path, title: str) -> Path:
    """Complexity vs validation MAPE, every candidate grey, the front labelled."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = loss_column(front)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    ax.scatter(hof["Complexity"], hof[col], s=12, color="0.75", label="candidates")
    ax.step(front["Complexity"], front[col], where="post", color="C0", lw=1.2)
    ax.scatter(front["Complexity"], front[col], s=22, color="C0", label="front", zorder=3)
    for i in range(len(front)):
        ax.annotate(str(i), (front["Complexity"].iloc[i], front[col].iloc[i]), textcoords="offset points",
                    xytext=(-4, -12), fontsize=7, color="C0")
    for i in sorted(set(marks.values())):
        label = ", ".join(k for k, v in marks.items() if v == i)
        ax.annotate(label, (front["Complexity"].iloc[i], front[col].iloc[i]), textcoords="offset points",
                    xytext=(6, 8), fontsize=8, color="C3")
    values = pd.to_numeric(hof[col], errors="coerce").to_numpy(float)
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() > 10:  # log scale only for a wide range
        from matplotlib.ticker import FormatStrFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("complexity")
    ax.set_ylabel("validation MAPE (%)" if col == "val_mape" else "loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def outside_lines(outside: dict[str, str]) -> list[str]:
    """One line per replayed experiment outside the run's operating range."""
    return [f"EXTRAPOLATED {exp}: {what} (outside the range the run was fitted on; its errors are extrapolations)"
            for exp, what in outside.items()]


def report_md(run_dir: Path, info: dict, front: pd.DataFrame, marks: dict[str, int],
              outside: dict[str, str] | None = None) -> str:
    """The review as Markdown."""
    replay = [c for c in REPLAY_COLUMNS if c in front.columns]
    lines = [f"# Run {run_dir.name}", "",
             f"- space: `{info.get('space')}`, engines: {', '.join(info.get('engines', []))}, seed {info.get('seed')}",
             f"- data: {info.get('data')} (hash `{info.get('data_hash')}`)"
             + (" — **SYNTHETIC demo data**" if info.get("synthetic") else ""),
             f"- target: `{info.get('target')}`, split: `{info.get('split')}` {info.get('fold') or ''}",
             f"- wall time: {info.get('wall_s')} s", "", "![front](pareto.png)", "",
             "| row | complexity | train MAPE % | val MAPE % | test MAPE % | score | "
             + "".join(f"{c} % | " for c in replay) + "selected | formula |",
             "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(replay) + "---|---|"]
    for i, r in front.iterrows():
        tag = ", ".join(k for k, v in marks.items() if v == i)
        lines.append(f"| {i} | {int(r['Complexity'])} | {float(r['Loss']):.2f} | {float(r.get('val_mape', np.nan)):.2f} "
                     f"| {float(r.get('test_mape', np.nan)):.2f} | {float(r.get('score', np.nan)):.3f} | "
                     + "".join(f"{float(r[c]):.2f} | " for c in replay) + f"{tag} | `{r['Equation']}` |")
    lines += ["", "Selections use the validation part only; test MAPE is reported, never used to choose."]
    if replay:
        lines.append("Replay columns: mean absolute error (%) of the whole-run means over the replayed experiments "
                     "(`e2e` marks the lowest E2E error).")
        lines += [f"- {line}" for line in outside_lines(outside or {})]
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m discovery.review", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=None, help="run directory (default: the latest under results/)")
    parser.add_argument("--experiments", nargs="+", default=None, metavar="DIR",
                        help="replay every front member on these experiment folders (or ids) and add E2E/TTFT/ITL "
                             "error columns; `e2e` then marks the lowest E2E error")
    parser.add_argument("--calibrate-on", default=None, metavar="DIR",
                        help="fit the client overheads on this experiment before replaying (see evaluation.replay)")
    parser.add_argument("--seed", type=int, default=0, help="replay workload seed")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir) if args.run_dir else latest_run()
    if not run_dir.is_dir():
        raise StepMLError(f"run directory not found: {run_dir}")
    if args.seed < 0:
        raise StepMLError(f"--seed must be >= 0, got {args.seed}")
    hof = read_hof(run_dir)
    info = read_run_json(run_dir)
    front, eligible = reviewed_front(run_dir)
    for _, row in front.iterrows():  # every formula is read (safely) before anything is replayed or written
        expr_of(row)
    outside: dict[str, str] = {}
    if args.experiments:
        from evaluation.predictors import run_range

        front, outside = replay_columns(front.drop(columns=[c for c in REPLAY_COLUMNS if c in front.columns]),
                                        args.experiments, args.calibrate_on, args.seed, run_range(run_dir))
        save_replay(run_dir, front, args.experiments, args.calibrate_on, args.seed, outside)
    marks = selections(front, eligible)
    print(f"run: {run_dir}   space: {info.get('space')}   data: {info.get('data')}")
    print(front_table(front, marks))
    for line in outside_lines(outside):
        print(line)
    plot_front(front, hof, marks, run_dir / "pareto.png", f"{run_dir.name}")
    atomic_write_text(run_dir / "report.md", report_md(run_dir, info, front, marks, outside))
    print(f"wrote {run_dir / 'pareto.png'} and {run_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    run(main, prog="discovery.review")
