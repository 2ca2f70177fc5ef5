"""Reproducible train/validation/test splits, saved as index arrays keyed by the data hash.

Specs (the ``--split`` values):

``temporal``
    60/20/20 within each experiment by step order: every train step id <
    every validation id < every test id of that experiment. A table without
    a time column (a column-mapped kernel table) is ordered by file row
    order (files in the order given), so the last 20 % of each experiment's
    rows are its test part.
``random``
    60/20/20 of the rows drawn at random (seeded: the same seed and data give
    the same split).
``kfold`` / ``kfold:K``
    Group-aware K-fold (default K = 5): the experiments (or the values of
    ``kfold:K:COLUMN``) are dealt into K folds of similar row counts, never
    split across folds; each fold is the test part once.
``lomo`` / ``lowo``
    Leave one model / workload out: one fold per value.
``logo:COLUMN``
    Leave one group out on any column (e.g. ``logo:shape`` for MoE shapes).
``largest:COLUMN[:FRACTION]``
    Extrapolation: the rows with the largest values of a numeric column (the
    top FRACTION of rows, default 0.2, ties kept together) are the test part;
    of the rest, the largest 25 % are the validation part (so selection
    favours formulas that carry over to larger sizes) and the remainder is the
    training part.

In a leave-one-out or K-fold fold the held-out groups are the test part; the
remaining rows are split temporally 75/25 within each experiment into train
and validation, so selection never sees the held-out groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import StepMLError

TEMPORAL = (0.6, 0.2, 0.2)
FOLD_TRAIN_SHARE = 0.75
DEFAULT_FOLDS = 5
NAMED_GROUPS = {"lomo": "model", "lowo": "workload"}
VALID_SPECS = "temporal, random, kfold[:K[:COLUMN]], lomo, lowo, logo:COLUMN, largest:COLUMN[:FRACTION]"
#: Default test share of ``largest:COLUMN``.
LARGEST_SHARE = 0.2


@dataclass(frozen=True)
class Split:
    """Positional row indices of one split (or one fold) of a dataset."""

    spec: str
    fold: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    data_hash: str = ""

    @property
    def name(self) -> str:
        """``spec`` or ``spec[fold]``."""
        return f"{self.spec}[{self.fold}]" if self.fold else self.spec

    def part(self, name: str) -> np.ndarray:
        """Indices of ``train``, ``val``/``validation`` or ``test``."""
        key = {"validation": "val"}.get(name, name)
        if key not in ("train", "val", "test"):
            raise StepMLError(f"unknown split part '{name}'; valid: train, val, test")
        return getattr(self, key)


def _order_within(frame: pd.DataFrame) -> list[np.ndarray]:
    """Positional indices per experiment, sorted by step id (ties by position)."""
    exp = frame["experiment_id"].astype(str).to_numpy() if "experiment_id" in frame.columns else np.zeros(len(frame))
    step = frame["step.id"].to_numpy() if "step.id" in frame.columns else np.arange(len(frame))
    order = np.lexsort((np.arange(len(frame)), step, exp))
    exp_sorted = exp[order]
    bounds = np.flatnonzero(exp_sorted[1:] != exp_sorted[:-1]) + 1
    return np.split(order, bounds)


def _cut(groups: list[np.ndarray], shares: tuple[float, ...]) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in shares]
    edges = np.cumsum(shares)[:-1]
    for idx in groups:
        n = len(idx)
        cuts = np.floor(edges * n + 1e-9).astype(int)
        for k, piece in enumerate(np.split(idx, cuts)):
            parts[k].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def temporal_split(frame: pd.DataFrame, shares: tuple[float, float, float] = TEMPORAL, data_hash: str = "") -> Split:
    """60/20/20 by step order within each experiment."""
    train, val, test = _cut(_order_within(frame), shares)
    return Split("temporal", "", train, val, test, data_hash)


def random_split(frame: pd.DataFrame, shares: tuple[float, float, float] = TEMPORAL, seed: int = 0,
                 data_hash: str = "") -> Split:
    """60/20/20 of the rows at random, drawn with ``numpy.random.default_rng(seed)``."""
    n = len(frame)
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.floor(np.cumsum(shares)[:-1] * n + 1e-9).astype(int)
    train, val, test = (np.sort(part) for part in np.split(order, cuts))
    return Split("random", "", train, val, test, data_hash)


def held_out_fold(frame: pd.DataFrame, held: np.ndarray, spec: str, fold: str, data_hash: str = "") -> Split:
    """Held-out rows (boolean mask) are the test part; the rest is split 75/25 by step order within each experiment."""
    rest = frame.loc[~held]
    positions = np.flatnonzero(~held)
    train_local, val_local = _cut(_order_within(rest.reset_index(drop=True)),
                                  (FOLD_TRAIN_SHARE, 1 - FOLD_TRAIN_SHARE))
    return Split(spec, fold, np.sort(positions[train_local]), np.sort(positions[val_local]),
                 np.flatnonzero(held), data_hash)


def group_folds(frame: pd.DataFrame, column: str, spec: str, data_hash: str = "") -> list[Split]:
    """One fold per value of ``column``: that value is the test part."""
    if column not in frame.columns:
        raise StepMLError(f"split '{spec}': unknown column '{column}'; valid: {', '.join(map(str, frame.columns))}")
    values = frame[column].astype(str).to_numpy()
    levels = sorted(set(values))
    if len(levels) < 2:
        raise StepMLError(f"split '{spec}': column '{column}' has a single value ({levels[0] if levels else '-'}); "
                          "leave-one-out needs at least two")
    return [held_out_fold(frame, values == level, spec, level, data_hash) for level in levels]


def kfold_splits(frame: pd.DataFrame, k: int = DEFAULT_FOLDS, column: str = "experiment_id", spec: str = "kfold",
                 data_hash: str = "") -> list[Split]:
    """Group-aware K-fold: whole groups of ``column`` are dealt into ``k`` folds of similar row counts.

    Groups go, largest first (ties by name), to the fold with the fewest rows so
    far (ties by fold number), as scikit-learn's ``GroupKFold`` does: no random
    choice, so the folds depend only on the data. Folds are named ``1`` … ``k``.
    """
    if k < 2:
        raise StepMLError(f"split '{spec}': K must be at least 2, got {k}")
    if column not in frame.columns:
        raise StepMLError(f"split '{spec}': unknown column '{column}'; valid: {', '.join(map(str, frame.columns))}")
    values = frame[column].astype(str).to_numpy()
    sizes = pd.Series(values).value_counts()
    if len(sizes) < k:
        raise StepMLError(f"split '{spec}': column '{column}' has {len(sizes)} group(s), fewer than K = {k}; "
                          f"use kfold:{max(len(sizes), 2)} or --split random")
    fold_of: dict[str, int] = {}
    rows = np.zeros(k, dtype=np.int64)
    for group, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        target = int(np.argmin(rows))
        fold_of[group] = target
        rows[target] += size
    assigned = np.array([fold_of[v] for v in values])
    return [held_out_fold(frame, assigned == f, spec, str(f + 1), data_hash) for f in range(k)]


def _top(values: np.ndarray, rows: np.ndarray, share: float) -> np.ndarray:
    """Of ``rows``, those holding the largest ``share`` of values (at least one; ties with the cut included)."""
    if not len(rows):
        return rows
    ordered = np.sort(values[rows])[::-1]
    cut = ordered[min(len(ordered) - 1, max(1, int(np.ceil(share * len(ordered) - 1e-9))) - 1)]
    return rows[values[rows] >= cut]


def largest_split(frame: pd.DataFrame, column: str, share: float = LARGEST_SHARE, spec: str = "",
                  data_hash: str = "") -> Split:
    """Test part: the rows with the largest ``column`` values (``share`` of the rows, ties together);
    validation: the largest 25 % of the rest; training: the remainder."""
    spec = spec or f"largest:{column}"
    if column not in frame.columns:
        raise StepMLError(f"split '{spec}': unknown column '{column}'; valid: {', '.join(map(str, frame.columns))}")
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(values)):
        raise StepMLError(f"split '{spec}': column '{column}' must hold finite numbers on every row")
    if not 0 < share < 1:
        raise StepMLError(f"split '{spec}': FRACTION must be in (0, 1), got {share}")
    rows = np.arange(len(frame))
    test = _top(values, rows, share)
    rest = np.setdiff1d(rows, test)
    val = _top(values, rest, 1 - FOLD_TRAIN_SHARE)
    train = np.setdiff1d(rest, val)
    if not len(train) or not len(val):
        raise StepMLError(f"split '{spec}': column '{column}' has too few distinct values to hold out its largest "
                          "rows and keep training and validation rows")
    return Split(spec, "", np.sort(train), np.sort(val), np.sort(test), data_hash)


def _largest_spec(spec: str) -> tuple[str, float]:
    parts = spec.split(":")
    if len(parts) > 3 or not parts[1]:
        raise StepMLError(f"split '{spec}': expected largest:COLUMN[:FRACTION]")
    if len(parts) == 3:
        try:
            return parts[1], float(parts[2])
        except ValueError:
            raise StepMLError(f"split '{spec}': FRACTION must be a number (largest:COLUMN:0.2)") from None
    return parts[1], LARGEST_SHARE


def _kfold_spec(spec: str) -> tuple[int, str]:
    parts = spec.split(":", 2)
    k = DEFAULT_FOLDS
    if len(parts) > 1:
        if not parts[1].isdigit():
            raise StepMLError(f"split '{spec}': K must be a whole number (kfold:5), got '{parts[1]}'")
        k = int(parts[1])
    column = parts[2] if len(parts) > 2 and parts[2] else "experiment_id"
    return k, column


def make_splits(frame: pd.DataFrame, spec: str = "temporal", data_hash: str = "", seed: int = 0) -> list[Split]:
    """All splits for a ``--split`` spec (one for temporal and random, one per fold otherwise).

    ``seed`` seeds the ``random`` split (the only spec that draws at random).
    """
    if not isinstance(spec, str):
        raise StepMLError(f"unknown split {spec!r}; valid: {VALID_SPECS}")
    if spec == "temporal":
        return [temporal_split(frame, data_hash=data_hash)]
    if spec == "random":
        return [random_split(frame, seed=seed, data_hash=data_hash)]
    if spec == "kfold" or spec.startswith("kfold:"):
        k, column = _kfold_spec(spec)
        return kfold_splits(frame, k, column, spec, data_hash)
    if spec in NAMED_GROUPS:
        return group_folds(frame, NAMED_GROUPS[spec], spec, data_hash)
    if spec.startswith("logo:") and len(spec) > 5:
        return group_folds(frame, spec[5:], spec, data_hash)
    if spec.startswith("largest:"):
        column, share = _largest_spec(spec)
        return [largest_split(frame, column, share, spec, data_hash)]
    raise StepMLError(f"unknown split '{spec}'; valid: {VALID_SPECS}")


_META_KEY = "__meta__"


def save_splits(splits: list[Split], folder: str | Path) -> Path:
    """Write the index arrays to ``folder/<data_hash>-<spec>.npz`` atomically.

    The spec and data hash are also stored inside the file, so :func:`load_splits`
    restores them exactly (the file name replaces ``:`` and has ``nohash`` for an
    empty hash).
    """
    from io import BytesIO

    from features.io import atomic_write_bytes

    if not splits:
        raise StepMLError("no splits to save")
    first = splits[0]
    path = Path(folder) / f"{first.data_hash or 'nohash'}-{first.spec.replace(':', '_')}.npz"
    arrays = {_META_KEY: np.array([first.data_hash, first.spec])}
    for k, s in enumerate(splits):
        for part in ("train", "val", "test"):
            arrays[f"{k}:{s.fold}:{part}"] = s.part(part)
    buffer = BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_splits(path: str | Path) -> list[Split]:
    """Read splits written by :func:`save_splits`."""
    path = Path(path)
    if not path.is_file():
        raise StepMLError(f"split file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError) as exc:
        raise StepMLError(f"{path}: not a split file ({exc})") from None
    meta = arrays.pop(_META_KEY, None)
    if meta is not None and len(meta) == 2:
        data_hash, spec = str(meta[0]), str(meta[1])
    elif "-" in path.stem:
        data_hash, spec = path.stem.split("-", 1)
        data_hash = "" if data_hash == "nohash" else data_hash
        spec = spec.replace("logo_", "logo:", 1)
    else:
        raise StepMLError(f"{path}: not a split file (expected <data_hash>-<spec>.npz)")
    folds: dict[int, dict[str, np.ndarray]] = {}
    names: dict[int, str] = {}
    for key, values in arrays.items():
        # "<index>:<fold>:<part>"; the fold name itself may contain ':'.
        index, _, rest = key.partition(":")
        fold, _, part = rest.rpartition(":")
        if not index.isdigit() or part not in ("train", "val", "test"):
            raise StepMLError(f"{path}: not a split file (unexpected array '{key}')")
        folds.setdefault(int(index), {})[part] = values
        names[int(index)] = fold
    incomplete = [i for i, f in folds.items() if len(f) != 3]
    if not folds or incomplete:
        raise StepMLError(f"{path}: not a split file (incomplete fold(s): {incomplete or 'none saved'})")
    return [Split(spec, names[i], f["train"], f["val"], f["test"], data_hash) for i, f in sorted(folds.items())]
