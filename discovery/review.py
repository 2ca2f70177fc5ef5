"""``python -m discovery.review [RUN_DIR]``: the Pareto front of a run, with selections marked.

Prints the validation front (complexity × validation MAPE) and marks
``best`` (PySR's rule: highest score among rows with loss ≤ 1.5 × the minimum),
``accuracy`` and ``knee``; writes ``pareto.png`` and ``report.md`` into the run
directory. Default: the latest run under ``results/``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from discovery.pareto import select
from discovery.rundir import latest_run, read_hof, read_run_json
from features.cli import run
from features.errors import StepMLError
from features.io import atomic_write_bytes, atomic_write_text

MARKS = ("best", "accuracy", "knee")


def front_of(hof: pd.DataFrame) -> pd.DataFrame:
    """The front rows (``front`` column; all rows when absent), sorted by complexity."""
    front = hof[hof["front"].astype(str).str.lower() == "true"] if "front" in hof.columns else hof
    if front.empty:
        raise StepMLError("the run's hall of fame has no front rows")
    return front.sort_values(["Complexity"], kind="stable").reset_index(drop=True)


def loss_column(front: pd.DataFrame) -> str:
    """Validation MAPE when present (selection uses validation only), else PySR's Loss."""
    return "val_mape" if "val_mape" in front.columns and front["val_mape"].notna().any() else "Loss"


def selections(front: pd.DataFrame) -> dict[str, int]:
    """Row index of each selection in ``front``."""
    col = loss_column(front)
    c, l = front["Complexity"].to_numpy(float), front[col].to_numpy(float)
    return {kind: select(kind, c, l) for kind in MARKS}


def pick_row(front: pd.DataFrame, pick: str) -> int:
    """``best|accuracy|knee|score`` or a row number of the front."""
    if pick.isdigit():
        k = int(pick)
        if not 0 <= k < len(front):
            raise StepMLError(f"--pick {k}: the front has rows 0..{len(front) - 1}")
        return k
    col = loss_column(front)
    return select(pick, front["Complexity"].to_numpy(float), front[col].to_numpy(float))


def front_table(front: pd.DataFrame, marks: dict[str, int]) -> str:
    """Text table of the front with selection marks."""
    tags = {i: ",".join(k for k, v in marks.items() if v == i) for i in range(len(front))}
    lines = [f"{'row':>3} {'cx':>3} {'train%':>7} {'val%':>7} {'test%':>7} {'score':>6} {'engine':<7} "
             f"{'selected':<20} formula"]
    for i, r in front.iterrows():
        lines.append(f"{i:>3} {int(r['Complexity']):>3} {float(r['Loss']) * 100:>7.2f} "
                     f"{float(r.get('val_mape', np.nan)):>7.2f} {float(r.get('test_mape', np.nan)):>7.2f} "
                     f"{float(r.get('score', np.nan)):>6.3f} {str(r.get('engine', '')):<7} {tags[i]:<20} "
                     f"{r['Equation']}")
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
    for kind, i in marks.items():
        ax.annotate(kind, (front["Complexity"].iloc[i], front[col].iloc[i]), textcoords="offset points",
                    xytext=(6, 8), fontsize=8, color="C3")
    ax.set_yscale("log")
    ax.set_xlabel("complexity")
    ax.set_ylabel("validation MAPE (%)" if col == "val_mape" else "loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def report_md(run_dir: Path, info: dict, front: pd.DataFrame, marks: dict[str, int]) -> str:
    """The review as Markdown."""
    lines = [f"# Run {run_dir.name}", "",
             f"- space: `{info.get('space')}`, engines: {', '.join(info.get('engines', []))}, seed {info.get('seed')}",
             f"- data: {info.get('data')} (hash `{info.get('data_hash')}`)"
             + (" — **SYNTHETIC demo data**" if info.get("synthetic") else ""),
             f"- target: `{info.get('target')}`, split: `{info.get('split')}` {info.get('fold') or ''}",
             f"- wall time: {info.get('wall_s')} s", "", "![front](pareto.png)", "",
             "| row | complexity | train MAPE % | val MAPE % | test MAPE % | score | selected | formula |",
             "|---:|---:|---:|---:|---:|---:|---|---|"]
    for i, r in front.iterrows():
        tag = ", ".join(k for k, v in marks.items() if v == i)
        lines.append(f"| {i} | {int(r['Complexity'])} | {float(r['Loss']) * 100:.2f} | {float(r.get('val_mape', np.nan)):.2f} "
                     f"| {float(r.get('test_mape', np.nan)):.2f} | {float(r.get('score', np.nan)):.3f} | {tag} "
                     f"| `{r['Equation']}` |")
    lines += ["", "Selections use the validation part only; test MAPE is reported, never used to choose.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m discovery.review", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=None, help="run directory (default: the latest under results/)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir) if args.run_dir else latest_run()
    if not run_dir.is_dir():
        raise StepMLError(f"run directory not found: {run_dir}")
    hof = read_hof(run_dir)
    info = read_run_json(run_dir)
    front = front_of(hof)
    marks = selections(front)
    print(f"run: {run_dir}   space: {info.get('space')}   data: {info.get('data')}")
    print(front_table(front, marks))
    plot_front(front, hof, marks, run_dir / "pareto.png", f"{run_dir.name}")
    atomic_write_text(run_dir / "report.md", report_md(run_dir, info, front, marks))
    print(f"wrote {run_dir / 'pareto.png'} and {run_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    run(main, prog="discovery.review")
