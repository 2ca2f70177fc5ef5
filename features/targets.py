"""Step-time targets derived from a step table.

``duration``
    ``step.duration_us`` as recorded. In vLLM's BATCH_SUMMARY events this is the
    span of the scheduler's bookkeeping, **not** the step's wall time (median
    ~410 µs for a 70B model at batch ~50), so no formula of the batch explains it.
``cycle`` (default)
    The step's cycle time: Δ``step.ts_start_ns`` / Δ``step.id`` to the next
    sampled step of the same experiment, in µs, attributed to the earlier step.
    Gaps of one step id give exact per-step times; larger gaps give interval means.
    Rows whose gap exceeds ``max_gap`` (or the last row of an experiment) get NaN.
    The gap is kept in ``target.cycle_gap`` so it can serve as a weight.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from features.errors import StepMLError
from features.schema import TARGET_ALIASES

DEFAULT_MAX_GAP = 10


def add_targets(steps: pd.DataFrame, max_gap: int = DEFAULT_MAX_GAP, source: str = "steps") -> pd.DataFrame:
    """Return ``steps`` sorted by (experiment, step id) with the target columns added.

    Raises :class:`StepMLError` on duplicate step ids within an experiment.
    """
    if max_gap < 1:
        raise StepMLError(f"max gap must be >= 1, got {max_gap}")
    group = "experiment_id" if "experiment_id" in steps.columns else None
    order = [group, "step.id"] if group else ["step.id"]
    frame = steps.sort_values(order, kind="stable").reset_index(drop=True)
    keys = frame[order]
    dup = keys.duplicated()
    if dup.any():
        row = frame.loc[dup.idxmax()]
        where = f" in experiment {row['experiment_id']}" if group else ""
        raise StepMLError(f"{source}: duplicate step id {int(row['step.id'])}{where}")
    if "step.duration_us" in frame.columns:
        frame["target.duration_us"] = frame["step.duration_us"].to_numpy(dtype=float)
    ids = frame["step.id"].to_numpy(dtype=np.int64)
    ts = frame["step.ts_start_ns"].to_numpy(dtype=np.int64)
    same = np.ones(len(frame) - 1, dtype=bool) if len(frame) else np.zeros(0, bool)
    if group and len(frame) > 1:
        exp = frame[group].to_numpy()
        same = exp[1:] == exp[:-1]
    gap = np.full(len(frame), np.nan)
    cycle = np.full(len(frame), np.nan)
    if len(frame) > 1:
        d_id = (ids[1:] - ids[:-1]).astype(float)
        d_ts = (ts[1:] - ts[:-1]).astype(float) / 1e3
        ok = same & (d_id >= 1) & (d_id <= max_gap)
        gap[:-1] = np.where(same, d_id, np.nan)
        cycle[:-1] = np.where(ok, d_ts / np.where(d_id > 0, d_id, 1.0), np.nan)
    frame["target.cycle_us"] = cycle
    frame["target.cycle_gap"] = gap
    return frame


def target_column(name: str, columns: list[str] | pd.Index, mapped: bool = False) -> str:
    """Resolve ``cycle``/``duration``/a column name to a numeric column of the table.

    ``columns`` are the table's numeric columns. The error lists only the
    targets this table has: ``cycle`` and ``duration`` where their columns
    exist (never for a column-mapped table, which has no step timestamps).
    """
    column = TARGET_ALIASES.get(name, name)
    cols = [str(c) for c in columns]
    if column in cols:
        return column
    aliases = [a for a, c in TARGET_ALIASES.items() if c in cols]
    offered = aliases + [c for c in cols if c.startswith("target.") and c not in TARGET_ALIASES.values()
                         and c != "target.cycle_gap"]
    others = [c for c in cols if c not in offered and c not in TARGET_ALIASES.values()
              and c not in ("step.id", "target.cycle_gap")]
    others.sort(key=lambda c: "." in c)  # the table's own columns first, then canonical ones
    why = ""
    if name in TARGET_ALIASES:
        why = (f" ('{name}' needs step data: a column-mapped table has no step timestamps)" if mapped
               else f" (the data has no {column})")
    shown = ", ".join(others[:12]) + (", …" if len(others) > 12 else "")
    raise StepMLError(f"unknown target '{name}'{why}; valid: {', '.join(offered) or '-'}"
                      + (f", or a numeric column: {shown}" if others else ""))


def sampling_stats(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per-experiment characterisation of how steps were sampled.

    For each experiment: sampled rows, step-id span, the step-id gap distribution
    (share of gaps of 1, 2–10 and > 10; median and max gap), the KS statistic and
    p-value of the sampled ids against a uniform draw over the span, and the
    lag-1 autocorrelation of the exact (gap 1) cycle times.
    """
    from scipy import stats

    out: dict[str, dict[str, float]] = {}
    group = frame["experiment_id"] if "experiment_id" in frame.columns else pd.Series("all", index=frame.index)
    for exp_id, rows in frame.groupby(group, sort=True):
        rows = rows.sort_values("step.id", kind="stable")
        ids = rows["step.id"].to_numpy(dtype=float)
        gaps = np.diff(ids)
        span = ids[-1] - ids[0] if len(ids) else 0.0
        ks = stats.kstest((ids - ids[0]) / span, "uniform") if span > 0 and len(ids) > 2 else None
        cycle = rows["target.cycle_us"].to_numpy(dtype=float) if "target.cycle_us" in rows.columns else np.zeros(0)
        gap = rows["target.cycle_gap"].to_numpy(dtype=float) if "target.cycle_gap" in rows.columns else np.zeros(0)
        exact = cycle[(gap == 1) & np.isfinite(cycle)] if len(cycle) else cycle
        lag1 = float(np.corrcoef(exact[:-1], exact[1:])[0, 1]) if len(exact) > 3 and np.std(exact) > 0 else float("nan")
        out[str(exp_id)] = {
            "rows": int(len(rows)),
            "step_id_span": float(span + 1 if len(ids) else 0),
            "sampling_rate": float(len(ids) / (span + 1)) if len(ids) else float("nan"),
            "gap_median": float(np.median(gaps)) if len(gaps) else float("nan"),
            "gap_max": float(gaps.max()) if len(gaps) else float("nan"),
            "gap_share_1": float(np.mean(gaps == 1)) if len(gaps) else float("nan"),
            "gap_share_2_10": float(np.mean((gaps >= 2) & (gaps <= 10))) if len(gaps) else float("nan"),
            "gap_share_over_10": float(np.mean(gaps > 10)) if len(gaps) else float("nan"),
            "ks_uniform_stat": float(ks.statistic) if ks is not None else float("nan"),
            "ks_uniform_p": float(ks.pvalue) if ks is not None else float("nan"),
            "lag1_autocorr_exact_cycle": lag1,
        }
    return out
