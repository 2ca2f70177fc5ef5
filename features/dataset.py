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
import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from features import catalog
from features.colmap import ColumnMap, apply_colmap, load_colmap, shipped_maps
from features.errors import StepMLError, warn
from features.metadata import ExperimentMeta, arch_columns, experiment_meta, metadata_roots
from features.schema import (ANALYSIS_COLUMNS, LEAKY_COLUMNS, REQUIRED_STEP_COLUMNS, add_kv_tokens,
                             canonical_dtypes, check_values, coerce_columns)
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

TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")
COLMAP_HINT = ("not a step table? map its columns with --colmap NAME|FILE.toml "
               "(see the README's column-map section)")


def _trace_files(folder: Path) -> list[Path]:
    files = sorted(set(folder.rglob("traces.json")) | set(folder.rglob("traces.json.gz")))
    return files


def _table_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TABLE_SUFFIXES)


def _is_trace(path: Path) -> bool:
    return path.name.endswith((".json", ".json.gz"))


def data_entries(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files and folders one ``--data`` value (or several) names.

    A value is a file, a folder, a glob (``kernels/*/mlp.csv``, ``**`` for any
    depth) or a list of those (repeated ``--data``; stored in ``run.json``
    joined by :data:`os.pathsep`). A glob matching nothing and a path that does
    not exist are errors.
    """
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise StepMLError("no data given")
        out: list[Path] = []
        for item in spec:
            out += [p for p in data_entries(item) if p not in out]
        return out
    text = str(spec)
    if not text.strip():
        raise StepMLError("--data is empty")
    path = Path(text)
    if path.exists():
        return [path]
    if os.pathsep in text:
        return data_entries([part for part in text.split(os.pathsep) if part])
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        if not found:
            raise StepMLError(f"no files match {text}")
        return found
    raise StepMLError(f"data not found: {path}")


def data_label(spec: str | Path | Sequence[str | Path]) -> str:
    """How a ``--data`` value is shown (its text; several values joined by ``, ``)."""
    if isinstance(spec, (list, tuple)):
        return ", ".join(str(s) for s in spec)
    text = str(spec)
    if os.pathsep in text and not Path(text).exists():
        return ", ".join(p for p in text.split(os.pathsep) if p)
    return text


def read_steps_path(path: Path | Sequence[Path], skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read OTLP files, folders of them, or step tables into one raw step frame with ``experiment_id``."""
    from features.otlp import ReadStats, read_step_events

    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    parts = []
    for entry in paths:
        if entry.is_dir():
            files = _trace_files(entry)
            if not files:
                tables = _table_files(entry)
                if not tables:
                    raise StepMLError(f"{entry}: no traces.json, traces.json.gz or step tables below this folder")
                parts += [_read_step_table(t) for t in tables]
                continue
        elif _is_trace(entry):
            files = [entry]
        else:
            parts.append(_read_step_table(entry))
            continue
        for file in files:
            stats: list[ReadStats] = []
            frame = read_step_events(file, skip_bad_lines=skip_bad_lines, stats=stats)
            skipped = sum(s.skipped for s in stats)
            if skipped:
                warn(f"{file}: skipped {skipped} malformed line(s) of {sum(s.lines for s in stats)} "
                     "(--skip-bad-lines)")
            frame.insert(0, "experiment_id", file.parent.name)
            parts.append(frame)
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _read_step_table(path: Path) -> pd.DataFrame:
    table = read_table(path)
    missing = [c for c in REQUIRED_STEP_COLUMNS if c not in table.columns]
    if missing:
        raise StepMLError(f"{path}: missing required attribute(s): {', '.join(missing)}; {COLMAP_HINT}")
    if "experiment_id" not in table.columns:
        table.insert(0, "experiment_id", path.stem)
    return table


def read_table(path: Path) -> pd.DataFrame:
    """Read a parquet, CSV or TSV file."""
    if not path.is_file():
        raise StepMLError(f"data not found: {path}")
    if path.suffix not in TABLE_SUFFIXES:
        raise StepMLError(f"{path}: unsupported data file (expected a folder of traces, .json[.gz], .parquet, "
                          ".csv or .tsv)")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except Exception as exc:  # pyarrow and pandas raise many types for corrupt files
        raise StepMLError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from None


def _matches(cmap: ColumnMap, path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in cmap.files)


def shipped_colmap_for(path: str | Path | Sequence[str | Path]) -> ColumnMap | None:
    """The shipped column map whose ``files`` patterns match the data's table files, if any.

    ``path`` may be anything ``--data`` accepts; for a folder, the tables below
    it are considered (traces mean step data: None).
    """
    try:
        entries = data_entries(path)
    except StepMLError:
        return None
    files: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            if _trace_files(entry):
                return None
            files += _table_files(entry)
        elif not _is_trace(entry):
            files.append(entry)
    maps = [load_colmap(spec) for spec in shipped_maps().values()]
    for cmap in maps:
        if any(_matches(cmap, f) for f in files):
            return cmap
    return None


def _colmap_files(entries: list[Path], cmap: ColumnMap, auto: bool) -> list[Path]:
    """The table files a column map is applied to: files as given, folders' tables (matching ``files``)."""
    out: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            tables = _table_files(entry)
            chosen = [t for t in tables if _matches(cmap, t)] if cmap.files else tables
            if not chosen:
                raise StepMLError(f"{entry}: no table files below this folder"
                                  + (f" match column map '{cmap.name}' ({', '.join(cmap.files)})" if cmap.files else ""))
            if len(chosen) < len(tables):
                warn(f"{entry}: column map '{cmap.name}' reads {len(chosen)} of the {len(tables)} tables below "
                     f"this folder (those matching {', '.join(cmap.files)})")
            out += chosen
        elif _is_trace(entry):
            raise StepMLError(f"{entry}: a column map applies to tables (.parquet, .csv, .tsv), not to OTLP traces")
        else:
            if auto and not _matches(cmap, entry):
                raise StepMLError(f"{entry} does not match column map '{cmap.name}' ({', '.join(cmap.files)}) "
                                  "that the other files match; give --colmap for all of them")
            out.append(entry)
    return out


def _table_hardware(frame: pd.DataFrame, cmap: ColumnMap, file: Path, roots: list[Path], auto: bool) -> str | None:
    """The datasheet of one mapped file's rows: the path says so, else the map's ``hardware``.

    A map's hardware that the file path contradicts (``aiconfigurator_a100_…`` for
    an H100 map) is reported on stderr; a map picked by file name then takes the
    path's hardware, an explicit ``--colmap`` keeps its own.
    """
    from features.metadata import find_hardware, hardware_in_path

    if "hardware" in frame.columns:
        return None
    if not cmap.hardware:
        return None
    declared = find_hardware(cmap.hardware, roots).stem
    named, candidates = hardware_in_path(file.resolve(), roots)
    how = "picked by file name" if auto else "given with --colmap"
    if candidates and auto:
        raise StepMLError(f"{file}: column map '{cmap.name}' ({how}) is for {declared}, but the path names "
                          f"{' or '.join(candidates)}; give --colmap with a map that sets hardware")
    if named and named != declared:
        if auto:
            warn(f"{file}: column map '{cmap.name}' ({how}) is for {declared} but the path names {named}; "
                 f"using the {named} datasheet for hw.* (give --colmap to choose)")
            return named
        warn(f"{file}: column map '{cmap.name}' ({how}) sets hardware {declared} but the path names {named}; "
             f"keeping {declared}")
    return declared


def _join_hardware(frame: pd.DataFrame, roots: list[Path], source: str) -> pd.DataFrame:
    """``hw.*`` columns from the datasheet each row's ``hardware`` names (mapped ``hw.*`` columns win)."""
    from features.metadata import find_hardware, load_hardware

    if "hardware" not in frame.columns:
        return frame
    frame = frame.copy()
    names = frame["hardware"].astype(str)
    sheets = {name: find_hardware(name, roots) for name in sorted(set(names))}
    frame["hardware"] = names.map({k: v.stem for k, v in sheets.items()})
    specs = {k: load_hardware(v) for k, v in sheets.items()}
    for column, attr in (("hw.flops", "dense_bf16_flops"), ("hw.hbm_bw", "hbm_bytes_per_s"),
                         ("hw.interconnect_bw", "interconnect_bytes_per_s")):
        if column not in frame.columns:
            frame[column] = names.map({k: getattr(h, attr) for k, h in specs.items()}).astype(float)
    return frame


def _load_table(entries: list[Path], cmap: ColumnMap, auto: bool, target: str | None, roots: list[Path],
                source: str) -> pd.DataFrame:
    """Every mapped file's rows, concatenated in file order, with ``hardware`` and ``hw.*`` joined."""
    files = _colmap_files(entries, cmap, auto)
    extra = (target,) if target else ()
    parts = []
    for file in files:
        label = str(file) if len(files) > 1 else source
        part = apply_colmap(read_table(file), cmap, label, path=file, extra=extra)
        hardware = _table_hardware(part, cmap, file, roots, auto)
        if hardware is not None:
            part["hardware"] = hardware
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    frame["step.id"] = np.arange(len(frame), dtype=np.int64)  # file row order, files in order
    return _join_hardware(frame, roots, source)


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
            tp=int(first["tp"]) if "tp" in rows.columns else None,
            hardware=str(first["hardware"]) if "hardware" in rows.columns else None)
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


def _check_batches(frame: pd.DataFrame, source: str) -> None:
    """An experiment whose every batch is empty (no tokens scheduled) has no step time to explain."""
    if "batch.scheduled_tokens" in frame.columns:
        tokens = frame["batch.scheduled_tokens"].to_numpy(dtype=float)
    elif {"batch.prefill_tokens", "batch.decode_tokens"} <= set(frame.columns):
        tokens = frame["batch.prefill_tokens"].to_numpy(dtype=float) + frame["batch.decode_tokens"].to_numpy(dtype=float)
    else:
        return
    empty = pd.Series(tokens == 0).groupby(frame["experiment_id"].astype(str).to_numpy()).all()
    if empty.any():
        raise StepMLError(f"{source}: every batch of experiment '{empty[empty].index[0]}' is empty (0 tokens "
                          "scheduled), yet it has step times; these are idle steps, not a step table to fit")


def _validate_target(frame: pd.DataFrame, target: str, source: str, derived: bool) -> tuple[pd.DataFrame, int]:
    column = frame[target]
    if column.dtype == bool or (column.dtype == object and column.map(lambda v: isinstance(v, bool)).any()):
        raise StepMLError(f"{source}: target '{target}' holds booleans, not step times")
    try:
        values = pd.to_numeric(column, errors="raise").to_numpy(dtype=float)
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


def load_dataset(path: str | Path | Sequence[str | Path] | None = None, target: str | None = None, *,
                 max_gap: int = DEFAULT_MAX_GAP, colmap: str | Path | None = None,
                 skip_bad_lines: bool = False, experiments: Iterable[str] | None = None) -> Dataset:
    """Load data from ``path`` (or the bundled demo data) into a :class:`Dataset`.

    Parameters
    ----------
    path : str, Path, list of them, or None
        See the module docstring; a folder, a glob or several paths are read
        together (through one column map for tables). None selects the
        synthetic demo data.
    target : str, optional
        ``cycle`` (default for step data), ``duration``, or any numeric column
        (for a mapped table also a raw column of the table, read as µs).
    max_gap : int
        Largest step-id gap a cycle time may be measured over.
    colmap : str or Path, optional
        Column map for non-step tables.
    skip_bad_lines : bool
        Skip (and count, on stderr) malformed JSON lines instead of failing.
    experiments : iterable of str, optional
        Keep only these experiment ids (an unknown id lists the valid ones).
    """
    if path is None:
        from features.demo import demo_steps

        raw, source, synthetic = demo_steps(), DEMO_SOURCE, True
        roots: list[Path] = []
        cmap, auto = None, False
    else:
        entries = data_entries(path)
        source, synthetic = data_label(path), False
        base = Path(os.path.commonpath([str(e.resolve()) for e in entries]))
        roots = metadata_roots(base)
        explicit = load_colmap(colmap) if colmap is not None else None
        cmap = explicit or shipped_colmap_for(path)
        auto = explicit is None
        raw = None
    if cmap is not None:
        frame = _load_table(entries, cmap, auto, target, roots, source)
        frame = _keep_experiments(frame, experiments, source)
        frame = coerce_columns(frame, source)
        check_values(frame, source)
        _check_rows(frame, source)
        _check_batches(frame, source)
        chosen = target_column(target or "target.value_us", _numeric_columns(frame), mapped=True)
        if target and chosen == target and not target.startswith("target.") and target not in cmap.derived \
                and target not in canonical_dtypes() and not target.startswith(("arch.", "hw.")):
            warn(f"target '{target}' is a raw column of the table, read as µs; to convert its unit, make it "
                 "the column map's [target] (with unit = ...)")
        frame, dropped = _validate_target(frame, chosen, source, derived=False)
        groups = tuple(dict.fromkeys(("experiment_id",) + cmap.group_columns))
        return Dataset(frame, chosen, source, synthetic, "table", {}, (), dropped, groups, None)

    if raw is None:
        raw = read_steps_path(entries, skip_bad_lines=skip_bad_lines)
    raw = _keep_experiments(raw, experiments, source)
    excluded = tuple(c for c in raw.columns if c in LEAKY_COLUMNS or c in ANALYSIS_COLUMNS)
    raw = raw.drop(columns=[c for c in ANALYSIS_COLUMNS if c in raw.columns])
    frame = coerce_columns(raw, source)
    check_values(frame, source)
    _check_rows(frame, source)
    _check_batches(frame, source)
    frame = add_targets(frame, max_gap=max_gap, source=source)
    sampling = sampling_stats(frame)
    frame = add_kv_tokens(frame)
    frame, metas = _join_metadata(frame, roots)
    chosen = target_column(target or "cycle", _numeric_columns(frame))
    derived = chosen == "target.cycle_us"
    frame, dropped = _validate_target(frame, chosen, source, derived=derived)
    weight = "target.cycle_gap" if derived else None
    return Dataset(frame, chosen, source, synthetic, "steps", metas, excluded, dropped,
                   ("experiment_id", "model", "workload"), weight, sampling)


def _numeric_columns(frame: pd.DataFrame) -> list[str]:
    """Columns usable as a target: numeric, not boolean."""
    return [str(c) for c in frame.columns
            if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
