"""Operating ranges: recorded where a formula is fitted, checked by every replay."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sympy

import discovery.calibrate as cal
from evaluation.operating_range import (COVERAGE, OUTSIDE_SHARE, OperatingRange, check_range, fit_range,
                                        step_quantities)
from evaluation.predictors import FormulaPredictor
from evaluation.replay import replay_experiment
from evaluation.replay_cli import format_result
from features import catalog
from features.demo_experiments import law_expression
from features.errors import StepMLError

from conftest import run_main as _run


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from features.demo_experiments import write_demo_experiments

    root = tmp_path_factory.mktemp("demo-experiments")
    write_demo_experiments(root)
    return root


def _exp(root: Path, key: str) -> Path:
    return next(p for p in sorted((root / "blis" / "experiments").iterdir()) if key in p.name)


def _steps(n: int, context: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    reqs = rng.integers(1, 64, n).astype(float)
    return {"batch.num_prefill_reqs": np.zeros(n), "batch.num_decode_reqs": reqs,
            "kv.tokens_in_use": reqs * rng.normal(context, 0.1 * context, n), "batch.scheduled_tokens": reqs}


def test_a_run_like_the_fitted_steps_is_inside_and_three_times_the_context_is_not():
    rng = np.random.default_rng(0)
    span = fit_range([_steps(4000, 600.0, rng)], "synthetic")
    lo, hi = span.bounds["context_per_request"]
    assert 400 < lo < 600 < hi < 800
    same = check_range(span, _steps(2000, 600.0, rng))
    assert not same.extrapolates
    assert same.excursions[0].share < 2 * (1 - COVERAGE) + 0.02       # about the 2 % the range leaves out
    longer = check_range(span, _steps(2000, 1800.0, rng))
    assert longer.extrapolates and [e.quantity for e in longer.outside] == ["context_per_request"]
    (e,) = longer.outside
    assert e.share_above > 0.99 and e.share_below == 0 and e.median == pytest.approx(1800, rel=0.05)
    assert "context_per_request: 100 % of steps outside" in longer.describe() and "above" in longer.describe()


def test_a_tensor_parallel_degree_the_fit_never_saw_is_an_extrapolation():
    """Fitted on TP 2 and TP 4 servers, a TP-1 server running the very same workload extrapolates (no
    all-reduce at all); TP 4 and the TP 3 between them do not. ``arch.tp`` is a scalar merged into the steps."""
    rng = np.random.default_rng(1)
    span = fit_range([{"arch.tp": 2, **_steps(2000, 600.0, rng)}, {"arch.tp": 4, **_steps(2000, 600.0, rng)}], "tp")
    assert span.bounds["tensor_parallel"] == (2.0, 4.0)
    same = _steps(1000, 600.0, rng)
    for tp, expected in ((1, True), (3, False), (4, False), (8, True)):
        check = check_range(span, {"arch.tp": tp, **same})
        assert check.extrapolates is expected, tp
        assert [e.quantity for e in check.outside] == (["tensor_parallel"] if expected else [])
    assert "tensor_parallel: 100 % of steps outside the fitted 2-4 (below; median 1)" in check_range(
        span, {"arch.tp": 1, **same}).describe()


def test_empty_steps_are_left_out_and_missing_columns_drop_their_quantity():
    cols = {"batch.num_prefill_reqs": np.array([0.0, 1.0, 0.0]), "batch.num_decode_reqs": np.array([0.0, 3.0, 2.0]),
            "kv.tokens_in_use": np.array([0.0, 400.0, 100.0])}
    q = step_quantities(cols)
    assert set(q) == {"requests_per_step", "context_per_request"}
    np.testing.assert_allclose(q["context_per_request"], [100.0, 50.0])
    assert fit_range([{"batch.num_prefill_reqs": np.zeros(3), "batch.num_decode_reqs": np.zeros(3)}], "idle") is None


def test_the_range_round_trips_and_malformed_ones_are_one_line_errors():
    span = OperatingRange({"requests_per_step": (1.0, 96.0), "context_per_request": (300.0, 800.0)}, 1234, "x")
    assert OperatingRange.from_dict(json.loads(json.dumps(span.to_dict()))) == span
    for bad, message in (([1, 2], "expected"), ({"bounds": {"batch": [1, 2]}}, "unknown quantity 'batch'"),
                         ({"bounds": {"requests_per_step": [5, 1]}}, "low <= high"),
                         ({"bounds": {"requests_per_step": [1, float("nan")]}}, "finite"),
                         ({"bounds": {"requests_per_step": "1-5"}}, "[low, high]")):
        with pytest.raises(StepMLError, match=message.replace("[", r"\[")):
            OperatingRange.from_dict(bad)


def test_a_replay_outside_the_range_says_so_in_text_and_json(demo_root):
    exp = _exp(demo_root, "dense-8b-tp1-chat")
    plain = replay_experiment(exp, FormulaPredictor(law_expression(), tuple(catalog.registry())), 0, keep_sim=True)
    assert plain.range_check is None and not plain.extrapolated and plain.to_json_dict()["extrapolated"] is False
    own = fit_range([plain.sim.steps], "the replay itself")
    narrow = OperatingRange({**own.bounds, "context_per_request": (1.0, 2.0)}, own.steps, "a narrow fit")
    for span, expected in ((own, False), (narrow, True)):
        predictor = FormulaPredictor(law_expression(), tuple(catalog.registry()), operating_range=span)
        result = replay_experiment(exp, predictor, 0)
        assert result.extrapolated is expected
        doc = result.to_json_dict()
        assert doc["extrapolated"] is expected and set(doc["operating_range"]["quantities"]) == set(span.bounds)
        assert doc["e2e_err"] == pytest.approx(plain.to_json_dict()["e2e_err"])   # the prediction is unchanged
        assert ("EXTRAPOLATED" in format_result(result)) is expected
    share = doc["operating_range"]["quantities"]["context_per_request"]["share_above"]
    assert share > OUTSIDE_SHARE and "a narrow fit" in format_result(result)
    # the replay checks its server's TP degree (a constant, not a step column) too: this experiment runs TP 1
    for tp, expected in ((1, False), (2, True)):
        span = fit_range([{"arch.tp": tp, **plain.sim.steps}], f"the replay at TP {tp}")
        result = replay_experiment(exp, FormulaPredictor(law_expression(), tuple(catalog.registry()),
                                                         operating_range=span), 0)
        assert result.extrapolated is expected
        assert ("tensor_parallel: 100 % of steps outside the fitted 2-2" in result.range_check.describe()) is expected


def test_a_calibrated_artifact_records_its_range_and_its_own_experiments_are_inside(demo_root, tmp_path):
    from discovery.formula import load_artifact

    exps = [_exp(demo_root, "dense-8b-tp1-code"), _exp(demo_root, "moe-64x1b-tp1-chat")]
    expr = law_expression()
    used = sorted(str(s) for s in expr.free_symbols)
    artifact = tmp_path / "law.json"
    artifact.write_text(json.dumps({"schema": "stepml-artifact/1", "name": "law",
                                    "expression": {"srepr": sympy.srepr(expr)},
                                    "features": [{"name": f, "definition_srepr":
                                                  sympy.srepr(catalog.get_feature(f).sympy_expr())} for f in used]}))
    out = tmp_path / "cal"
    assert _run(cal.main, [str(artifact), "--experiments", *map(str, exps), "--iterations", "1", "--requests", "0",
                           "--out", str(out)]) == 0
    doc, predictor = load_artifact(out)
    assert set(doc["operating_range"]["bounds"]) == {"requests_per_step", "context_per_request", "tokens_per_step",
                                                     "tensor_parallel"}
    assert doc["operating_range"]["bounds"]["tensor_parallel"] == [1.0, 1.0]     # both demo experiments run TP 1
    assert "2 calibration replay(s)" in doc["operating_range"]["source"]
    assert predictor.operating_range is not None
    for exp in exps:
        assert not replay_experiment(exp, predictor, 0, async_scheduling=True).extrapolated
    broken = dict(doc, operating_range={"bounds": {"requests_per_step": [9, 1]}})
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(StepMLError, match="operating_range: requests_per_step"):
        load_artifact(tmp_path / "broken.json")


def test_a_run_directory_predictor_carries_the_range_of_its_fitted_rows(linear_run, tmp_path):
    import shutil

    from discovery.formula import run_data
    from discovery.rundir import read_run_json
    from evaluation.predictors import load_predictor

    predictor = load_predictor(str(linear_run))
    dataset, split = run_data(read_run_json(linear_run), linear_run)
    assert predictor.operating_range.steps == step_quantities(
        dataset.frame.iloc[np.concatenate([split.train, split.val])])["requests_per_step"].size
    moved = tmp_path / "moved"
    shutil.copytree(linear_run, moved)
    info = json.loads((moved / "run.json").read_text())
    info["data_hash"] = "0" * 16                       # the run's data changed since: no range, still a predictor
    (moved / "run.json").write_text(json.dumps(info))
    assert load_predictor(str(moved)).operating_range is None


def test_review_names_the_replayed_experiments_outside_the_runs_range(linear_run, demo_root, tmp_path, capsys):
    import shutil

    from discovery import review
    from evaluation.predictors import load_predictor

    run_dir = tmp_path / "run"
    shutil.copytree(linear_run, run_dir)
    exp = _exp(demo_root, "dense-8b-tp1-chat")
    # the demo search table's prompts are longer than this experiment's: most of its steps lie below the range
    expected = replay_experiment(exp, load_predictor(str(run_dir)), 0, async_scheduling=True)
    assert expected.extrapolated and "context_per_request" in expected.range_check.describe()
    assert _run(review.main, [str(run_dir), "--experiments", str(exp)]) == 0
    out = capsys.readouterr().out
    assert f"EXTRAPOLATED {exp.name}: context_per_request" in out
    saved = json.loads((run_dir / "replay.json").read_text())["extrapolated"]
    assert list(saved) == [exp.name] and saved[exp.name].startswith("context_per_request")
    assert f"EXTRAPOLATED {exp.name}" in (run_dir / "report.md").read_text()
