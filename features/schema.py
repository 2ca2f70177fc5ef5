"""The canonical step table: column names, dtypes and validation.

Every loader returns a :class:`pandas.DataFrame` with these columns (those
that the source has), so engines, the harness, replay and export consume one
tidy table.

Column groups
-------------
``step.*, queue.*, batch.*, kv.*``
    The attributes of vLLM's ``step.BATCH_SUMMARY`` trace event, named as in
    the trace.
``batch.decode_context_sum, batch.prefill_context_sum``
    Per-request context sums, when known (simulator output): Σ context over
    decode requests, and Σ over prefill chunks of ``new·ctx + new·(new+1)/2``
    (the attention work of the chunk).
``kv.tokens_in_use``
    KV tokens held by the batch. Derived as ``kv.usage_gpu_ratio ×
    kv.blocks_total_gpu × block_size`` when only the summary is known.
``experiment_id, model, workload, tp``
    Group columns.
``arch.*, hw.*``
    Per-experiment model architecture and hardware, joined from metadata
    (or mapped from a kernel table's columns).
``op.flops, op.bytes, op.weight_bytes``
    An operator table's own work per call on one GPU: FLOPs, HBM bytes and the
    weights' part of those bytes (a column map derives them from the table's columns; the ``operator``
    features of :mod:`features.catalog` put them at the datasheet's peak rates).
``target.*``
    Targets in µs: ``target.duration_us`` (``step.duration_us`` as recorded),
    ``target.cycle_us`` (cycle time, NaN where undefined) and
    ``target.cycle_gap`` (the step-id gap it was measured over).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from features.errors import StepMLError

KV_BLOCK_SIZE = 16

#: BATCH_SUMMARY attributes, in trace order, with their dtype ("int" or "float").
BATCH_SUMMARY_COLUMNS: dict[str, str] = {
    "step.id": "int",
    "step.ts_start_ns": "int",
    "step.ts_end_ns": "int",
    "step.duration_us": "int",
    "queue.running_depth": "int",
    "queue.waiting_depth": "int",
    "batch.num_prefill_reqs": "int",
    "batch.num_decode_reqs": "int",
    "batch.scheduled_tokens": "int",
    "batch.prefill_tokens": "int",
    "batch.decode_tokens": "int",
    "batch.num_finished": "int",
    "batch.num_preempted": "int",
    "kv.usage_gpu_ratio": "float",
    "kv.blocks_total_gpu": "int",
    "kv.blocks_free_gpu": "int",
}

#: Attributes a step record must have to be usable at all.
REQUIRED_STEP_COLUMNS: tuple[str, ...] = (
    "step.id",
    "step.ts_start_ns",
    "batch.prefill_tokens",
    "batch.decode_tokens",
)

#: Optional per-request aggregates (simulator output or richer traces).
EXTRA_STEP_COLUMNS: dict[str, str] = {
    "batch.decode_context_sum": "float",
    "batch.prefill_context_sum": "float",
    "kv.tokens_in_use": "float",
}

#: An operator table's work per call on one GPU (a column map derives them; the ``operator`` features read them).
OPERATOR_COLUMNS: dict[str, str] = {
    "op.flops": "float",
    "op.bytes": "float",
    "op.weight_bytes": "float",
}

GROUP_COLUMNS: dict[str, str] = {
    "experiment_id": "str",
    "model": "str",
    "workload": "str",
    "tp": "int",
}

TARGET_COLUMNS: dict[str, str] = {
    "target.duration_us": "float",
    "target.cycle_us": "float",
    "target.cycle_gap": "float",
}

#: Columns that are known only after the step ran or encode its timing: never features.
LEAKY_COLUMNS: tuple[str, ...] = (
    "step.ts_start_ns",
    "step.ts_end_ns",
    "step.duration_us",
    "batch.num_finished",
    "batch.num_preempted",
)

#: Columns of earlier analyses found in some files; dropped on load, never ground truth.
ANALYSIS_COLUMNS: tuple[str, ...] = ("cycle_time_us", "matched_iti_count", "cycle_time_ratio")

#: Target names accepted by ``--target`` and the column each one reads.
TARGET_ALIASES: dict[str, str] = {
    "cycle": "target.cycle_us",
    "duration": "target.duration_us",
}


@dataclass(frozen=True)
class ColumnSpec:
    """One canonical column: name, dtype kind and a description."""

    name: str
    kind: str
    description: str = ""


def canonical_dtypes() -> dict[str, str]:
    """All canonical column names mapped to their dtype kind (``int``, ``float``, ``str``)."""
    out: dict[str, str] = {}
    for table in (BATCH_SUMMARY_COLUMNS, EXTRA_STEP_COLUMNS, OPERATOR_COLUMNS, GROUP_COLUMNS, TARGET_COLUMNS):
        out.update(table)
    return out


#: Step columns that count something: never negative.
NON_NEGATIVE_COLUMNS: tuple[str, ...] = tuple(
    c for c in list(BATCH_SUMMARY_COLUMNS) + list(EXTRA_STEP_COLUMNS)
    if c.startswith(("queue.", "batch.", "kv.")))

#: Columns holding a fraction in [0, 1].
RATIO_COLUMNS: tuple[str, ...] = ("kv.usage_gpu_ratio",)

_INT64_LIMIT = 2.0 ** 63


def coerce_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Cast known columns to their canonical dtypes; name the first bad column in an error.

    Integers become ``int64`` (the column must have no missing values, no
    fractions, no booleans and fit in int64), floats ``float64`` (no
    booleans), strings ``object`` (no missing values in group columns).
    Unknown columns are kept as they are.
    """
    kinds = canonical_dtypes()
    out = frame.copy()
    for name in out.columns:
        kind = kinds.get(name)
        if kind is None and name.startswith(("arch.", "hw.")):
            kind = "float"
        if kind is None:
            continue
        column = out[name]
        try:
            if kind in ("int", "float"):
                _refuse_booleans(column, name, source)
            if kind == "int":
                numeric = pd.to_numeric(column, errors="raise")
                if numeric.isna().any():
                    raise StepMLError(
                        f"{source}: column '{name}' has {int(numeric.isna().sum())} missing values")
                if numeric.dtype.kind in "fO":
                    values = numeric.to_numpy(dtype=float)
                    fractional = ~np.isfinite(values) | (values != np.floor(values))
                    if fractional.any():
                        first = int(np.flatnonzero(fractional)[0])
                        raise StepMLError(f"{source}: column '{name}' must hold integers; "
                                          f"row {first} has {float(values[first])!r}")
                    huge = np.abs(values) >= _INT64_LIMIT
                    if huge.any():
                        first = int(np.flatnonzero(huge)[0])
                        raise StepMLError(f"{source}: column '{name}' row {first} has {float(values[first])!r}, "
                                          "beyond the int64 range")
                out[name] = numeric.astype("int64")
            elif kind == "float":
                out[name] = pd.to_numeric(column, errors="raise").astype("float64")
            else:
                missing = column.isna().to_numpy()
                if missing.any():
                    raise StepMLError(f"{source}: column '{name}' has {int(missing.sum())} missing values "
                                      f"(first at row {int(np.flatnonzero(missing)[0])})")
                out[name] = column.astype(str)
        except (ValueError, TypeError, OverflowError) as exc:
            raise StepMLError(f"{source}: column '{name}' is not {kind}: {exc}") from None
    return out


def _refuse_booleans(column: pd.Series, name: str, source: str) -> None:
    """Booleans are not counts: ``true`` in a token column is an error, not 1."""
    if column.dtype == bool or str(column.dtype) == "boolean":
        raise StepMLError(f"{source}: column '{name}' holds booleans, not numbers")
    if column.dtype == object:
        flags = column.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
        if flags.any():
            first = int(np.flatnonzero(flags)[0])
            raise StepMLError(f"{source}: column '{name}' row {first} holds the boolean "
                              f"{column.iloc[first]!r}, not a number")


def check_values(frame: pd.DataFrame, source: str) -> None:
    """Refuse values no server produces: negative counts, KV ratios outside [0, 1], non-finite numbers.

    Step columns (``queue.*``, ``batch.*``, ``kv.*``) must be finite;
    ``arch.*``/``hw.*`` may be missing (NaN) but not infinite or negative.

    Raises
    ------
    StepMLError
        Naming the column, the number of bad rows and the first one.
    """
    for name in frame.columns:
        if not (name in NON_NEGATIVE_COLUMNS or name.startswith(("arch.", "hw."))):
            continue
        values = frame[name].to_numpy(dtype=float)
        # arch.*/hw.* may be missing (NaN) where metadata is unknown, never infinite
        bad = np.isinf(values) if name.startswith(("arch.", "hw.")) else ~np.isfinite(values)
        what = "non-finite"
        if not bad.any():
            if name in RATIO_COLUMNS:
                bad, what = (values < 0) | (values > 1), "outside [0, 1]"
            else:
                bad, what = values < 0, "negative"
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise StepMLError(f"{source}: column '{name}' has {int(bad.sum())} {what} value(s), "
                              f"first {float(values[first])!r} at row {first}")


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str], source: str) -> None:
    """Raise a one-line error naming the first required column that is missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StepMLError(f"{source}: missing required attribute(s): {', '.join(missing)}")


def add_kv_tokens(frame: pd.DataFrame, block_size: int = KV_BLOCK_SIZE) -> pd.DataFrame:
    """Add ``kv.tokens_in_use`` from the KV usage summary when it is not already known."""
    if "kv.tokens_in_use" in frame.columns:
        return frame
    if {"kv.usage_gpu_ratio", "kv.blocks_total_gpu"} <= set(frame.columns):
        frame = frame.copy()
        frame["kv.tokens_in_use"] = (
            frame["kv.usage_gpu_ratio"].to_numpy(float)
            * frame["kv.blocks_total_gpu"].to_numpy(float) * block_size)
    return frame


def describe_columns() -> Mapping[str, ColumnSpec]:
    """The documented canonical columns (used by the data report)."""
    docs = {
        "kv.tokens_in_use": "KV tokens held (usage ratio × total blocks × 16 when only the summary is known)",
        "batch.decode_context_sum": "Σ context length over decode requests",
        "batch.prefill_context_sum": "Σ over prefill chunks of new·ctx + new·(new+1)/2",
        "target.duration_us": "step.duration_us as recorded (not the step's wall time)",
        "target.cycle_us": "Δts_start / Δstep.id to the next sampled step (µs)",
        "target.cycle_gap": "step-id gap the cycle time was measured over",
        "op.flops": "the operator's FLOPs per call on one GPU (operator tables)",
        "op.bytes": "the operator's HBM bytes per call on one GPU (operator tables)",
        "op.weight_bytes": "the part of op.bytes that is the weights (stored operands) one GPU reads",
    }
    return {name: ColumnSpec(name, kind, docs.get(name, "")) for name, kind in canonical_dtypes().items()}


def finite_positive(values: np.ndarray) -> np.ndarray:
    """Boolean mask of finite, strictly positive entries."""
    values = np.asarray(values, dtype=float)
    return np.isfinite(values) & (values > 0)
