"""Run directories: ``results/<run-id>/`` with ``hall_of_fame.csv``, ``run.json`` and a checkpoint.

Every file is written atomically. ``hall_of_fame.csv`` starts with PySR's
columns (``Complexity,Loss,Equation``) so PySR users read it as they would
PySR's, then ``score, val_mape, test_mape, mspe, n_constants, sympy, engine``
and ``front, provenance``. Rows are sorted by complexity, then validation MAPE,
then equation; floats are written with ``repr`` so equal runs give equal bytes.
"""
from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sympy

from features.errors import StepMLError
from features.io import atomic_write_bytes, atomic_write_json, atomic_write_text

HOF_COLUMNS = ("Complexity", "Loss", "Equation", "score", "val_mape", "test_mape", "mspe", "n_constants",
               "sympy", "engine", "front", "provenance")
RESULTS_DIR = Path("results")
CHECKPOINT = "checkpoint.pkl"


@dataclass(frozen=True)
class HofRow:
    """One rescored candidate as written to ``hall_of_fame.csv``."""

    complexity: int
    loss: float
    equation: str
    score: float
    val_mape: float
    test_mape: float
    mspe: float
    n_constants: int
    sympy: str
    engine: str
    front: bool
    provenance: str


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "" if v != v else repr(v)
    text = str(value)
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def hof_csv(rows: list[HofRow]) -> str:
    """The hall of fame as CSV text (deterministic bytes)."""
    lines = [",".join(HOF_COLUMNS)]
    for r in rows:
        lines.append(",".join(_fmt(v) for v in (r.complexity, r.loss, r.equation, r.score, r.val_mape, r.test_mape,
                                                r.mspe, r.n_constants, r.sympy, r.engine, r.front, r.provenance)))
    return "\n".join(lines) + "\n"


def write_hof(run_dir: Path, rows: list[HofRow]) -> Path:
    """Write ``hall_of_fame.csv`` atomically."""
    return atomic_write_text(run_dir / "hall_of_fame.csv", hof_csv(rows))


def read_hof(run_dir: Path) -> pd.DataFrame:
    """Read a run's hall of fame (one-line error when missing or malformed)."""
    path = Path(run_dir) / "hall_of_fame.csv"
    if not path.is_file():
        raise StepMLError(f"{run_dir}: no hall_of_fame.csv (not a run directory?)")
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas raises several types for broken CSVs
        raise StepMLError(f"{path}: cannot read ({exc})") from None
    missing = [c for c in ("Complexity", "Loss", "Equation") if c not in table.columns]
    if missing:
        raise StepMLError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def expr_of(row: pd.Series) -> sympy.Expr:
    """The sympy expression of a hall-of-fame row (exact, from its ``sympy`` srepr column)."""
    text = row.get("sympy")
    source = text if isinstance(text, str) and text else str(row["Equation"])
    try:
        return sympy.sympify(source)
    except (sympy.SympifyError, SyntaxError, TypeError) as exc:
        raise StepMLError(f"cannot read formula {source!r} ({exc})") from None


def write_run_json(run_dir: Path, info: dict[str, Any]) -> Path:
    """Write ``run.json`` atomically (sorted keys)."""
    return atomic_write_json(run_dir / "run.json", info)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """Read ``run.json``."""
    from features.io import read_json

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise StepMLError(f"{run_dir}: no run.json (not a run directory?)")
    return read_json(path, "run.json")


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Pickle the engine state atomically (a SIGKILL loses at most the generation under way)."""
    return atomic_write_bytes(run_dir / CHECKPOINT, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last checkpoint, or None."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return pickle.loads(path.read_bytes())
    except Exception as exc:  # a truncated pickle cannot happen with atomic writes, but be clear
        raise StepMLError(f"{path}: unreadable checkpoint ({exc})") from None


def latest_run(results: Path = RESULTS_DIR) -> Path:
    """The most recent run directory under ``results`` (by run.json mtime)."""
    runs = [p.parent for p in Path(results).glob("*/run.json")]
    if not runs:
        raise StepMLError(f"no runs under {results}/; run `python -m discovery.search --space NAME` first")
    return max(runs, key=lambda p: ((p / "run.json").stat().st_mtime, p.name))


def package_versions() -> dict[str, str]:
    """Versions of the packages a run depends on."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "pandas", "scipy", "scikit-learn", "sympy", "deap", "pyoperon", "pysr", "dask"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
