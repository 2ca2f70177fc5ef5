"""``python -m discovery.export [RUN_DIR] [--pick ...] [--name NAME] [--out DIR]``.

Takes a front member of a run (default: the latest run, ``--pick best``),
simplifies it with sympy, refits its constants on the training part, rounds
them to ``--round`` significant figures when validation MAPE moves less than
0.1 point, rescores the result with the shared harness (so the exported loss
is the rescored loss) and writes into ``exported/<name>/``:

``formula.py``      dependency-free predictor (``math``), numpy variant, scikit-learn-style regressor
``formula.tex``     the formula and each feature's definition with units
``artifact.json``   versioned: expression, features, constants, target, data hash, split, metrics, and the
                    operating range of the fitted steps (:mod:`evaluation.operating_range`)
``formula.c``       C99 (sympy's C printer, the table's protected division)
``stepml.go``       BLIS's ``stepml`` latency model (``sim.LatencyModel``; simulator-available features,
                    architecture/hardware columns computed from ``sim.ModelHardwareConfig``)
``test_vectors.csv`` inputs and expected outputs; the C file is compiled and checked against them
                    (and the Go file, against a stub of BLIS's ``sim`` package, where a Go toolchain exists).

``--blis DIR`` also writes the overlay folder BLIS is built with
(``../shared/blis/build.sh OUT DIR``; :mod:`discovery.printers.blis`): the
model, its Go tests, and patched copies of the factory, the backend names and
the configuration resolution. ``python -m discovery.export ARTIFACT.json --blis DIR``
writes the overlay of an existing artifact (its request-level ``overheads``
included). A formula BLIS cannot evaluate is refused with one line (exit 2).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import sympy

from features import catalog
from features.cli import run
from features.errors import StepMLError
from features.io import atomic_write_frame, atomic_write_json, atomic_write_text, json_safe

if TYPE_CHECKING:
    from discovery.blis_export import TestModels

EXPORTED_DIR = Path("exported")
ROUND_TOLERANCE = 0.1  # validation MAPE points


def _latex_symbols(names: Sequence[str]) -> dict[sympy.Symbol, str]:
    return {sympy.Symbol(n): r"\mathrm{" + n.replace("_", r"\_").replace(".", r".") + "}" for n in names}


def formula_latex(expr: sympy.Expr) -> str:
    """LaTeX with readable feature names."""
    names = [str(s) for s in expr.free_symbols]
    return sympy.latex(expr, symbol_names=_latex_symbols(names))


def python_source(expr: sympy.Expr, features: Sequence[str], name: str, doc: dict[str, Any]) -> str:
    """``formula.py``: math-only ``predict``, numpy ``predict_array``, a regressor class.

    Both predictors are printed by :mod:`discovery.printers.python` (sympy's
    Python and NumPy printers with the table's protected division), so they
    agree with each other and with the search's evaluator, and never write
    into their inputs.
    """
    from discovery.printers.python import HELPERS, python_expression

    body = python_expression(expr)
    np_body = python_expression(expr, {sympy.Symbol(f): f"X[{f!r}]" for f in features}, vectorised=True)
    feats = ", ".join(repr(f) for f in features)
    return f'''"""Step-time predictor `{name}` exported by StepML Discovery (µs per scheduler step).

Formula: {sympy.sstr(expr)}
Target: {doc["target"]}   data: {doc["data"]}   split: {doc["split"]}
Validation MAPE {doc["metrics"]["val_mape"]:.3f} %, test MAPE {doc["metrics"]["test_mape"]:.3f} %.
Features (see artifact.json for their definitions and units): {", ".join(features)}
Generated file: do not edit; re-export instead.
"""
import math

FEATURES = ({feats}{"," if len(features) == 1 else ""})
{HELPERS}

def predict({", ".join(f"{f}: float" for f in features)}) -> float:
    """Predicted step time (µs) of one step."""
    return float({body})


def predict_array(X):
    """Vectorised variant: ``X`` maps each feature name to a numpy array (or is a DataFrame); returns a new array."""
    import functools  # noqa: F401  (used by Max/Min)

    import numpy

    X = {{f: numpy.asarray(X[f], dtype=float) for f in FEATURES}}
    n = len(X[FEATURES[0]]) if FEATURES else 1
    return numpy.asarray({np_body}, dtype=float) * numpy.ones(n)


class StepTimeFormula:
    """scikit-learn-compatible regressor wrapping the fixed formula (``fit`` learns nothing).

    ``predict`` takes a DataFrame with the feature columns or a 2-D array whose
    columns follow ``FEATURES``.
    """

    def __init__(self):
        pass

    def get_params(self, deep=True):
        return {{}}

    def set_params(self, **params):
        return self

    def fit(self, X, y=None):
        self.n_features_in_ = len(FEATURES)
        return self

    def predict(self, X):
        import numpy

        if hasattr(X, "columns"):
            cols = {{f: numpy.asarray(X[f], dtype=float) for f in FEATURES}}
        else:
            arr = numpy.asarray(X, dtype=float)
            cols = {{f: arr[:, i] for i, f in enumerate(FEATURES)}}
        return predict_array(cols)
'''


def tex_source(expr: sympy.Expr, defs: dict[str, sympy.Expr], doc: dict[str, Any]) -> str:
    """``formula.tex``: the formula, then each feature with unit and definition."""
    lines = ["% Step-time formula exported by StepML Discovery", r"\begin{equation}",
             r"  t_{\mathrm{step}}\,[\mu s] = " + formula_latex(expr), r"\end{equation}", "where", r"\begin{itemize}"]
    for name, d in defs.items():
        f = catalog.get_feature(name)
        cols = [s.name for s in d.free_symbols]
        lines.append(r"  \item $\mathrm{" + name.replace("_", r"\_") + "}$ [" + f.unit.replace("µ", r"$\mu$")
                     + "]: " + f.description.replace("_", r"\_").replace("Σ", r"$\Sigma$").replace("·", r"$\cdot$")
                     .replace("²", "$^2$").replace("−", "-") + r"; $= "
                     + sympy.latex(d, symbol_names=_latex_symbols(cols)) + "$")
    lines += [r"\end{itemize}", f"% validation MAPE {doc['metrics']['val_mape']:.3f} %, "
              f"test MAPE {doc['metrics']['test_mape']:.3f} %", ""]
    return "\n".join(lines)


def step_metrics(expr: sympy.Expr, dataset, split) -> tuple[dict[str, Any], Any]:
    """Step MAPE/MSPE of a formula on each part of a split, overall and per experiment (and the score card)."""
    from evaluation.predictors import FormulaPredictor
    from evaluation.scorer import score

    card = score(FormulaPredictor(expr, tuple(dataset.feature_names()), "export"), dataset, split)
    per_exp = {exp: {"val_mape": card.groups[("val", "experiment_id")].get(exp, {}).get("mape"),
                     "test_mape": card.groups[("test", "experiment_id")].get(exp, {}).get("mape")}
               for exp in sorted(set(dataset.frame["experiment_id"].astype(str)))}
    return {"train_mape": card.overall["train"]["mape"], "val_mape": card.overall["val"]["mape"],
            "test_mape": card.overall["test"]["mape"], "val_mspe": card.overall["val"]["mspe"],
            "test_mspe": card.overall["test"]["mspe"], "per_experiment": per_exp}, card


def check_export_name(name: str) -> str:
    """``name`` if it is one safe path component (letters, digits, ``.``, ``_``, ``-``; not ``.``/``..``)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or set(name) == {"."}:
        raise StepMLError(f"--name {name!r}: one folder name of letters, digits, '.', '_' or '-' "
                          "(not '.' or '..')")
    return name


def export(run_dir: Path, pick: str = "best", name: str | None = None, out: Path | None = None,
           round_sig: int | None = 4, require_go: bool = False, echo=print, blis: Path | None = None) -> Path:
    """Export one front member of a run; return the output folder.

    With ``blis``, also write the BLIS overlay folder there
    (:func:`discovery.blis_export.write_blis`); a formula BLIS cannot evaluate
    is then refused before anything is written.
    """
    from discovery.formula import baked_definitions, fitted_range, run_data
    from discovery.pareto import pick_row
    from discovery.rundir import expr_of, read_run_json, reviewed_front

    info = read_run_json(run_dir)
    front, eligible = reviewed_front(run_dir)
    row_index = pick_row(front, pick, eligible)
    row = front.iloc[row_index]
    name = check_export_name(f"{run_dir.name}-{pick}" if name is None else name)
    out_dir = _export_folder(name, out)
    dataset, split = run_data(info, run_dir)
    expr, full_metrics, rounding = _final_formula(expr_of(row), dataset, split, round_sig)
    used = sorted(str(s) for s in expr.free_symbols)
    check_positive(expr, used, dataset)
    defs, baked = baked_definitions(used, dataset)
    fields = {
        "search_infix": str(row["Equation"]), "baked_columns": baked,
        "data_path": info.get("data_path"), "data_hash": info.get("data_hash"), "split": info.get("split"),
        "fold": info.get("fold"), "max_gap": info.get("max_gap"), "colmap": info.get("colmap"),
        "experiments": info.get("experiments"), "engine": str(row.get("engine", "")), "seed": info.get("seed"),
        "run_dir": str(run_dir), "pick": pick, "front_row": int(row_index), "metrics": full_metrics,
        "rounding": rounding, "synthetic": bool(info.get("synthetic")),
        "operating_range": fitted_range(dataset, split),
    }
    return write_export(expr, defs, fields, dataset, split, name, out_dir, require_go, blis, echo)


def export_artifact(artifact: Path, name: str | None = None, out: Path | None = None, require_go: bool = False,
                    echo=print, blis: Path | None = None) -> Path:
    """A full export folder (Python, LaTeX, C, Go, test vectors) of an artifact that has none.

    For artifacts written by ``discovery.calibrate`` or ``evaluation.generalize --out``:
    the formula, its feature definitions and its request-level overheads are kept
    exactly (the constants were fitted end to end, so they are neither refitted on
    steps nor rounded); the step split saved beside the artifact gives the
    metrics and the test vectors, so ``discovery.audit`` can audit the result.
    """
    from discovery.blis_export import artifact_models
    from discovery.formula import load_artifact, run_data

    artifact = Path(artifact)
    folder = artifact if artifact.is_dir() else artifact.parent
    doc, predictor = load_artifact(artifact)
    if not doc.get("split"):
        raise StepMLError(f"{artifact}: the artifact records no step data split (calibrated without --steps?); "
                          "nothing to export test vectors from; give --blis DIR for its BLIS overlay alone")
    name = check_export_name(name or str(doc.get("name") or folder.name))
    out_dir = _export_folder(name, out)
    dataset, split = run_data(doc, folder)
    expr = predictor.expr
    used = sorted(str(s) for s in expr.free_symbols)
    check_positive(expr, used, dataset)
    metrics, _ = step_metrics(expr, dataset, split)
    keep = ("baked_columns", "data_path", "data_hash", "split", "fold", "max_gap", "colmap", "experiments", "engine",
            "seed", "synthetic", "overheads", "scheduler", "calibration", "source", "split_note", "operating_range")
    fields = {k: doc[k] for k in keep if k in doc}
    fields.setdefault("engine", "artifact")
    fields.update({"metrics": {**(doc.get("metrics") or {}), **metrics}, "artifact": str(artifact),
                   "rounding": {"significant_figures": None, "applied": False, "val_mape_full": metrics["val_mape"],
                                "note": "constants calibrated end to end: not refitted or rounded"}})
    defs = {f: predictor.definitions[f] for f in used}
    return write_export(expr, defs, fields, dataset, split, name, out_dir, require_go, blis, echo,
                        artifact_models(doc, artifact))


def _export_folder(name: str, out: Path | None) -> Path:
    from features.io import check_writable_dir

    out_dir = Path(out) if out else EXPORTED_DIR / name
    check_writable_dir(out_dir, "--out" if out else "export folder")
    if (out_dir / "artifact.json").exists():
        raise StepMLError(f"{out_dir} already holds an export; choose another --name or --out")
    return out_dir


def write_export(expr: sympy.Expr, defs: dict[str, sympy.Expr], fields: dict[str, Any], dataset, split, name: str,
                 out_dir: Path, require_go: bool = False, blis: Path | None = None, echo=print,
                 models: TestModels | None = None) -> Path:
    """Write the export folder of a final formula: artifact, Python, LaTeX, C, Go, test vectors (checked).

    ``fields`` are the artifact's provenance and metrics (``metrics`` and
    ``rounding`` required). A formula Go cannot evaluate is refused when
    ``require_go`` or ``blis`` asks for Go, before anything is written. ``models``
    (:class:`~discovery.blis_export.TestModels`) are the models the Go tests run
    (default: those of ``dataset``).
    """
    from discovery.blis_export import data_models, go_refusal
    from features.splits import save_splits
    from search_spaces.objective import complexity

    used = sorted(str(s) for s in expr.free_symbols)
    models = models if models is not None else data_models(dataset)
    go_reason = go_refusal(defs, models)
    if go_reason and (require_go or blis):
        raise StepMLError(go_reason)
    if blis:
        from discovery.printers.blis import blis_home, patched_files

        patched_files(blis_home() / "src")                   # a snapshot that cannot be patched fails first
    search_infix = fields.pop("search_infix", None)
    doc = {
        "schema": "stepml-artifact/1", "name": name,
        "expression": {"srepr": sympy.srepr(expr), "infix": sympy.sstr(expr), "latex": formula_latex(expr),
                       **({"search_infix": search_infix} if search_infix else {})},
        "complexity": complexity(expr),
        "features": [{"name": f, "unit": catalog.get_feature(f).unit,
                      "availability": catalog.get_feature(f).availability,
                      "description": catalog.get_feature(f).description,
                      "definition": sympy.sstr(defs[f]), "definition_srepr": sympy.srepr(defs[f])} for f in used],
        "constants": [float(c) for c in sorted(expr.atoms(sympy.Float), key=float)],
        "target": dataset.target, "data": dataset.label,
        **fields,
        "go": {"exported": go_reason is None, "reason": go_reason},
    }
    doc.setdefault("baked_columns", {})
    doc = json_safe(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc["split_file"] = save_splits([split], out_dir).name  # the audit scores on exactly this split
    atomic_write_text(out_dir / "formula.py", python_source(expr, used, name, doc))
    atomic_write_text(out_dir / "formula.tex", tex_source(expr, defs, doc))
    sources = None
    if go_reason is None:
        from discovery.blis_export import constants_comment, go_sources
        from discovery.formula import artifact_overheads

        sources = go_sources(expr, defs, models, constants_comment(dataset.label, doc["baked_columns"]),
                             artifact_overheads(doc))
    checks = _write_compiled(out_dir, expr, used, dataset, split, sources)
    doc["checks"] = checks
    atomic_write_json(out_dir / "artifact.json", doc)
    rounding = doc["rounding"]
    echo(f"exported {sympy.sstr(expr)}")
    echo(f"  validation MAPE {doc['metrics']['val_mape']:.3f} %, test MAPE {doc['metrics']['test_mape']:.3f} %, "
         f"complexity {doc['complexity']}; constants rounded to {rounding['significant_figures']} s.f.: "
         f"{'yes' if rounding['applied'] else 'no'}")
    for lang, res in checks.items():
        echo(f"  {lang} check: {res['status']}" + (f" ({res['detail']})" if res.get("detail") else ""))
    _report_go(doc, go_reason, echo)
    echo(f"wrote {out_dir}/")
    if blis and sources is not None:
        from discovery.blis_export import write_blis

        overlay = write_blis(Path(blis), sources, name)
        echo(f"wrote BLIS overlay {overlay}/ (build: ../shared/blis/build.sh OUT {overlay}; "
             "run: blis run --latency-model stepml)")
    return out_dir


def check_positive(expr: sympy.Expr, used: Sequence[str], dataset) -> None:
    """Refuse a formula that predicts a step time that is not a finite positive number on the data.

    A step takes time: a formula giving 0, a negative, an infinite or a
    complex-valued (NaN) time for a row of its own data (the non-empty batches)
    would hand a simulator nonsense, so it is not exported.
    """
    from search_spaces.numeric import lambdify_formula

    frame = dataset.frame
    rows = (frame["batch.scheduled_tokens"].to_numpy() > 0 if "batch.scheduled_tokens" in frame.columns
            else np.ones(len(frame), dtype=bool))
    with np.errstate(all="ignore"):
        pred = (np.asarray(lambdify_formula(expr, list(used))(dataset.features(used)), dtype=float) if used
                else np.full(len(frame), float(expr)))
    pred = np.broadcast_to(pred, (len(frame),))[rows]
    bad = ~np.isfinite(pred) | (pred <= 0)
    if bad.any():
        first = float(pred[np.flatnonzero(bad)[0]])
        kind = "not a finite number" if not np.isfinite(first) else "zero or negative"
        raise StepMLError(f"formula {sympy.sstr(expr)} predicts a step time that is {kind} ({first!r} µs) on "
                          f"{int(bad.sum())} of {len(pred)} rows of its data; not exported (pick another front "
                          "member with --pick)")


def _final_formula(original: sympy.Expr, dataset, split, round_sig: int | None):
    """Simplified, constant features folded, refitted on the training part, rounded when harmless."""
    from discovery.formula import refit_constants, round_constants, simplify

    expr = fold_constant_features(simplify(original), dataset)
    used = sorted(str(s) for s in expr.free_symbols)
    X_train = {k: v[split.train] for k, v in dataset.features(used).items()}
    expr = refit_constants(expr, X_train, dataset.y[split.train])
    full_metrics, _ = step_metrics(expr, dataset, split)
    rounding = {"significant_figures": round_sig, "applied": False, "val_mape_full": full_metrics["val_mape"]}
    if round_sig:
        rounded = round_constants(expr, round_sig)
        rounded_metrics, _ = step_metrics(rounded, dataset, split)
        rounding["val_mape_rounded"] = rounded_metrics["val_mape"]
        if abs(rounded_metrics["val_mape"] - full_metrics["val_mape"]) < ROUND_TOLERANCE:
            expr, full_metrics = rounded, rounded_metrics
            rounding["applied"] = True
    return expr, full_metrics, rounding


def fold_constant_features(expr: sympy.Expr, dataset) -> sympy.Expr:
    """Replace features constant over the data's non-empty batches (a dense model's weight-load time) by their value.

    ``a·rl_weight_load + b`` then reads as one intercept, and rounding no longer
    suffers from the cancellation of two large constants.
    """
    from discovery.formula import simplify

    names = sorted(str(s) for s in expr.free_symbols)
    frame = dataset.frame
    rows = (frame["batch.scheduled_tokens"].to_numpy() > 0 if "batch.scheduled_tokens" in frame.columns
            else np.ones(len(frame), dtype=bool))
    constant = {}
    for name, values in dataset.features(names).items():
        v = values[rows]
        if len(v) and np.all(v == v[0]):
            constant[sympy.Symbol(name)] = sympy.Float(float(v[0]))
    return simplify(expr.xreplace(constant)) if constant else expr


def _test_vectors(expr, used, dataset, split, n: int = 64) -> tuple[pd.DataFrame, np.ndarray]:
    from search_spaces.numeric import lambdify_formula

    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(split.val, size=min(n, len(split.val)), replace=False))
    X = {k: v[rows] for k, v in dataset.features(used).items()}
    expected = lambdify_formula(expr, used)(X) if used else np.full(len(rows), float(expr))
    table = pd.DataFrame({k: X[k] for k in used})
    table["expected_us"] = expected
    return table, expected


def _write_compiled(out_dir: Path, expr, used, dataset, split, sources) -> dict[str, dict[str, Any]]:
    from discovery.printers.c import c_source
    from discovery.printers.checks import c_parity

    table, expected = _test_vectors(expr, used, dataset, split)
    atomic_write_frame(out_dir / "test_vectors.csv", table)
    atomic_write_text(out_dir / "formula.c", c_source(expr, used))
    checks = {"c": _status(c_parity(out_dir / "formula.c", used, table[used].to_numpy(float), expected))}
    if sources is not None:
        from discovery.blis_export import write_go

        checks["go"] = _status(write_go(out_dir, sources, atomic_write_text))
    return checks


def _report_go(doc: dict[str, Any], go_reason: str | None, echo) -> None:
    if go_reason:
        echo(f"  stepml.go not written: {go_reason}")
        return
    from discovery.blis_export import report_overheads
    from discovery.formula import artifact_overheads

    report_overheads(artifact_overheads(doc), echo)


def _status(result) -> dict[str, Any]:
    if result.skipped:
        return {"status": "skipped", "detail": result.reason}
    return {"status": "pass" if result.ok else "FAIL", "detail": f"max rel err {result.max_rel_err:.2e} over {result.n}",
            "max_rel_err": result.max_rel_err}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    from discovery.rundir import latest_run

    parser = argparse.ArgumentParser(prog="python -m discovery.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=None,
                        help="run directory (default: the latest under results/), or an artifact.json (or an export "
                             "folder): a calibrated artifact gets a full export folder (--out/--name), an existing "
                             "export only its BLIS overlay (--blis)")
    parser.add_argument("--pick", default="best", help="best (default), accuracy, knee, score, or a front row number")
    parser.add_argument("--name", default=None, help="name of the export (default: <run-id>-<pick>)")
    parser.add_argument("--out", default=None, help="output folder (default: exported/<name>/)")
    parser.add_argument("--round", type=int, default=4, dest="round_sig",
                        help="round constants to N significant figures when validation MAPE moves < 0.1 point "
                             "(default 4; 0 = never)")
    parser.add_argument("--require-go", action="store_true", help="fail when the formula cannot be exported to Go")
    parser.add_argument("--blis", default=None, metavar="DIR",
                        help="also write a BLIS overlay folder (sim/latency/stepml.go, its Go tests, the patched "
                             "factory, backend name and config resolution) for ../shared/blis/build.sh; a formula "
                             "BLIS cannot evaluate is refused (exit 2)")
    args = parser.parse_args(argv)
    blis = Path(args.blis) if args.blis else None
    if blis is not None:
        from discovery.printers.blis import check_overlay_target

        check_overlay_target(blis)
    run_dir = Path(args.run_dir) if args.run_dir else latest_run()
    artifact = run_dir if run_dir.is_file() else run_dir / "artifact.json"
    if artifact.is_file() and not (run_dir / "hall_of_fame.csv").is_file():
        folder = artifact.parent
        exported = (folder / "formula.py").is_file()
        if exported or (blis is not None and args.out is None and args.name is None):
            if blis is None:
                raise StepMLError(f"{run_dir} is an export already; give --blis DIR to write its BLIS overlay")
            from discovery.blis_export import export_artifact_to_blis

            export_artifact_to_blis(artifact, blis)
            return 0
        export_artifact(artifact, args.name, Path(args.out) if args.out else None, args.require_go, blis=blis)
        return 0
    if not run_dir.is_dir():
        raise StepMLError(f"run directory not found: {run_dir}")
    if args.round_sig < 0:
        raise StepMLError("--round must be >= 0")
    export(run_dir, args.pick, args.name, Path(args.out) if args.out else None, args.round_sig or None,
           args.require_go, blis=blis)
    return 0


if __name__ == "__main__":
    run(main, prog="discovery.export")
