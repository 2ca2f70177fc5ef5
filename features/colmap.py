"""Load any table through a small TOML column map.

A column map says which table column feeds which canonical column (with a
unit conversion), which columns group the rows, which column is the target,
and which rows to keep, so operator tables load without code changes::

    name = "aiconfigurator-moe"
    description = "Fused MoE layer latency on H100 (vLLM 0.24)"
    group_columns = ["shape"]             # columns usable for leave-one-group-out
    experiment = "{moe_dtype}-{distribution}"   # optional format for experiment_id

    [target]
    column = "latency"                    # or columns = [...], summed
    unit = "ms"                           # converted to µs

    [features]                             # canonical column ← table column
    "batch.scheduled_tokens" = "num_tokens"
    "arch.hidden_size" = "hidden_size"

    [derived]                              # new group columns from a format string
    shape = "{hidden_size}x{inter_size}x{num_experts}x{topk}"

    [filters]                              # keep rows whose column equals (or is in) the value
    moe_dtype = "bfloat16"
    distribution = ["balanced"]

    [constants]                            # canonical columns set to a constant
    "arch.num_layers" = 1

Shipped maps live in ``features/colmaps/`` and are addressed by name
(``moe_perf``) or by path.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.errors import StepMLError

UNIT_TO_US = {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6, "ns": 1e-3}
COLMAP_DIR = Path(__file__).resolve().parent / "colmaps"


@dataclass(frozen=True)
class ColumnMap:
    """A parsed column map (see the module docstring for the TOML layout)."""

    name: str
    target: tuple[str, ...]
    target_unit: str = "us"
    features: dict[str, str] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    filters: dict[str, list[Any]] = field(default_factory=dict)
    constants: dict[str, float] = field(default_factory=dict)
    group_columns: tuple[str, ...] = ()
    experiment: str = ""
    description: str = ""
    source: str = ""


def shipped_maps() -> dict[str, Path]:
    """Names and paths of the column maps shipped with the project."""
    return {p.stem: p for p in sorted(COLMAP_DIR.glob("*.toml"))}


def resolve_map(spec: str | Path) -> Path:
    """A shipped map's name or a path to a TOML file."""
    path = Path(spec)
    if path.suffix == ".toml" and path.is_file():
        return path
    maps = shipped_maps()
    if str(spec) in maps:
        return maps[str(spec)]
    raise StepMLError(f"unknown column map '{spec}'; shipped: {', '.join(maps) or 'none'} (or a .toml path)")


def load_colmap(spec: str | Path) -> ColumnMap:
    """Parse a column map TOML file."""
    path = resolve_map(spec)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StepMLError(f"{path}: malformed TOML ({exc})") from None
    target = doc.get("target") or {}
    columns = target.get("columns") or ([target["column"]] if "column" in target else [])
    if not columns:
        raise StepMLError(f"{path}: [target] needs 'column' (or 'columns', summed)")
    unit = str(target.get("unit", "us"))
    if unit not in UNIT_TO_US:
        raise StepMLError(f"{path}: unknown target unit '{unit}'; valid: {', '.join(UNIT_TO_US)}")
    features: dict[str, str] = {}
    units: dict[str, float] = {}
    for canonical, spec_value in (doc.get("features") or {}).items():
        if isinstance(spec_value, dict):
            if "column" not in spec_value:
                raise StepMLError(f"{path}: [features] '{canonical}' needs a 'column' (and optional 'scale')")
            features[canonical] = str(spec_value["column"])
            units[canonical] = _number(spec_value.get("scale", 1.0), path, f"[features] '{canonical}' scale")
        else:
            features[canonical] = str(spec_value)
    filters = {k: (v if isinstance(v, list) else [v]) for k, v in (doc.get("filters") or {}).items()}
    constants = {k: _number(v, path, f"[constants] '{k}'") for k, v in (doc.get("constants") or {}).items()}
    return ColumnMap(
        name=str(doc.get("name", path.stem)), target=tuple(map(str, columns)), target_unit=unit,
        features=features, units=units, derived=dict(doc.get("derived") or {}), filters=filters,
        constants=constants,
        group_columns=tuple(doc.get("group_columns") or ()), experiment=str(doc.get("experiment", "")),
        description=str(doc.get("description", "")), source=str(path),
    )


def _number(value: Any, path: Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StepMLError(f"{path}: {what} must be a number, got {value!r}")
    return float(value)


def _numeric(raw: pd.DataFrame, column: str, source: str, role: str) -> pd.Series:
    """A table column as floats; values that are present but not numbers raise :class:`StepMLError`."""
    values = pd.to_numeric(raw[column], errors="coerce").astype(float)
    bad = values.isna().to_numpy() & raw[column].notna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise StepMLError(f"{source}: column '{column}' ({role}) has {int(bad.sum())} non-numeric value(s), "
                          f"first {raw[column].iloc[first]!r} at row {first}")
    return values


def _format_rows(frame: pd.DataFrame, template: str) -> pd.Series:
    import string

    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise StepMLError(f"column map format '{template}' names unknown column(s): {', '.join(missing)}")
    parts = {n: frame[n].astype(str).to_numpy() for n in names}
    return pd.Series([template.format(**{n: parts[n][i] for n in names}) for i in range(len(frame))],
                     index=frame.index, dtype=object)


def apply_colmap(table: pd.DataFrame, cmap: ColumnMap, source: str = "table") -> pd.DataFrame:
    """Turn a raw table into canonical columns through ``cmap``.

    Unknown columns named by the map, and non-numeric values in a mapped feature or
    target column, raise :class:`StepMLError`. The result has the mapped canonical
    columns, derived group columns, filter columns, ``group_columns`` taken as they
    are from the table, ``experiment_id``, and the target in µs as ``target.value_us``
    (also the default target of such tables).
    """
    produced = set(cmap.features) | set(cmap.constants) | set(cmap.derived) | {"experiment_id", "step.id"}
    raw_groups = [c for c in cmap.group_columns if c not in produced]
    needed = set(cmap.features.values()) | set(cmap.filters) | set(cmap.target) | set(raw_groups)
    missing = sorted(c for c in needed if c not in table.columns)
    if missing:
        raise StepMLError(f"{source}: column map '{cmap.name}' names unknown column(s): "
                          f"{', '.join(missing)}; the table has: {', '.join(map(str, table.columns))}")
    keep = np.ones(len(table), dtype=bool)
    for column, allowed in cmap.filters.items():
        keep &= table[column].isin(allowed).to_numpy()
    raw = table.loc[keep].reset_index(drop=True)
    if raw.empty:
        raise StepMLError(f"{source}: column map '{cmap.name}' filters left no rows")
    out = pd.DataFrame(index=raw.index)
    for canonical, column in cmap.features.items():
        out[canonical] = _numeric(raw, column, source, f"feature '{canonical}'") * cmap.units.get(canonical, 1.0)
    for canonical, value in cmap.constants.items():
        out[canonical] = value
    for name, template in cmap.derived.items():
        out[name] = _format_rows(raw, template)
    for column in list(cmap.filters) + raw_groups:
        if column not in out.columns:
            out[column] = raw[column].to_numpy()
    out["experiment_id"] = _format_rows(raw, cmap.experiment) if cmap.experiment else cmap.name
    out["step.id"] = np.arange(len(raw), dtype=np.int64)
    value = sum(_numeric(raw, c, source, "target") for c in cmap.target)
    out["target.value_us"] = value * UNIT_TO_US[cmap.target_unit]
    return out
