"""PySR's score and the selections ``best``, ``accuracy`` and ``knee`` over a front.

Pure functions over arrays and over a run's hall-of-fame table, shared by search
(writing the hall of fame), review, export (``--pick``) and replay (``RUN_DIR:ROW``). The front itself is
:func:`search_spaces.objective.pareto_mask`. Every selection reads the
validation error (``val_mape``; the training loss only where a table has none).

The rules
---------
``accuracy``
    The lowest validation error.
``best``
    Rows within the window: validation error ≤ 1.5 × the front's lowest. When
    the front was replayed (``discovery.review --experiments`` saved
    ``replay.json``), the row with the lowest replay error (E2E + TTFT + ITL)
    in the window. Otherwise PySR's rule, guarded for accuracy: the highest
    score (−Δlog(error) / Δcomplexity) among the rows in the window whose
    validation error is at most :data:`GUARD` (1.25) × the lowest validation
    error of the rows in the same or a simpler *complexity class*
    (complexities 1–5, 6–10, 11–15, … :data:`CLASS_WIDTH` = 5). So ``best``
    never takes a formula much worse than a front member of about its size:
    a cx-12 row at 21 % loses to a cx-14 row at 12 %. Rows that are not
    ``eligible`` (a formula blind to prefill on data with prefill steps) are
    left out unless nothing else is left; the window is measured from the
    front's lowest error, and when it holds no allowed row the most accurate
    allowed row is taken.
``score``
    The highest PySR score.
``knee``
    In (complexity, log validation error), each scaled to [0, 1]: the row
    farthest from the chord between the simplest and the most accurate row
    (ties: the more accurate); when no row lies off the chord, the most
    accurate row.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from features.errors import StepMLError

SELECTIONS = ("best", "accuracy", "knee", "score")
#: ``best`` window: rows with validation error ≤ WINDOW × the lowest.
WINDOW = 1.5
#: ``best`` accuracy guard: error ≤ GUARD × the lowest of the same or a simpler complexity class.
GUARD = 1.25
#: Width of a complexity class of the accuracy guard (1–5, 6–10, …).
CLASS_WIDTH = 5


def complexity_class(complexity: Sequence[float]) -> np.ndarray:
    """The complexity class of each row: 1 for complexities 1–5, 2 for 6–10, … (:data:`CLASS_WIDTH`)."""
    c = np.asarray(complexity, dtype=float)
    return np.maximum(1, np.ceil(c / CLASS_WIDTH)).astype(int)


def accuracy_guard(complexity: Sequence[float], loss: Sequence[float], rows: Sequence[bool] | None = None) -> np.ndarray:
    """True for rows whose loss is ≤ :data:`GUARD` × the lowest loss of the ``rows`` (default all finite) in the
    same or a simpler complexity class; non-finite rows are False."""
    l = np.asarray(loss, dtype=float)
    finite = np.isfinite(l)
    pool = finite if rows is None else finite & np.asarray(rows, dtype=bool)
    cls = complexity_class(complexity)
    ok = np.zeros(len(l), dtype=bool)
    for i in np.flatnonzero(finite):
        peers = pool & (cls <= cls[i])
        lowest = np.min(l[peers]) if peers.any() else l[i]
        ok[i] = l[i] <= GUARD * lowest
    return ok


def pysr_score(complexity: Sequence[float], loss: Sequence[float]) -> np.ndarray:
    """PySR's score along a front sorted by complexity: −Δlog(loss) / Δcomplexity (first row 0).

    Rows with a non-finite loss get ``-inf`` and are skipped: the next finite
    row is scored against the previous finite one.
    """
    c = np.asarray(complexity, dtype=float)
    l = np.maximum(np.asarray(loss, dtype=float), 1e-300)
    finite = np.isfinite(l)
    score = np.where(finite, 0.0, -np.inf)
    order = [i for i in np.argsort(c, kind="stable") if finite[i]]
    for prev, cur in zip(order[:-1], order[1:]):
        dc = c[cur] - c[prev]
        score[cur] = -(math.log(l[cur]) - math.log(l[prev])) / dc if dc > 0 else 0.0
    return score


def select(kind: str, complexity: Sequence[float], loss: Sequence[float],
           replay_loss: Sequence[float] | None = None, eligible: Sequence[bool] | None = None) -> int:
    """Index of the selected front member (the rules are in the module docstring).

    ``best``: among rows with loss ≤ :data:`WINDOW` × the minimum, the lowest
    replay loss (E2E + TTFT + ITL error of replayed experiments) when the front
    was replayed, else PySR's rule (highest score) among the rows that pass
    :func:`accuracy_guard`; ``accuracy``: lowest loss; ``score``: highest
    score; ``knee``: farthest from the chord between the simplest and the most
    accurate member in (complexity, log loss), both normalised to [0, 1].
    ``eligible`` (default all) removes rows from ``best`` (a formula without
    prefill dependence on data with prefill steps), unless it would leave none;
    the window is still measured from the front's lowest loss, and when it
    holds no allowed row the most accurate allowed row is taken. The guard
    compares a row with the rows ``best`` may take.
    """
    c = np.asarray(complexity, dtype=float)
    l = np.asarray(loss, dtype=float)
    if not len(c):
        raise StepMLError("empty front: nothing to select")
    finite = np.isfinite(l)
    if not finite.any():
        raise StepMLError("no front member has a finite loss")
    allowed = np.ones(len(c), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if kind == "best":
        pool = finite & allowed if (finite & allowed).any() else finite
        ok = pool & (l <= WINDOW * np.nanmin(l[finite]))
        if not ok.any():  # every row near the lowest error is excluded: the most accurate allowed row
            return int(np.argmin(np.where(pool, l, np.inf)))
        r = None if replay_loss is None else np.asarray(replay_loss, dtype=float)
        if r is not None and np.isfinite(r[ok]).any():
            return int(np.argmin(np.where(ok & np.isfinite(r), r, np.inf)))
        ok &= accuracy_guard(c, l, pool)
        s = pysr_score(c, np.where(finite, l, np.inf))
        return int(np.argmax(np.where(ok, s, -np.inf)))
    s = pysr_score(c, np.where(finite, l, np.inf))
    if kind == "accuracy":
        return int(np.argmin(np.where(finite, l, np.inf)))
    if kind == "score":
        return int(np.argmax(np.where(finite, s, -np.inf)))
    if kind == "knee":
        x = (c - c[finite].min()) / max(np.ptp(c[finite]), 1e-12)
        ll = np.log(np.maximum(l, 1e-300))
        y = (ll - ll[finite].min()) / max(np.ptp(ll[finite]), 1e-12)
        a = int(np.argmin(np.where(finite, c, np.inf)))
        b = int(np.argmin(np.where(finite, l, np.inf)))
        dx, dy = x[b] - x[a], y[b] - y[a]
        norm = math.hypot(dx, dy)
        if norm == 0:
            return b
        dist = np.where(finite, np.abs(dy * (x - x[a]) - dx * (y - y[a])) / norm, -np.inf)
        far = dist >= np.max(dist) - 1e-12
        if np.max(dist) <= 1e-12:
            return b
        return int(np.argmin(np.where(far, l, np.inf)))
    raise StepMLError(f"unknown selection '{kind}'; valid: {', '.join(SELECTIONS)} or a row number")


# =============================================================================== hall-of-fame tables


def front_of(hof: pd.DataFrame) -> pd.DataFrame:
    """The front rows (``front`` column; all rows when absent), sorted by complexity."""
    front = hof[hof["front"].astype(str).str.lower() == "true"] if "front" in hof.columns else hof
    if front.empty:
        raise StepMLError("the run's hall of fame has no front rows")
    return front.sort_values(["Complexity"], kind="stable").reset_index(drop=True)


def loss_column(front: pd.DataFrame) -> str:
    """Validation MAPE when present (selection uses validation only), else PySR's Loss."""
    return "val_mape" if "val_mape" in front.columns and front["val_mape"].notna().any() else "Loss"


#: Replay error columns a reviewed front may carry (``discovery.review --experiments``).
REPLAY_COLUMNS = ("e2e_err", "ttft_err", "itl_err")


def replay_loss(front: pd.DataFrame) -> np.ndarray | None:
    """E2E + TTFT + ITL replay error (%) per front row, or None when the front was not replayed."""
    if not all(c in front.columns for c in REPLAY_COLUMNS):
        return None
    values = front[list(REPLAY_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return values.sum(axis=1)


def pick_row(front: pd.DataFrame, pick: str, eligible: Sequence[bool] | None = None) -> int:
    """``best|accuracy|knee|score`` or a row number of the front (``best`` sees replay columns; see :func:`select`)."""
    if pick.isdigit():
        k = int(pick)
        if not 0 <= k < len(front):
            raise StepMLError(f"--pick {k}: the front has rows 0..{len(front) - 1}")
        return k
    col = loss_column(front)
    return select(pick, front["Complexity"].to_numpy(float), front[col].to_numpy(float), replay_loss(front), eligible)
