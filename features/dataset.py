"""One entry point from a path (or nothing) to a tidy, validated :class:`Dataset`.

``load_dataset(None)``
    The bundled synthetic demo data (:mod:`features.demo`).
``load_dataset("dir/")``
    Every ``traces.json`` / ``traces.json.gz`` below the folder (OTLP step
    events); the experiment id is the file's parent folder name.
``load_dataset("x.json[.gz]")``
    One OTLP file.
``load_dataset("x.parquet" | "x.csv")``
    A step table with BATCH_SUMMARY column names, or any table through a TOML
    column map (``colmap=`` a shipped map name or a path; shipped maps are
    picked automatically by their ``files`` patterns).

Experiment metadata (model architecture, hardware, server config) is joined
as ``arch.*``/``hw.*`` columns; the targets are derived (:mod:`features.targets`).
"""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from features import catalog
from features.colmap import ColumnMap, apply_colmap, load_colmap, shipped_maps
from features.errors import StepMLError
from features.metadata import ExperimentMeta, arch_columns, experiment_meta, metadata_roots
from features.schema import (ANALYSIS_COLUMNS, LEAKY_COLUMNS, REQUIRED_STEP_COLUMNS,
                             add_kv_tokens, coerce_columns, require_columns)
from features.targets import DEFAULT_MAX_GAP, add_targets, sampling_stats, target_column

MIN_ROWS_PER_EXPERIMENT = 3
DEMO_SOURCE = "demo (synthetic)"


@dataclass(frozen=True)
class Dataset:
    """A validated table of steps (or kernel measurements) with one chosen target.

    Attributes
    ----------
    frame : DataFrame
        Canonical columns; only rows with a valid (finite, > 0) target.
    target : str
        The target column (µs).
    source : str
        Where the data came from (a path, or ``demo (synthetic)``).
    synthetic : bool
        True for generated data; shown wherever the data is reported.
    kind : str
        ``steps`` (BATCH_SUMMARY data) or ``table`` (column-mapped operator table).
    experiments : dict
        Experiment id → :class:`~features.metadata.ExperimentMeta`.
    excluded : tuple
        Leaky, timing and analysis columns found in the input and kept out of features.
    dropped : int
        Rows without a defined target (e.g. the last sampled step of an experiment).
    group_columns : tuple
        Columns usable for leave-one-group-out splits.
    weight_column : str or None
        ``target.cycle_gap`` for the cycle target, else None.
    """

    frame: pd.DataFrame
    target: str
    source: str
    synthetic: bool = False
    kind: str = "steps"
    experiments: dict[str, ExperimentMeta] = field(default_factory=dict, compare=False)
    excluded: tuple[str, ...] = ()
    dropped: int = 0
    group_columns: tuple[str, ...] = ("experiment_id", "model", "workload")
    weight_column: str | None = None
    sampling: dict[str, dict[str, float]] = field(default_factory=dict, compare=False)

    @property
    def y(self) -> np.ndarray:
        """The target as a float array."""
        return self.frame[self.target].to_numpy(dtype=float)

    @property
    def weights(self) -> np.ndarray | None:
        """Row weights (the cycle-time gap) or None."""
        if self.weight_column and self.weight_column in self.frame.columns:
            return self.frame[self.weight_column].to_numpy(dtype=float)
        return None

    def feature_names(self, allow: Iterable[str] = ("simulator", "trace")) -> list[str]:
        """Non-leaky features this data can compute (never one built from the target column)."""
        return [f.name for f in catalog.available_features(self.frame.columns, allow) if self.target not in f.inputs]

    def features(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Feature arrays (full length) by name."""
        values = catalog.compute_features(self.frame, names)
        n = len(self.frame)
        return {k: np.broadcast_to(v, (n,)).astype(float) for k, v in values.items()}

    def content_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the canonical columns and target: keys splits and runs."""
        cols = sorted(c for c in self.frame.columns if not c.startswith("_"))
        digest = hashlib.sha256(self.target.encode())
        digest.update(pd.util.hash_pandas_object(self.frame[cols], index=False).to_numpy().tobytes())
        digest.update(",".join(cols).encode())
        return digest.hexdigest()[:16]

    @property
    def label(self) -> str:
        """The source, marked synthetic when it is."""
        return f"{self.source} [SYNTHETIC]" if self.synthetic and "synthetic" not in self.source else self.source


# -- readers ---------------------------------------------------------------------------------

def _trace_files(folder: Path) -> list[Path]:
    files = sorted(set(folder.rglob("traces.json")) | set(folder.rglob("traces.json.gz")))
    return files


def read_steps_path(path: Path, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read OTLP files or a step table into one raw step frame with ``experiment_id``."""
    from features.otlp import read_step_events

    if path.is_dir():
        files = _trace_files(path)
        if not files:
            raise StepMLError(f"{path}: no traces.json or traces.json.gz files below this folder")
    elif path.name.endswith((".json", ".json.gz")):
        files = [path]
    else:
        files = []
    if files:
        parts = []
        for file in files:
            frame = read_step_events(file, skip_bad_lines=skip_bad_lines)
            frame.insert(0, "experiment_id", file.parent.name)
            parts.append(frame)
        return pd.concat(parts, ignore_index=True)
    table = read_table(path)
    require_columns(table, REQUIRED_STEP_COLUMNS, str(path))
    if "experiment_id" not in table.columns:
        table.insert(0, "experiment_id", path.stem)
    return table


def read_table(path: Path) -> pd.DataFrame:
    """Read a parquet or CSV file."""
    if not path.is_file():
        raise StepMLError(f"data not found: {path}")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except Exception as exc:  # pyarrow and pandas raise many types for corrupt files
        raise StepMLError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from None
    raise StepMLError(f"{path}: unsupported data file (expected a folder of traces, .json[.gz], .parquet or .csv)")


def shipped_colmap_for(path: Path) -> ColumnMap | None:
    """The shipped column map whose ``files`` patterns match the file name, if any."""
    for spec in shipped_maps().values():
        cmap = load_colmap(spec)
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in _patterns(spec)):
            return cmap
    return None


def _patterns(spec: Path) -> list[str]:
    import tomllib

    return list(tomllib.loads(spec.read_text()).get("files", []))


# -- assembly --------------------------------------------------------------------------------

def _join_metadata(frame: pd.DataFrame, roots: list[Path]) -> tuple[pd.DataFrame, dict[str, ExperimentMeta]]:
    metas: dict[str, ExperimentMeta] = {}
    per_exp: dict[str, dict[str, float]] = {}
    for exp_id, rows in frame.groupby("experiment_id", sort=True):
        first = rows.iloc[0]
        meta = experiment_meta(
            str(exp_id), roots,
            model=str(first["model"]) if "model" in rows.columns else None,
            workload=str(first["workload"]) if "workload" in rows.columns else None,
            tp=int(first["tp"]) if "tp" in rows.columns else None)
        metas[str(exp_id)] = meta
        per_exp[str(exp_id)] = arch_columns(meta.arch, meta.hardware, meta.tp)
    frame = frame.copy()
    for col, value in (("model", "model"), ("workload", "workload"), ("tp", "tp")):
        if col not in frame.columns:
            frame[col] = frame["experiment_id"].map({k: getattr(m, value) for k, m in metas.items()})
    names = sorted({c for cols in per_exp.values() for c in cols})
    exp = frame["experiment_id"].astype(str)
    for name in names:
        if name not in frame.columns:
            frame[name] = exp.map({k: v.get(name, np.nan) for k, v in per_exp.items()}).astype(float)
    return frame, metas


def _keep_experiments(frame: pd.DataFrame, experiments: Iterable[str] | None, source: str) -> pd.DataFrame:
    if experiments is None:
        return frame
    wanted = [str(e) for e in experiments]
    have = set(frame["experiment_id"].astype(str))
    unknown = [e for e in wanted if e not in have]
    if unknown:
        raise StepMLError(f"{source}: unknown experiment '{unknown[0]}'; valid: {', '.join(sorted(have))}")
    return frame.loc[frame["experiment_id"].astype(str).isin(wanted)].reset_index(drop=True)


def _check_rows(frame: pd.DataFrame, source: str) -> None:
    counts = frame.groupby("experiment_id").size()
    small = counts[counts < MIN_ROWS_PER_EXPERIMENT]
    if len(small):
        raise StepMLError(f"{source}: experiment '{small.index[0]}' has {int(small.iloc[0])} rows "
                          f"(at least {MIN_ROWS_PER_EXPERIMENT} needed)")


def _validate_target(frame: pd.DataFrame, target: str, source: str, derived: bool) -> tuple[pd.DataFrame, int]:
    try:
        values = pd.to_numeric(frame[target], errors="raise").to_numpy(dtype=float)
    except (ValueError, TypeError):
        raise StepMLError(f"{source}: target '{target}' is not numeric") from None
    nan = ~np.isfinite(values)
    nonpos = np.isfinite(values) & (values <= 0)
    if nonpos.any():
        raise StepMLError(f"{source}: target '{target}' has {int(nonpos.sum())} zero or negative values "
                          f"(first at row {int(np.flatnonzero(nonpos)[0])})")
    if nan.any() and not derived:
        raise StepMLError(f"{source}: target '{target}' has {int(nan.sum())} missing/NaN values "
                          f"(first at row {int(np.flatnonzero(nan)[0])})")
    kept = frame.loc[~nan].reset_index(drop=True)
    if kept.empty:
        raise StepMLError(f"{source}: no rows with a valid '{target}' target")
    kept[target] = values[~nan]
    _check_rows(kept, f"{source} (rows with a valid '{target}' target)")
    return kept, int(nan.sum())


def load_dataset(path: str | Path | None = None, target: str | None = None, *,
                 max_gap: int = DEFAULT_MAX_GAP, colmap: str | Path | None = None,
                 skip_bad_lines: bool = False, experiments: Iterable[str] | None = None) -> Dataset:
    """Load data from ``path`` (or the bundled demo data) into a :class:`Dataset`.

    Parameters
    ----------
    path : str, Path or None
        See the module docstring. None selects the synthetic demo data.
    target : str, optional
        ``cycle`` (default for step data), ``duration``, or a column name.
    max_gap : int
        Largest step-id gap a cycle time may be measured over.
    colmap : str or Path, optional
        Column map for non-step tables.
    skip_bad_lines : bool
        Skip (and count) malformed JSON lines instead of failing.
    experiments : iterable of str, optional
        Keep only these experiment ids (an unknown id lists the valid ones).
    """
    if path is None:
        from features.demo import demo_steps

        raw, source, synthetic = demo_steps(), DEMO_SOURCE, True
        roots: list[Path] = []
        cmap = None
    else:
        p = Path(path)
        if not p.exists():
            raise StepMLError(f"data not found: {p}")
        source, synthetic, roots = str(p), False, metadata_roots(p)
        cmap = load_colmap(colmap) if colmap is not None else (shipped_colmap_for(p) if p.is_file() else None)
        raw = None
    if cmap is not None:
        table = read_table(Path(path))
        frame = _keep_experiments(apply_colmap(table, cmap, source), experiments, source)
        frame = coerce_columns(frame, source)
        _check_rows(frame, source)
        chosen = target_column(target or "target.value_us", frame.columns)
        frame, dropped = _validate_target(frame, chosen, source, derived=False)
        groups = tuple(dict.fromkeys(("experiment_id",) + cmap.group_columns))
        return Dataset(frame, chosen, source, synthetic, "table", {}, (), dropped, groups, None)

    if raw is None:
        raw = read_steps_path(Path(path), skip_bad_lines=skip_bad_lines)
    raw = _keep_experiments(raw, experiments, source)
    excluded = tuple(c for c in raw.columns if c in LEAKY_COLUMNS or c in ANALYSIS_COLUMNS)
    raw = raw.drop(columns=[c for c in ANALYSIS_COLUMNS if c in raw.columns])
    frame = coerce_columns(raw, source)
    _check_rows(frame, source)
    frame = add_targets(frame, max_gap=max_gap, source=source)
    sampling = sampling_stats(frame)
    frame = add_kv_tokens(frame)
    frame, metas = _join_metadata(frame, roots)
    chosen = target_column(target or "cycle", frame.columns)
    derived = chosen == "target.cycle_us"
    frame, dropped = _validate_target(frame, chosen, source, derived=derived)
    weight = "target.cycle_gap" if derived else None
    return Dataset(frame, chosen, source, synthetic, "steps", metas, excluded, dropped,
                   ("experiment_id", "model", "workload"), weight, sampling)
