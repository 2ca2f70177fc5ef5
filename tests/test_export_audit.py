"""discovery.export and discovery.audit on a small demo run, as a user runs them."""
from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import sympy

from discovery import audit, export
from discovery.formula import load_artifact, run_data
from discovery.rundir import HofRow, write_hof
from features.dataset import load_dataset
from features.splits import make_splits, save_splits
from evaluation.scorer import score

from conftest import run_main as _run


@pytest.fixture(scope="module")
def run_dir(linear_run):
    return linear_run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "linear"
    assert _run(export.main, [str(run_dir), "--pick", "accuracy", "--out", str(out), "--name", "linear"]) == 0
    return out


def _load_formula_py(path):
    spec = importlib.util.spec_from_file_location("exported_formula", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_writes_every_artifact(exported):
    for name in ("formula.py", "formula.tex", "artifact.json", "formula.c", "stepml.go", "test_vectors.csv"):
        assert (exported / name).stat().st_size > 0, name
    doc = json.loads((exported / "artifact.json").read_text())
    assert doc["schema"] == "stepml-artifact/1"
    assert {f["name"] for f in doc["features"]} <= {"prefill_tokens", "decode_tokens"}
    assert all(f["availability"] == "simulator" and f["unit"] == "tokens" for f in doc["features"])
    assert doc["synthetic"] is True and doc["go"]["exported"] is True
    assert r"\begin{equation}" in (exported / "formula.tex").read_text()


def test_the_export_records_the_range_of_the_steps_it_was_fitted_on(exported):
    from evaluation.operating_range import step_quantities

    doc, predictor = load_artifact(exported)
    dataset, split = run_data(doc, exported)
    fitted = step_quantities(dataset.frame.iloc[np.concatenate([split.train, split.val])])
    assert predictor.operating_range.steps == fitted["requests_per_step"].size
    for name, (lo, hi) in predictor.operating_range.bounds.items():
        assert fitted[name].min() <= lo <= hi <= fitted[name].max(), name
        assert np.mean((fitted[name] >= lo) & (fitted[name] <= hi)) >= 0.97, name   # the central 98 % (ties: more)


def test_exported_loss_equals_rescored_loss(exported):
    doc, predictor = load_artifact(exported)
    dataset, split = run_data(doc, exported)
    card = score(predictor, dataset, split)
    for part in ("train", "val", "test"):
        assert card.overall[part]["mape"] == pytest.approx(doc["metrics"][f"{part}_mape"], rel=1e-12), part


def test_formula_py_matches_test_vectors(exported):
    module = _load_formula_py(exported / "formula.py")
    vectors = pd.read_csv(exported / "test_vectors.csv")
    feats = [c for c in vectors.columns if c != "expected_us"]
    one = np.array([module.predict(**{k: float(r[k]) for k in feats}) for _, r in vectors.iterrows()])
    np.testing.assert_allclose(one, vectors["expected_us"], rtol=1e-12)
    np.testing.assert_allclose(module.predict_array({k: vectors[k].to_numpy() for k in feats}), one, rtol=1e-12)
    reg = module.StepTimeFormula().fit(vectors[feats])
    np.testing.assert_allclose(reg.predict(vectors[feats]), one, rtol=1e-12)
    np.testing.assert_allclose(reg.predict(vectors[feats].to_numpy()), one, rtol=1e-12)


def test_compiled_exports_agree_with_python(exported):
    checks = json.loads((exported / "artifact.json").read_text())["checks"]
    assert checks["c"]["status"] == "pass"
    assert checks["go"]["status"] in ("pass", "skipped")
    if checks["go"]["status"] == "skipped":
        pytest.skip(f"no Go toolchain: {checks['go']['detail']}")


def test_existing_export_is_never_overwritten(run_dir, exported, capsys):
    before = (exported / "artifact.json").read_bytes()
    assert _run(export.main, [str(run_dir), "--out", str(exported)]) == 2
    assert "already holds an export" in capsys.readouterr().err
    assert (exported / "artifact.json").read_bytes() == before


def _hand_run(run_dir, tmp_path, equation: str):
    """A copy of ``run_dir`` whose front is one hand-written formula."""
    path = tmp_path / "hand"
    shutil.copytree(run_dir, path)
    expr = sympy.sympify(equation)
    write_hof(path, [HofRow(5, 0.1, equation, 0.0, 10.0, 10.0, 0.0, 2, sympy.srepr(expr), "deap", True, "hand")])
    return path


def test_trace_only_formula_is_refused_for_go(run_dir, tmp_path, capsys):
    path = _hand_run(run_dir, tmp_path, "20000.0 + 300.0*waiting_depth")
    assert _run(export.main, [str(path), "--out", str(tmp_path / "x"), "--require-go"]) == 2
    err = capsys.readouterr().err
    assert "only simulator-available features can be exported to Go" in err
    assert not (tmp_path / "x" / "artifact.json").exists()
    assert _run(export.main, [str(path), "--out", str(tmp_path / "y")]) == 0
    assert not (tmp_path / "y" / "stepml.go").exists()
    assert json.loads((tmp_path / "y" / "artifact.json").read_text())["go"]["exported"] is False


def test_audit_writes_report_and_verdicts(exported, capsys):
    code = _run(audit.main, [str(exported), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result["invariants"]) == {f"INV-M-{i}" for i in range(1, 8)}
    assert code == (0 if all(r["pass"] for r in result["invariants"].values()) else 1)
    assert result["invariants"]["INV-M-2"]["pass"] and result["invariants"]["INV-M-3"]["pass"]
    _, predictor = load_artifact(exported)
    intercept = float(predictor.expr.xreplace({s: 0 for s in predictor.expr.free_symbols}))
    assert result["invariants"]["INV-M-1"]["value"]["empty_batch_us"] == pytest.approx(intercept, rel=1e-12)
    assert result["invariants"]["INV-M-1"]["pass"] and intercept >= 1.0
    assert "formula" in result["metrics"]["comparison"]["overall"]
    text = (exported / "AUDIT.md").read_text()
    assert "INV-M-5" in text and "SYNTHETIC" in text and "Wilcoxon" in text
    lo, hi = predictor.operating_range.bounds["context_per_request"]
    assert f"context_per_request {lo:,.0f}–{hi:,.0f}" in text and "reported extrapolated" in text
    assert (exported / "residuals.png").read_bytes()[:4] == b"\x89PNG"


def test_audit_fails_a_decreasing_formula(run_dir, tmp_path, capsys):
    path = _hand_run(run_dir, tmp_path, "600000.0/(1.0 + decode_tokens)")
    assert _run(export.main, [str(path), "--out", str(tmp_path / "dec"), "--round", "0"]) == 0
    capsys.readouterr()
    assert _run(audit.main, [str(tmp_path / "dec"), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["invariants"]["INV-M-5"]["pass"] is False
    assert result["invariants"]["INV-M-5"]["value"]["decode_tokens"] > 0


def test_inv_m1_fails_a_formula_below_one_microsecond_on_the_empty_batch(run_dir, tmp_path, capsys):
    path = _hand_run(run_dir, tmp_path, "30.0*decode_tokens + 2.0*prefill_tokens")   # 0 µs for the empty batch
    assert _run(export.main, [str(path), "--out", str(tmp_path / "small"), "--round", "0"]) == 0
    doc, predictor = load_artifact(tmp_path / "small")
    dataset, split = run_data(doc, tmp_path / "small")
    inv = audit.invariants(tmp_path / "small", doc, predictor, dataset, split)["INV-M-1"]
    empty = {"batch.decode_tokens": np.zeros(1), "batch.prefill_tokens": np.zeros(1)}
    assert inv["pass"] is False and inv["value"]["empty_batch_us"] == 0.0
    assert predictor.raw(empty)[0] == 0.0 and predictor.predict(empty)[0] == 1.0   # the floor BLIS requires


def test_audit_of_a_missing_folder_is_exit_2(tmp_path, capsys):
    assert _run(audit.main, [str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_features_constant_over_the_data_fold_into_the_intercept(run_dir, tmp_path):
    path = _hand_run(run_dir, tmp_path, "5000.0 + 2.0*rl_weight_load + 100.0*decode_tokens")
    info = json.loads((path / "run.json").read_text())
    experiment = "20260101-000000-demo-dense-8b-tp1-chat"  # a single-model run: its split saved as a search would
    dataset = load_dataset(None, experiments=[experiment])
    splits = make_splits(dataset.frame, "temporal", dataset.content_hash())
    info.update({"experiments": [experiment], "data_hash": dataset.content_hash(),
                 "split_file": save_splits(splits, path).name})
    (path / "run.json").write_text(json.dumps(info))
    assert _run(export.main, [str(path), "--out", str(tmp_path / "fold")]) == 0
    doc = json.loads((tmp_path / "fold" / "artifact.json").read_text())
    # one dense model: its weight-load time is the same on every non-empty batch
    assert [f["name"] for f in doc["features"]] == ["decode_tokens"]
    assert doc["go"]["exported"] is True and doc["checks"]["go"]["status"] in ("pass", "skipped")
