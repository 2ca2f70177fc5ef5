"""Run directories: ``results/<run-id>/`` with ``hall_of_fame.csv``, ``run.json``, splits and a checkpoint.

Every file is written atomically. ``hall_of_fame.csv`` starts with PySR's
columns (``Complexity,Loss,Equation``) so PySR users read it as they would
PySR's, then the rest; one row per distinct candidate:

``Complexity``   operator-table complexity (:func:`search_spaces.objective.complexity`)
``Loss``         the search loss on the training part, **in percent**: mean relative
                 error ×100 (weighted for ``relative_weighted`` spaces), times
                 ``1 + 10·violation`` in ``penalise`` spaces
                 (:mod:`search_spaces.objective`)
``Equation``     the formula (sympy's ``sstr``)
``score``        PySR's score along the validation front (empty off the front)
``val_mape``     validation MAPE, percent (selection uses only this)
``test_mape``    test MAPE, percent (reported, never used to choose)
``mspe``         validation mean signed percentage error, percent
``n_constants``  numeric constants in the formula
``sympy``        the exact formula (``sympy.srepr``; read back with the whitelist parser)
``engine``       ``deap``, ``operon`` or ``pysr``
``front``        ``true`` on the non-dominated set in (complexity, val_mape)
``provenance``   where it came from (``deap gen 12 island 1``, ``seed``, ``pysr import …``)

Every error column is a percentage. Runs written before ``run.json`` carried
``"loss_unit": "percent"`` stored ``Loss`` as a fraction; :func:`read_hof`
converts them. Rows are sorted by complexity, then validation MAPE, then
equation; floats are written with ``repr`` so equal runs give equal bytes.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import StepMLError
from features.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    import sympy

HOF_COLUMNS = ("Complexity", "Loss", "Equation", "score", "val_mape", "test_mape", "mspe", "n_constants",
               "sympy", "engine", "front", "provenance")
RESULTS_DIR = Path("results")
#: ``run.json`` key and value recording that ``Loss`` is a percentage (older runs: a fraction).
LOSS_UNIT = ("loss_unit", "percent")
CHECKPOINT = "checkpoint.json"
#: The pickle checkpoint of earlier versions: never loaded (unpickling runs code).
LEGACY_CHECKPOINT = "checkpoint.pkl"


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

    def expression(self) -> "sympy.Expr":
        """The exact formula (from the ``sympy`` column, read with the whitelist parser)."""
        return expr_of({"sympy": self.sympy, "Equation": self.equation})  # type: ignore[arg-type]


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


def read_hof(run_dir: Path) -> "pd.DataFrame":
    """Read a run's hall of fame; a missing, truncated or malformed file is a one-line error; ``Loss`` in percent.

    Checked: the file ends with a newline (every writer, ours and PySR's, ends
    it so; a file cut mid-row does not), every row has every column,
    ``Complexity`` holds whole numbers >= 0, ``Loss`` and the metric columns hold
    numbers (empty, ``inf`` or ``nan`` allowed for the metrics), ``Equation`` is
    never empty. A run of an earlier version (no ``loss_unit`` in ``run.json``)
    had ``Loss`` as a fraction; it is converted.
    """
    import pandas as pd

    path = Path(run_dir) / "hall_of_fame.csv"
    if not path.is_file():
        raise StepMLError(f"{run_dir}: no hall_of_fame.csv (not a run directory?)")
    data = path.read_bytes()
    if not data.strip():
        raise StepMLError(f"{path}: empty")
    if not data.endswith(b"\n"):
        raise StepMLError(f"{path}: truncated (the last row is not complete); the run was cut while writing, "
                          "or the file was cut when copied")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for broken CSVs
        raise StepMLError(f"{path}: cannot read ({exc})") from None
    missing = [c for c in ("Complexity", "Loss", "Equation") if c not in table.columns]
    if missing:
        raise StepMLError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise StepMLError(f"{path}: no rows")
    short = _short_rows(data.decode("utf-8", errors="replace"), len(table.columns))
    if short == 0:
        raise StepMLError(f"{path}: not a well-formed CSV file (a line break inside an unquoted cell)")
    if short is not None:
        raise StepMLError(f"{path}: row {short} has fewer cells than the header (cut or edited)")
    out = table.copy()
    complexity = pd.to_numeric(table["Complexity"], errors="coerce")
    bad = complexity.isna() | (complexity < 0) | (complexity != complexity.round())
    if bad.any():
        raise StepMLError(f"{path}: Complexity of row {int(np.flatnonzero(bad)[0]) + 1} is "
                          f"{table['Complexity'].iloc[int(np.flatnonzero(bad)[0])]!r}, not a whole number >= 0")
    out["Complexity"] = complexity.astype("int64")
    for column in ("Loss",) + tuple(c for c in ("score", "val_mape", "test_mape", "mspe") if c in table.columns):
        text = table[column].str.strip()
        values = pd.to_numeric(text.replace({"": "nan"}), errors="coerce")
        bad = values.isna() & ~text.str.lower().isin(["", "nan"])
        if column == "Loss":
            bad |= text == ""
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise StepMLError(f"{path}: {column} of row {first + 1} is {table[column].iloc[first]!r}, not a number")
        out[column] = values.astype(float)
    if "n_constants" in table.columns:
        out["n_constants"] = pd.to_numeric(table["n_constants"], errors="coerce")
    empty = table["Equation"].str.strip() == ""
    if empty.any() and ("sympy" not in table.columns or (table.loc[empty, "sympy"].str.strip() == "").any()):
        raise StepMLError(f"{path}: row {int(np.flatnonzero(empty)[0]) + 1} has no Equation")
    if "front" in table.columns:
        flags = table["front"].str.strip().str.lower()
        if not flags.isin(["true", "false", "1", "0", "1.0", "0.0"]).all():
            first = int(np.flatnonzero(~flags.isin(["true", "false", "1", "0", "1.0", "0.0"]))[0])
            raise StepMLError(f"{path}: front of row {first + 1} is {table['front'].iloc[first]!r}, not true/false")
        out["front"] = flags.isin(["true", "1", "1.0"])
    info_path = Path(run_dir) / "run.json"
    if info_path.is_file():
        info = read_run_json(run_dir)
        if info.get(LOSS_UNIT[0]) != LOSS_UNIT[1]:  # a run of an earlier version: Loss was a fraction
            out["Loss"] = out["Loss"] * 100.0
    return out


def _short_rows(text: str, width: int) -> int | None:
    """The 1-based data row with fewer cells than the header, if any (quoted cells may span lines)."""
    import csv
    import io

    try:
        for number, cells in enumerate(csv.reader(io.StringIO(text, newline="")), start=0):
            if number and len(cells) < width:
                return number
    except csv.Error:
        return 0
    return None


def expr_of(row: "pd.Series") -> "sympy.Expr":
    """The sympy expression of a hall-of-fame row (exact, from its ``sympy`` srepr column).

    The text is read with the whitelist parser
    (:func:`search_spaces.operators.parse_formula`): a hall of fame written by
    somebody else can name only catalogue features and table operators, and
    never runs code.
    """
    from features import catalog
    from search_spaces.operators import parse_formula

    text = row.get("sympy")
    source = text if isinstance(text, str) and text.strip() else str(row.get("Equation", ""))
    return parse_formula(source, list(catalog.registry()), indexed=False)


def write_run_json(run_dir: Path, info: dict[str, Any]) -> Path:
    """Write ``run.json`` atomically (sorted keys)."""
    return atomic_write_json(run_dir / "run.json", info)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """Read ``run.json``."""
    from features.io import read_json

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise StepMLError(f"{run_dir}: no run.json (not a run directory?)")
    info = read_json(path, "run.json")
    if not isinstance(info, dict):
        raise StepMLError(f"{path}: run.json must be a JSON object, got {type(info).__name__}")
    return info


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write the engines' state as JSON, atomically (a SIGKILL loses at most the generation under way).

    JSON, not pickle: resuming a run folder somebody else wrote must not run
    their code. Engine states hold only numbers, strings, lists and dicts
    (non-finite losses are written as ``Infinity``/``NaN``, which
    :func:`json.loads` reads back).
    """
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), default=_state_default)
    return atomic_write_text(run_dir / CHECKPOINT, text + "\n")


def _state_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"checkpoint state holds a {type(value).__name__}, not JSON data")


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last checkpoint (a dict of engine states), or None when the run has none.

    Raises
    ------
    StepMLError
        When the checkpoint is not a JSON object, or only an old pickle
        checkpoint exists (it is never unpickled).
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        if (Path(run_dir) / LEGACY_CHECKPOINT).is_file():
            raise StepMLError(f"{Path(run_dir) / LEGACY_CHECKPOINT}: a pickle checkpoint of an older version is never "
                              "loaded (unpickling can run code); start a new run")
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StepMLError(f"{path}: unreadable checkpoint ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
        raise StepMLError(f"{path}: a checkpoint must be a JSON object of engine states")
    return state


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds (part of) a run: a hall of fame or a checkpoint."""
    return any((Path(run_dir) / name).exists() for name in ("hall_of_fame.csv", CHECKPOINT, LEGACY_CHECKPOINT))


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


#: Canonical columns through which a formula depends on prompt (prefill) work.
PREFILL_COLUMNS = ("batch.prefill_tokens", "batch.scheduled_tokens", "batch.num_prefill_reqs",
                   "batch.prefill_context_sum")
REPLAY_FILE = "replay.json"


def uses_prefill(expr: "sympy.Expr") -> bool:
    """Whether a formula's features read any prefill column (:data:`PREFILL_COLUMNS`)."""
    from features import catalog

    for symbol in expr.free_symbols:
        if symbol.name in catalog.registry() and set(catalog.get_feature(symbol.name).inputs) & set(PREFILL_COLUMNS):
            return True
    return False


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def reviewed_front(run_dir: Path) -> tuple["pd.DataFrame", "np.ndarray"]:
    """A run's front with the replay errors ``review --experiments`` saved, and the rows ``best`` may pick.

    A formula with no prefill dependence cannot be picked when the run's data
    contain prefill steps (``run.json`` ``data_has_prefill``): it would make
    prompts free in a simulator.
    """
    from discovery.pareto import REPLAY_COLUMNS, front_of
    from features.io import read_json

    front = front_of(read_hof(run_dir))
    path = Path(run_dir) / REPLAY_FILE
    if path.is_file():
        saved = read_json(path, "replay results")
        rows = saved.get("rows") if isinstance(saved, dict) else None
        if isinstance(rows, dict):
            import sympy

            keys = [sympy.srepr(expr_of(row)) for _, row in front.iterrows()]
            for col in REPLAY_COLUMNS:
                front[col] = [_number(rows[key].get(col)) if isinstance(rows.get(key), dict) else np.nan
                              for key in keys]
    info = read_run_json(run_dir) if (Path(run_dir) / "run.json").is_file() else {}
    eligible = np.ones(len(front), dtype=bool)
    if info.get("data_has_prefill"):
        eligible = np.array([uses_prefill(expr_of(row)) for _, row in front.iterrows()], dtype=bool)
    return front, eligible
