"""Operations on a chosen formula shared by export, audit and replay.

- reload the data a run was searched on and the split it saved (:func:`run_data`);
- simplify, refit constants on the training part, round constants;
- bake the per-experiment constant columns (architecture, hardware) into each
  used feature's definition, giving features over per-step batch columns only;
- load an exported ``artifact.json`` back as a predictor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import sympy

from evaluation.operating_range import OperatingRange, fit_range
from features import catalog
from features.dataset import Dataset
from features.errors import StepMLError
from features.splits import Split

ARTIFACT_SCHEMA = "stepml-artifact/1"


def run_data(info: Mapping[str, Any], folder: str | Path) -> tuple[Dataset, Split]:
    """The dataset and the split a run (``run.json``) or an artifact was built on.

    The data is loaded again (and must hash as it did); the split is the one
    the search saved beside the run (``folder``: the run directory, or the export
    folder, which holds a copy), never recomputed.

    Raises
    ------
    StepMLError
        When the data changed, or the saved split indices are missing or do not
        match the run (other data, spec or fold).
    """
    from features.dataset import load_dataset
    from features.targets import DEFAULT_MAX_GAP

    dataset = load_dataset(info.get("data_path"), info.get("target"), max_gap=int(info.get("max_gap", DEFAULT_MAX_GAP)),
                           colmap=info.get("colmap"), experiments=info.get("experiments"))
    if info.get("data_hash") and dataset.content_hash() != info["data_hash"]:
        raise StepMLError(f"the data at {dataset.label} changed since the run (hash {dataset.content_hash()} "
                          f"vs {info['data_hash']})")
    return dataset, saved_split(folder, info, len(dataset.frame))


def fitted_range(dataset: Dataset, split: Split) -> dict[str, Any] | None:
    """The operating range (:meth:`~evaluation.operating_range.OperatingRange.to_dict`) of the rows a searched
    formula was fitted and selected on: the train and validation parts of ``split``."""
    rows = np.concatenate([split.train, split.val])
    span = fit_range([dataset.frame.iloc[rows]], f"{rows.size} train and validation steps of {dataset.label}")
    return span.to_dict() if span is not None else None


def saved_split(folder: str | Path, info: Mapping[str, Any], n_rows: int) -> Split:
    """The split (and fold) recorded in ``info``, read from the index file saved in ``folder``."""
    from features.splits import load_splits

    folder = Path(folder)
    spec, data_hash, fold = info.get("split"), info.get("data_hash") or "", info.get("fold") or ""
    if not isinstance(spec, str):
        raise StepMLError(f"{folder}: the run records no split")
    named = info.get("split_file")
    plain = isinstance(named, str) and named not in ("", ".", "..") and Path(named).name == named
    candidates = [folder / named] if plain else sorted(folder.glob("*.npz"))  # type: ignore[operator]
    matching = []
    for path in candidates:
        if not path.is_file():
            continue
        splits = load_splits(path)
        if splits and splits[0].spec == spec and splits[0].data_hash == data_hash:
            matching = splits
            break
    if not matching:
        raise StepMLError(f"{folder}: no saved split indices for split '{spec}' of data {data_hash or '?'} "
                          "(the run's .npz file is missing or belongs to other data); run the search again")
    chosen = [s for s in matching if s.fold == fold]
    if not chosen:
        raise StepMLError(f"{folder}: the saved split '{spec}' has no fold '{fold}' "
                          f"(saved: {', '.join(s.fold or '-' for s in matching)})")
    split = chosen[0]
    biggest = max((int(p.max()) for p in (split.train, split.val, split.test) if len(p)), default=-1)
    if biggest >= n_rows:
        raise StepMLError(f"{folder}: the saved split indexes row {biggest}, but the data has {n_rows} rows")
    return split


def constants_of(expr: sympy.Expr) -> list[sympy.Float]:
    """The numeric constants (Floats) of an expression in a stable order."""
    return sorted(expr.atoms(sympy.Float), key=lambda f: (float(f), str(f)))


def simplify(expr: sympy.Expr) -> sympy.Expr:
    """``sympy.simplify`` when it does not make the formula more complex."""
    from search_spaces.objective import complexity

    try:
        simpler = sympy.simplify(expr)
    except Exception:  # sympy can fail on exotic trees; keep the original
        return expr
    return simpler if complexity(simpler) <= complexity(expr) else expr


def _mape(expr: sympy.Expr, X: Mapping[str, np.ndarray], y: np.ndarray) -> float:
    from search_spaces.numeric import lambdify_formula
    from search_spaces.objective import relative_error

    names = sorted(str(s) for s in expr.free_symbols)
    with np.errstate(all="ignore"):
        pred = lambdify_formula(expr, names)({k: X[k] for k in names}) if names else np.full(len(y), float(expr))
    return relative_error(pred, y) * 100


def refit_constants(expr: sympy.Expr, X: Mapping[str, np.ndarray], y: np.ndarray) -> sympy.Expr:
    """Refit the numeric constants on training rows (relative error); keep the fit only if MAPE improves."""
    from scipy.optimize import least_squares

    from search_spaces.numeric import lambdify_formula

    consts = constants_of(expr)
    if not consts:
        return expr
    params = sympy.symbols(f"refit_p0:{len(consts)}")
    template = expr.xreplace(dict(zip(consts, params)))
    names = sorted(str(s) for s in expr.free_symbols)
    fn = lambdify_formula(template, names + [str(p) for p in params])
    base = {k: X[k] for k in names}

    def residual(theta: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            pred = fn({**base, **{str(p): np.full(len(y), t) for p, t in zip(params, theta)}})
        r = (pred - y) / y
        return np.where(np.isfinite(r), r, 1e6)

    x0 = np.array([float(c) for c in consts])
    try:
        fit = least_squares(residual, x0, loss="soft_l1", f_scale=0.01, max_nfev=400)
    except Exception:  # a degenerate Jacobian: keep the search's constants
        return expr
    refit = template.xreplace({p: sympy.Float(float(v)) for p, v in zip(params, fit.x)})
    return refit if _mape(refit, X, y) < _mape(expr, X, y) else expr


def round_constants(expr: sympy.Expr, sig: int) -> sympy.Expr:
    """Round every Float to ``sig`` significant figures."""
    def rnd(v: float) -> float:
        return float(f"{v:.{sig}g}")

    return expr.xreplace({c: sympy.Float(rnd(float(c))) for c in constants_of(expr)})


def baked_definitions(features: Sequence[str], dataset: Dataset) -> tuple[dict[str, sympy.Expr], dict[str, float]]:
    """Each feature's definition with the data's constant columns substituted.

    Returns (feature → expression over the remaining canonical columns, the
    substituted column values). Columns constant across the whole dataset
    (architecture, hardware of a single model) become numbers; the rest stay symbols.
    """
    defs: dict[str, sympy.Expr] = {}
    baked: dict[str, float] = {}
    frame = dataset.frame
    for name in features:
        expr = catalog.get_feature(name).sympy_expr()
        subs = {}
        for sym in expr.free_symbols:
            col = sym.name
            if col.startswith(("arch.", "hw.")) and col in frame.columns:
                values = frame[col].to_numpy(dtype=float)
                if np.all(values == values[0]):
                    subs[sym] = sympy.Float(float(values[0]))
                    baked[col] = float(values[0])
        defs[name] = sympy.simplify(expr.xreplace(subs)) if subs else expr
    return defs, dict(sorted(baked.items()))


def evaluate_on_columns(expr: sympy.Expr, columns: Mapping[str, object], n: int | None = None) -> np.ndarray:
    """Evaluate an expression over canonical-column symbols (dotted names) with protected operators."""
    from evaluation.predictors import n_rows
    from search_spaces.numeric import lambdify_formula
    from search_spaces.operators import symbol_name

    n = n_rows(columns) if n is None else n
    cols = sorted(s.name for s in expr.free_symbols)
    missing = [c for c in cols if c not in columns]
    if missing:
        raise StepMLError(f"formula {sympy.sstr(expr)} needs column(s) {', '.join(missing)}")
    if not cols:
        return np.full(n, float(expr))
    safe = expr.xreplace({sympy.Symbol(c): sympy.Symbol(symbol_name(c)) for c in cols})
    data = {c: np.broadcast_to(np.asarray(columns[c], dtype=float).reshape(-1), (n,)) for c in cols}
    return lambdify_formula(safe, cols)(data)


#: Every step takes at least this long (BLIS's ``LatencyModel.StepTime`` must return >= 1 µs for
#: every batch, the empty batch included); the Go export and :class:`ArtifactPredictor` apply it.
STEP_FLOOR_US = 1.0


@dataclass(frozen=True)
class ArtifactPredictor:
    """A predictor read from an exported ``artifact.json`` (features from canonical columns).

    :meth:`predict` is the formula floored at :data:`STEP_FLOOR_US` (NaN gives
    the floor), exactly as the Go export's ``StepTime``: the empty batch (all
    aggregates 0) is the formula's value there, at least 1 µs. :meth:`raw` is
    the formula without the floor (the audit's INV-M-1 checks it is >= 1 µs).
    ``operating_range`` is where its constants were fitted, when the artifact
    records it (:mod:`evaluation.operating_range`).
    """

    expr: sympy.Expr
    definitions: dict[str, sympy.Expr]
    name: str = "artifact"
    overheads: dict[str, float] | None = None
    async_scheduling: bool | None = None
    operating_range: OperatingRange | None = None

    def step_function(self, constants: Mapping[str, float]) -> Any:
        """A compiled scalar step-time function for a simulator (as :meth:`FormulaPredictor.step_function`)."""
        from discovery.printers.python import scalar_function

        canonical = self.expr.xreplace({sympy.Symbol(k): d for k, d in self.definitions.items()})
        canonical = canonical.xreplace({s: sympy.Float(float(constants[s.name])) for s in canonical.free_symbols
                                        if s.name in constants})
        return scalar_function(canonical)

    def raw(self, columns: Mapping[str, object]) -> np.ndarray:
        """The exported formula on canonical columns (one step or many), not floored."""
        from evaluation.predictors import n_rows
        from search_spaces.numeric import lambdify_formula

        n = n_rows(columns)
        with np.errstate(all="ignore"):
            feats = {name: np.broadcast_to(evaluate_on_columns(d, columns, n), (n,))
                     for name, d in self.definitions.items()}
            names = sorted(self.definitions)
            out = lambdify_formula(self.expr, names)(feats) if names else np.full(n, float(self.expr))
        return np.broadcast_to(np.asarray(out, float), (n,)).astype(float)

    def predict(self, columns: Mapping[str, object]) -> np.ndarray:
        """The step time in µs: :meth:`raw` floored at :data:`STEP_FLOOR_US`."""
        out = self.raw(columns)
        return np.where(out >= STEP_FLOOR_US, out, STEP_FLOOR_US)


def artifact_overheads(doc: Mapping[str, Any], source: Path | str = "artifact"):
    """The request-level overheads of an artifact (:class:`discovery.printers.go_source.Overheads`).

    ``"overheads": {"queueing_us", "output_token_us", "post_decode_us", "source"}`` is
    optional, and so is each key (absent → 0, listed in ``Overheads.absent``);
    a value that is not a finite number >= 0 is a one-line error.
    """
    from discovery.printers.go_source import Overheads

    block = doc.get("overheads")
    if block is None:
        return Overheads(source="the artifact has no overheads")
    if not isinstance(block, Mapping):
        raise StepMLError(f"{source}: 'overheads' must be an object")
    values: dict[str, float] = {}
    for key in Overheads.KEYS:
        if key in block:
            v = block[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise StepMLError(f"{source}: overheads.{key} must be a finite number >= 0, got {v!r}")
            values[key] = float(v)
    src = block.get("source", "")
    return Overheads(**values, source=str(src) if src else "the artifact's overheads", given=tuple(values))


def load_artifact(path: str | Path) -> tuple[dict[str, Any], ArtifactPredictor]:
    """Read ``artifact.json`` (or a folder holding one) → (document, predictor).

    The expression and the feature definitions are read with the whitelist
    parser (never ``eval``): the formula may use only catalogue features and
    table operators, a definition only canonical column names. Anything
    missing or malformed is a one-line :class:`StepMLError`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "artifact.json"
    from features.io import read_json

    doc = read_json(path, "artifact")
    if not isinstance(doc, dict) or doc.get("schema") != ARTIFACT_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise StepMLError(f"{path}: not a StepML artifact (schema {found!r}, expected {ARTIFACT_SCHEMA})")
    expr, defs = artifact_formula(doc, path)
    span = doc.get("operating_range")
    span = OperatingRange.from_dict(span, f"{path}: operating_range") if span is not None else None
    return doc, ArtifactPredictor(expr, defs, str(doc.get("name", "artifact")), *artifact_replay_settings(doc, path),
                                  span)


def artifact_replay_settings(doc: Mapping[str, Any], source: Path | str = "artifact") -> tuple[dict[str, float] | None,
                                                                                              bool | None]:
    """The request overheads (s) and the scheduling mode a calibrated artifact carries (None when absent)."""
    overheads = None
    if doc.get("overheads") is not None:
        block = artifact_overheads(doc, source)
        overheads = {"queue_overhead_s": block.queueing_us / 1e6, "end_overhead_s": block.post_decode_us / 1e6}
    scheduler = doc.get("scheduler")
    mode = scheduler.get("async_scheduling") if isinstance(scheduler, dict) else None
    return overheads, (bool(mode) if isinstance(mode, bool) else None)


def artifact_formula(doc: Mapping[str, Any], source: Path | str = "artifact") -> tuple[sympy.Expr, dict[str, sympy.Expr]]:
    """The formula and the feature definitions of an artifact document, parsed safely."""
    from search_spaces.expressions import is_symbol_name, parse_expression
    from search_spaces.operators import parse_formula

    expression = doc.get("expression")
    if not isinstance(expression, dict) or not isinstance(expression.get("srepr"), str):
        raise StepMLError(f"{source}: 'expression' must be an object with an 'srepr' string")
    features = doc.get("features")
    if not isinstance(features, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("definition_srepr"), str)
            for f in features):
        raise StepMLError(f"{source}: 'features' must be a list of objects with 'name' and 'definition_srepr'")
    unknown = [f["name"] for f in features if f["name"] not in catalog.registry()]
    if unknown:
        raise StepMLError(f"{source}: unknown feature(s) {', '.join(unknown)}")

    def column(name: str) -> sympy.Expr:
        if not is_symbol_name(name):
            raise StepMLError(f"{source}: {name!r} is not a column name")
        return sympy.Symbol(name)

    expr = parse_formula(expression["srepr"], [f["name"] for f in features], indexed=False)
    defs = {f["name"]: parse_expression(f["definition_srepr"], column, what=f"definition of {f['name']}")
            for f in features}
    return expr, defs
