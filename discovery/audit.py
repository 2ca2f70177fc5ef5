"""``python -m discovery.audit [EXPORTED_DIR] [--json]``: an audit of an exported formula for reviewers.

Writes ``AUDIT.md`` and PNG plots into the export folder:

- the formula in LaTeX and each term's meaning, unit and definition;
- invariants: INV-M-1 >= 1 µs for every batch, the empty batch included
  (BLIS's ``StepTime`` contract; checked on the formula before the predictor's
  floor); INV-M-2 deterministic; INV-M-3 no side effects; INV-M-4 prediction
  time < 1 ms at batch 128; INV-M-5 monotone in prefill, decode and KV tokens
  (fraction of violating probe pairs on an extrapolation grid over the
  server's limits); INV-M-6 |MSPE| < 5 % on validation; INV-M-7 never below
  the roofline lower bound (peak FLOP/s and HBM bandwidth) on that grid;
- errors per experiment, model and workload with bootstrap CIs against the
  baselines (and Wilcoxon p-values of per-experiment errors);
- residual plots, behaviour outside the training range, the effect of constant rounding.

``--json`` prints ``{"invariants": {...}, "metrics": {...}}``. Exit status 0 when
every invariant passes, 1 when any fails (2 for bad input).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from features.cli import run
from features.errors import StepMLError
from features.io import atomic_write_bytes, atomic_write_text, json_safe

BASELINES = ("naive", "blackbox", "blackbox-per-exp", "roofline-cal", "gbt")
FORBIDDEN = ("open(", "import os", "import sys", "subprocess", "socket", "global ", "exec(", "eval(", "__import__",
             "write(", "print(")


def latest_export(root: Path = Path("exported")) -> Path:
    """The most recent export folder (by artifact.json mtime)."""
    found = [p.parent for p in root.glob("*/artifact.json")]
    if not found:
        raise StepMLError(f"no exports under {root}/; run `python -m discovery.export` first")
    return max(found, key=lambda p: ((p / "artifact.json").stat().st_mtime, p.name))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Fields of an artifact the audit reads, with a check and what the check expects.
_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "data": (lambda v: isinstance(v, str), "a string"),
    "target": (lambda v: isinstance(v, str), "a string"),
    "split": (lambda v: isinstance(v, str), "a string"),
    "engine": (lambda v: isinstance(v, str), "a string"),
    "complexity": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "constants": (lambda v: isinstance(v, list) and all(_is_number(c) for c in v), "a list of numbers"),
    "metrics": (lambda v: isinstance(v, dict) and all(_is_number(v.get(k)) or v.get(k) is None
                                                      for k in ("train_mape", "val_mape", "test_mape", "val_mspe"))
                and all(k in v for k in ("val_mape", "test_mape")), "an object with numeric val_mape and test_mape"),
    "rounding": (lambda v: isinstance(v, dict), "an object"),
    "seed": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer or null"),
    "max_gap": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                "an integer >= 1 or null"),
    "fold": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "data_hash": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "data_path": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "colmap": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "experiments": (lambda v: v is None or (isinstance(v, list) and all(isinstance(e, str) for e in v)),
                    "a list of strings or null"),
    "checks": (lambda v: v is None or (isinstance(v, dict) and all(isinstance(c, dict) for c in v.values())),
               "an object of objects"),
    "go": (lambda v: v is None or isinstance(v, dict), "an object"),
}
_OPTIONAL = ("seed", "max_gap", "fold", "data_hash", "data_path", "colmap", "experiments", "checks", "go")


def check_artifact(doc: dict[str, Any], source: Path | str) -> None:
    """Refuse an artifact whose fields the audit reads are missing or of the wrong type (one line each)."""
    for key, (ok, expected) in _FIELDS.items():
        if key not in doc:
            if key in _OPTIONAL:
                continue
            raise StepMLError(f"{source}: artifact lacks '{key}' ({expected}); re-export the formula")
        if not ok(doc[key]):
            raise StepMLError(f"{source}: artifact field '{key}' must be {expected}, got {doc[key]!r:.80}")
    expression = doc["expression"]
    if not isinstance(expression.get("latex"), str):
        raise StepMLError(f"{source}: artifact field 'expression.latex' must be a string")
    for f in doc["features"]:
        for key in ("unit", "availability", "description", "definition"):
            if not isinstance(f.get(key, ""), str):
                raise StepMLError(f"{source}: artifact feature '{f['name']}' field '{key}' must be a string")


def _server_limits(dataset) -> tuple[int, int, int]:
    for meta in dataset.experiments.values():
        if meta.server is not None:
            return meta.server.max_num_seqs, meta.server.max_num_batched_tokens, meta.server.max_model_len
    return 128, 2048, 4096


def _template(dataset) -> dict[str, float]:
    row = dataset.frame.iloc[0]
    return {c: float(row[c]) for c in dataset.frame.columns if c.startswith(("arch.", "hw."))}


def invariants(export_dir: Path, doc: dict[str, Any], predictor, dataset, split) -> dict[str, dict[str, Any]]:
    """Check INV-M-1 … INV-M-7; each entry ``{"pass": bool, "value": ..., "detail": str}``."""
    from discovery.formula import STEP_FLOOR_US
    from evaluation.metrics import mspe
    from evaluation.probes import AXES, extrapolation_grid, perturb

    seqs, tokens, model_len = _server_limits(dataset)
    grid = extrapolation_grid(_template(dataset), seqs, tokens, model_len)
    grid_pred = predictor.predict(grid)
    data_pred = predictor.predict(dataset.frame)
    nonempty = grid["batch.scheduled_tokens"].to_numpy() > 0
    empty = dict(grid.iloc[0])
    empty.update({"batch.prefill_tokens": 0.0, "batch.decode_tokens": 0.0, "batch.scheduled_tokens": 0.0,
                  "batch.num_prefill_reqs": 0.0, "batch.num_decode_reqs": 0.0, "kv.tokens_in_use": 0.0,
                  "batch.decode_context_sum": 0.0, "batch.prefill_context_sum": 0.0})
    empty_raw = float(predictor.raw({k: np.array([v]) for k, v in empty.items()})[0])
    raw = np.concatenate([predictor.raw(grid), predictor.raw(dataset.frame), [empty_raw]])
    out: dict[str, dict[str, Any]] = {}
    out["INV-M-1"] = {"pass": bool(np.all(np.isfinite(raw)) and np.all(raw >= STEP_FLOOR_US)),
                      "value": {"min_us": float(np.min(raw)), "empty_batch_us": empty_raw},
                      "detail": f"the formula is >= {STEP_FLOOR_US:g} µs on every grid batch, every data row and "
                                "the empty batch (BLIS's StepTime contract), before any floor"}
    again = predictor.predict(grid)
    genuine = formula_py_is_generated(export_dir, doc, predictor)
    py_a = _run_formula_py(export_dir) if genuine else None
    py_b = _run_formula_py(export_dir) if genuine else None
    out["INV-M-2"] = {"pass": bool(np.array_equal(grid_pred, again) and py_a is not None
                                   and py_a["values"] == py_b["values"]),  # type: ignore[index]
                      "value": {"repeat_equal": bool(np.array_equal(grid_pred, again))},
                      "detail": "same inputs give bit-identical outputs (artifact predictor and formula.py)"}
    if py_a is None:
        out["INV-M-3"] = {"pass": False, "value": {"generated": False},
                          "detail": "formula.py is not the file the artifact generates (edited or foreign): not run"}
        out["INV-M-4"] = {"pass": False, "value": None, "detail": "formula.py not run (see INV-M-3)"}
    else:
        source = (export_dir / "formula.py").read_text()
        flagged = [tok for tok in FORBIDDEN if tok in source.split('"""', 2)[-1]]
        out["INV-M-3"] = {"pass": not flagged and py_a["created_files"] == [],
                          "value": {"forbidden_tokens": flagged, "created_files": py_a["created_files"]},
                          "detail": "formula.py has no I/O, globals or imports beyond math; running it creates no files"}
        out["INV-M-4"] = {"pass": py_a["per_call_ms"] < 1.0, "value": {"per_call_ms": py_a["per_call_ms"]},
                          "detail": "formula.py predict() on a batch of 128 requests, median of 200 calls"}
    frac = {}
    for axis in AXES:
        if axis == "prefill_tokens" and "batch.prefill_tokens" not in grid.columns:
            continue
        hi = perturb(grid, axis)
        lo_p, hi_p = grid_pred, predictor.predict(hi)
        ok = nonempty & np.isfinite(lo_p) & np.isfinite(hi_p)
        frac[axis] = float(np.mean(hi_p[ok] < lo_p[ok] - 1e-9 * np.abs(lo_p[ok]))) if ok.any() else 0.0
    out["INV-M-5"] = {"pass": all(v == 0.0 for v in frac.values()), "value": frac,
                      "detail": f"violating probe pairs on a grid of {int(nonempty.sum())} batches "
                                f"(batch 1..{seqs}, tokens ≤ {tokens}, KV ≤ {model_len}×seqs)"}
    val = split.val
    m = float(mspe(dataset.y[val], data_pred[val]))
    out["INV-M-6"] = {"pass": bool(abs(m) < 5.0), "value": m, "detail": "|MSPE| on the validation part < 5 %"}
    out["INV-M-7"] = roofline_invariant(grid, grid_pred, nonempty)
    return out


def roofline_invariant(grid: pd.DataFrame, pred: np.ndarray, nonempty: np.ndarray) -> dict[str, Any]:
    """INV-M-7: never faster than physics allows — no prediction below the roofline lower bound on the grid.

    The bound (``rl_bound``: max of the step's GEMM FLOPs at peak FLOP/s and its
    HBM bytes at peak bandwidth) needs the architecture and hardware columns; an
    audit of data without them passes with the bound reported as unknown.
    """
    from features import catalog

    bound_feature = catalog.get_feature("rl_bound")
    if not bound_feature.available_in(grid.columns):
        return {"pass": True, "value": None, "detail": "roofline lower bound unknown (no architecture/hardware columns)"}
    bound = np.broadcast_to(np.asarray(bound_feature.compute(grid), dtype=float), pred.shape)
    below = nonempty & (pred < bound * (1 - 1e-9))
    ratio = pred[nonempty] / np.maximum(bound[nonempty], 1e-300)
    return {"pass": not bool(below.any()),
            "value": {"below": int(below.sum()), "grid_batches": int(nonempty.sum()),
                      "min_ratio_to_bound": float(np.min(ratio)) if ratio.size else None},
            "detail": "no non-empty grid batch predicted below max(GEMM FLOPs / peak FLOP/s, HBM bytes / peak "
                      "bandwidth)"}


def formula_py_is_generated(export_dir: Path, doc: dict[str, Any], predictor) -> bool:
    """Whether ``formula.py`` is byte for byte what the artifact's formula generates.

    The audit runs ``formula.py``; it runs only the code our own printer
    writes for the artifact's (safely parsed) formula, never a file somebody
    edited or wrote.
    """
    from discovery.export import python_source

    path = export_dir / "formula.py"
    if not path.is_file():
        return False
    try:
        expected = python_source(predictor.expr, [f["name"] for f in doc["features"]], str(doc["name"]), doc)
    except (KeyError, TypeError, ValueError, StepMLError):
        return False
    return path.read_text(encoding="utf-8", errors="replace") == expected


def _run_formula_py(export_dir: Path) -> dict[str, Any]:
    """Import formula.py in a fresh interpreter in an empty folder; time predict() at batch 128."""
    export_dir = export_dir.resolve()
    features = json.loads((export_dir / "artifact.json").read_text())["features"]
    names = [f["name"] for f in features]
    vectors = read_test_vectors(export_dir / "test_vectors.csv", names)
    code = (
        "import importlib.util, json, os, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('formula', {str(export_dir / 'formula.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"rows = {vectors[names].to_dict('records')!r}\n"
        "vals = [m.predict(**r) for r in rows]\n"
        "x = dict(rows[-1]) if rows else {}\n"
        "t = []\n"
        "for _ in range(200):\n"
        "    s = time.perf_counter(); m.predict(**x); t.append(time.perf_counter() - s)\n"
        "t.sort()\n"
        "print(json.dumps({'values': [repr(v) for v in vals], 'per_call_ms': t[len(t)//2] * 1e3,\n"
        "                  'created_files': sorted(os.listdir('.'))}))\n")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise StepMLError(f"formula.py failed to run: {proc.stderr.strip().splitlines()[-1] if proc.stderr else '?'}")
    return json.loads(proc.stdout)


def read_test_vectors(path: Path, names: Sequence[str]) -> pd.DataFrame:
    """``test_vectors.csv``: the feature columns and ``expected_us``, all finite numbers, at least one row."""
    if not path.is_file():
        raise StepMLError(f"{path}: missing; re-export the formula")
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas raises several types for broken CSVs
        raise StepMLError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    missing = [c for c in list(names) + ["expected_us"] if c not in table.columns]
    if missing:
        raise StepMLError(f"{path}: missing column(s) {', '.join(missing)}; re-export the formula")
    if table.empty:
        raise StepMLError(f"{path}: no test vectors; re-export the formula")
    values = table[list(names) + ["expected_us"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise StepMLError(f"{path}: row {row} holds a value that is not a finite number; re-export the formula")
    return table


def comparison(predictor, dataset, split, seed: int = 0) -> dict[str, Any]:
    """Test errors per experiment/model/workload with CIs for the formula and each baseline."""
    from evaluation.baselines import fit_baseline
    from evaluation.metrics import wilcoxon_p
    from evaluation.scorer import score

    cards = {"formula": score(predictor, dataset, split, ci=True, seed=seed)}
    notes = []
    for name in BASELINES:
        try:
            cards[name] = score(fit_baseline(name, dataset, split.train), dataset, split, ci=True, seed=seed)
        except StepMLError as exc:
            notes.append(f"{name}: {exc}")
    out: dict[str, Any] = {"overall": {}, "groups": {}, "wilcoxon_p": {}, "notes": notes}
    for label, card in cards.items():
        out["overall"][label] = {p: {"mape": card.overall[p]["mape"], "mspe": card.overall[p]["mspe"],
                                     "ci": card.overall[p].get("mape_ci")} for p in ("val", "test")}
        for col in ("experiment_id", "model", "workload", "phase"):
            for group, m in card.groups.get(("test", col), {}).items():
                out["groups"].setdefault(col, {}).setdefault(group, {})[label] = {
                    "mape": m["mape"], "ci": m.get("mape_ci"), "n": m["n"]}
    formula_exp = cards["formula"].group_metric("test", "experiment_id")
    for label, card in cards.items():
        if label == "formula":
            continue
        other = card.group_metric("test", "experiment_id")
        keys = sorted(set(formula_exp) & set(other))
        out["wilcoxon_p"][label] = wilcoxon_p([formula_exp[k] for k in keys], [other[k] for k in keys])
    return out


def outside_range(predictor, dataset, split) -> dict[str, Any]:
    """How the formula behaves on the extrapolation grid beyond the training range."""
    from evaluation.probes import extrapolation_grid

    seqs, tokens, model_len = _server_limits(dataset)
    grid = extrapolation_grid(_template(dataset), seqs, tokens, model_len)
    pred = predictor.predict(grid)
    train = dataset.frame.iloc[split.train]
    beyond = np.zeros(len(grid), dtype=bool)
    ranges = {}
    for col in ("batch.prefill_tokens", "batch.decode_tokens", "kv.tokens_in_use"):
        if col in train.columns:
            lo, hi = float(train[col].min()), float(train[col].max())
            ranges[col] = [lo, hi]
            beyond |= (grid[col].to_numpy() > hi) | (grid[col].to_numpy() < lo)
    ytr = dataset.y[split.train]
    return {"grid_points": int(len(grid)), "beyond_training_range": int(beyond.sum()), "training_ranges": ranges,
            "prediction_min_us": float(np.min(pred)), "prediction_max_us": float(np.max(pred)),
            "prediction_max_beyond_us": float(np.max(pred[beyond])) if beyond.any() else None,
            "training_target_range_us": [float(ytr.min()), float(ytr.max())]}


def plots(export_dir: Path, predictor, dataset, split) -> list[str]:
    """Residual plots (PNG) into the export folder; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = predictor.predict(dataset.frame)
    y = dataset.y
    with np.errstate(all="ignore"):
        res = (pred - y) / y * 100
    ok = np.isfinite(pred) & np.isfinite(res)  # a formula may be infinite somewhere: plot what is finite
    names = []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for part, color in (("train", "0.7"), ("val", "C0"), ("test", "C3")):
        idx = split.part(part)
        idx = idx[ok[idx]]
        axes[0].scatter(y[idx] / 1e3, pred[idx] / 1e3, s=3, color=color, label=part, alpha=0.6)
        axes[1].scatter(pred[idx] / 1e3, res[idx], s=3, color=color, alpha=0.6)
    finite = pred[ok] if ok.any() else y
    lim = [min(y.min(), finite.min()) / 1e3, max(y.max(), finite.max()) / 1e3]
    axes[0].plot(lim, lim, color="k", lw=0.8)
    axes[0].set_xlabel("measured (ms)"), axes[0].set_ylabel("predicted (ms)"), axes[0].legend(fontsize=7)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_xlabel("predicted (ms)"), axes[1].set_ylabel("residual (%)")
    axes[2].hist(res[split.test][ok[split.test]], bins=60, color="C3")
    axes[2].set_xlabel("test residual (%)")
    names.append(_save_png(fig, export_dir / "residuals.png"))
    if "batch.num_decode_reqs" in dataset.frame.columns:
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        bs = (dataset.frame["batch.num_decode_reqs"] + dataset.frame["batch.num_prefill_reqs"]).to_numpy()
        test = split.test[ok[split.test]]
        ax.scatter(bs[test], res[test], s=3, color="C3")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("batch size (requests)"), ax.set_ylabel("test residual (%)")
        names.append(_save_png(fig, export_dir / "residuals_batch.png"))
    return names


def _save_png(fig: Any, path: Path) -> str:
    """Write a matplotlib figure atomically as PNG, close it, return the file name."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def _fmt(v: Any, spec: str = ".2f") -> str:
    """A number formatted with ``spec``; ``-`` for a missing, NaN or non-numeric value."""
    if not _is_number(v) or v != v:
        return "-"
    return format(v, spec)


def audit_md(doc: dict[str, Any], inv: dict[str, Any], comp: dict[str, Any], beyond: dict[str, Any],
             images: list[str]) -> str:
    """The audit report as Markdown."""
    lines = [f"# Audit: `{doc['name']}`", "",
             ("**Data is SYNTHETIC (bundled demo).** " if doc.get("synthetic") else "")
             + f"Data: {doc['data']} (hash `{doc['data_hash']}`), target `{doc['target']}`, split `{doc['split']}`"
             + (f" fold `{doc['fold']}`" if doc.get("fold") else "") + f", engine {doc['engine']}, seed {doc.get('seed')}."
             + (f" {doc['split_note']}." if doc.get("split_note") else ""),
             "", "## Formula", "", "$$t_{\\mathrm{step}}\\,[\\mu s] = " + doc["expression"]["latex"] + "$$", "",
             f"Complexity {doc['complexity']}; constants: {', '.join(f'{c:.6g}' for c in doc['constants'])}.", "",
             "| term | unit | availability | meaning | definition (constants of the data baked in) |",
             "|---|---|---|---|---|"]
    for f in doc["features"]:
        lines.append(f"| `{f['name']}` | {f['unit']} | {f['availability']} | {f['description']} | `{f['definition']}` |")
    lines += ["", "## Invariants", "", "| invariant | verdict | value | what |", "|---|---|---|---|"]
    for name, r in inv.items():
        detail = r["detail"].replace("|", "\\|")
        lines.append(f"| {name} | {'PASS' if r['pass'] else '**FAIL**'} | `{json.dumps(r['value'])}` | {detail} |")
    lines += ["", "## Errors against the baselines (test part, MAPE % with bootstrap 95 % CI)", ""]
    labels = list(comp["overall"])
    lines += ["| group | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    row = []
    for label in labels:
        t = comp["overall"][label]["test"]
        ci = t.get("ci") or [None, None]
        row.append(f"{_fmt(t['mape'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]")
    lines.append("| **all** | " + " | ".join(row) + " |")
    for col in ("experiment_id", "model", "workload", "phase"):
        for group, by in comp["groups"].get(col, {}).items():
            cells = []
            for label in labels:
                m = by.get(label)
                ci = (m or {}).get("ci") or [None, None]
                cells.append(f"{_fmt((m or {}).get('mape'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if m else "-")
            lines.append(f"| {col}: {group} | " + " | ".join(cells) + " |")
    lines += ["", "Wilcoxon signed-rank p (per-experiment test MAPE, formula vs baseline): "
              + ", ".join(f"{k} {_fmt(v, '.3g')}" for k, v in comp["wilcoxon_p"].items()) + "."]
    if comp["notes"]:
        lines += ["", "Baselines not run: " + "; ".join(comp["notes"])]
    lines += ["", "## Residuals", ""] + [f"![{img}]({img})" for img in images]
    lines += ["", "## Outside the training range", "",
              f"{beyond['beyond_training_range']} of {beyond['grid_points']} grid batches lie outside the training "
              f"range ({', '.join(f'{k} {v[0]:.0f}–{v[1]:.0f}' for k, v in beyond['training_ranges'].items())}); "
              f"predictions there span {_fmt(beyond['prediction_min_us'], '.0f')}–{_fmt(beyond['prediction_max_us'], '.0f')} µs "
              f"(training targets {beyond['training_target_range_us'][0]:.0f}–{beyond['training_target_range_us'][1]:.0f} µs).",
              *_range_md(doc), "", "## Constant rounding", ""]
    r = doc["rounding"]
    if r.get("significant_figures"):
        lines.append(f"Rounding to {r['significant_figures']} significant figures moves validation MAPE from "
                     f"{_fmt(r.get('val_mape_full'), '.4f')} % to {_fmt(r.get('val_mape_rounded'), '.4f')} %: "
                     + ("applied." if r.get("applied") else "not applied (moved ≥ 0.1 point)."))
    else:
        lines.append("Constants were not rounded." + (f" ({r['note']})" if r.get("note") else ""))
    lines += _calibration_md(doc)
    checks = doc.get("checks") or {}
    lines += ["", "## Compiled exports", ""] + [f"- {k}: {v.get('status')} {v.get('detail') or ''}" for k, v in checks.items()]
    go = doc.get("go") or {}
    if not go.get("exported", False):
        lines.append(f"- go: not exported ({go.get('reason')})")
    return "\n".join(lines) + "\n"


def _range_md(doc: dict[str, Any]) -> list[str]:
    """The operating range the artifact records for replays (:mod:`evaluation.operating_range`)."""
    from evaluation.operating_range import OUTSIDE_SHARE

    span = doc.get("operating_range")
    bounds = span.get("bounds") if isinstance(span, dict) else None
    if not isinstance(bounds, dict) or not bounds:
        return []
    parts = ", ".join(f"{k} {_fmt(v[0], ',.0f')}–{_fmt(v[1], ',.0f')}" for k, v in bounds.items()
                      if isinstance(v, list) and len(v) == 2)
    return ["", f"Operating range of the fitted steps ({span.get('source', 'no source given')}; central "
                f"{100 * float(span.get('coverage', 0.98)):.0f} %): {parts}. A replay with more than "
                f"{100 * OUTSIDE_SHARE:.0f} % of its steps outside one of them is reported extrapolated."]


def _calibration_md(doc: dict[str, Any]) -> list[str]:
    """The request-level overheads and, for a calibrated formula, its errors on the experiments it was fitted to."""
    over = doc.get("overheads") if isinstance(doc.get("overheads"), dict) else None
    cal = doc.get("calibration") if isinstance(doc.get("calibration"), dict) else None
    if over is None and cal is None:
        return []
    lines = ["", "## Request-level overheads and calibration", ""]
    if over is not None:
        lines.append(f"Queueing (send → scheduler) {_fmt(over.get('queueing_us'), '.0f')} µs, per output token "
                     f"{_fmt(over.get('output_token_us'), '.0f')} µs, after the last token "
                     f"{_fmt(over.get('post_decode_us'), '.0f')} µs ({over.get('source', 'no source given')}).")
    errors = (cal or {}).get("errors")
    if isinstance(errors, dict) and errors:
        lines += ["", "Replayed errors (signed %) on the calibration experiments:", "",
                  "| experiment | window | E2E | TTFT | ITL |", "|---|---|---:|---:|---:|"]
        for exp, windows in errors.items():
            for window, e in (windows or {}).items():
                if isinstance(e, dict):
                    lines.append(f"| {exp} | {window} | {_fmt(e.get('e2e_err'), '+.1f')} | "
                                 f"{_fmt(e.get('ttft_err'), '+.1f')} | {_fmt(e.get('itl_err'), '+.1f')} |")
    return lines


def audit(export_dir: Path, echo=print) -> tuple[dict[str, Any], bool]:
    """Run the audit; return (JSON-ready result, all invariants pass)."""
    from discovery.formula import load_artifact, run_data

    from features.io import check_writable_dir

    check_writable_dir(export_dir, "export folder")  # AUDIT.md and the plots go there
    doc, predictor = load_artifact(export_dir)
    check_artifact(doc, export_dir / "artifact.json")
    read_test_vectors(export_dir / "test_vectors.csv", [f["name"] for f in doc["features"]])  # before the slow part
    dataset, split = run_data(doc, export_dir)
    inv = invariants(export_dir, doc, predictor, dataset, split)
    comp = comparison(predictor, dataset, split, seed=int(doc.get("seed") or 0))
    beyond = outside_range(predictor, dataset, split)
    images = plots(export_dir, predictor, dataset, split)
    atomic_write_text(export_dir / "AUDIT.md", audit_md(doc, inv, comp, beyond, images))
    ok = all(r["pass"] for r in inv.values())
    result = {"invariants": inv, "metrics": {"formula": doc["metrics"], "comparison": comp, "outside_range": beyond,
                                             "rounding": doc["rounding"]}}
    return json_safe(result), ok


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m discovery.audit", description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", nargs="?", default=None, help="export folder (default: the latest under exported/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    export_dir = Path(args.export_dir) if args.export_dir else latest_export()
    if not export_dir.is_dir():
        raise StepMLError(f"export folder not found: {export_dir}")
    result, ok = audit(export_dir)
    if args.json:
        print(json.dumps(result))
    else:
        for name, r in result["invariants"].items():
            print(f"{name}: {'PASS' if r['pass'] else 'FAIL'}  {json.dumps(r['value'])}")
        t = result["metrics"]["formula"]
        print(f"validation MAPE {_fmt(t['val_mape'], '.3f')} %, test MAPE {_fmt(t['test_mape'], '.3f')} %")
        print(f"wrote {export_dir / 'AUDIT.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    run(main, prog="discovery.audit")
