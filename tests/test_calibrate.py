"""Calibration on measured request latencies: anchors, the fit, the CLI, leave-one-group-out — on the demo experiments."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sympy

from discovery import calibrate as cal
from evaluation import generalize as gen
from evaluation.calibration import anchor_from_replay, anchor_means, measured_means
from evaluation.predictors import FormulaPredictor
from features.errors import StepMLError
from evaluation.replay import replay_experiment
from features import catalog
from features.demo_experiments import QUEUE_OVERHEAD_S, law_expression

from conftest import run_main as _run


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from features.demo_experiments import write_demo_experiments

    root = tmp_path_factory.mktemp("demo-experiments")
    write_demo_experiments(root)
    return root


def _exps(root: Path, *keys: str) -> list[Path]:
    found = sorted((root / "blis" / "experiments").iterdir())
    return [p for p in found if any(k in p.name for k in keys)]


def test_an_anchor_reproduces_its_replay_exactly(demo_root):
    exp = _exps(demo_root, "dense-34b-tp2-chat")[0]
    predictor = FormulaPredictor(law_expression(), tuple(catalog.registry()))
    result = replay_experiment(exp, predictor, 3, 0.01, end_overhead_s=0.003, async_scheduling=True, keep_sim=True)
    measured = measured_means(exp)
    anchor = anchor_from_replay(result, measured, 0.01, 0.003)
    means = anchor_means(anchor, anchor.durations_us, 0.01, 0.003)
    assert set(means) == {"stage_0", "stage_1"}
    for window, (e2e, ttft, itl) in means.items():
        pred = result.predicted[window]
        assert e2e == pytest.approx(pred.request_latency.mean, rel=1e-9)
        assert ttft == pytest.approx(pred.time_to_first_token.mean, rel=1e-9)
        assert itl == pytest.approx(pred.inter_token_latency.mean, rel=1e-9)
    slower = anchor_means(anchor, anchor.durations_us * 1.1, 0.01, 0.003)["stage_0"]
    assert slower[2] == pytest.approx(means["stage_0"][2] * 1.1, rel=1e-9)   # ITL scales with the steps
    assert slower[0] > means["stage_0"][0]


def test_async_scheduling_adds_about_one_step_to_ttft(demo_root):
    exp = _exps(demo_root, "dense-8b-tp1-chat")[0]
    predictor = FormulaPredictor(sympy.Float(10_000.0), ())
    ttft = {mode: replay_experiment(exp, predictor, 0, async_scheduling=mode).predicted["stage_1"]
            .time_to_first_token.mean for mode in (False, True)}
    # 10 ms steps: a request waits for the step in flight and, one step ahead, for the one already formed
    assert 0.7 * 0.010 < ttft[True] - ttft[False] < 1.3 * 0.010


def test_calibration_recovers_the_demo_law(demo_root):
    """Wrong multipliers and overheads are pulled back to the generating law by the measured latencies."""
    exps = _exps(demo_root, "dense-8b-tp1-chat", "dense-34b-tp2-code", "moe-8x7b-tp2-chat")
    truth = law_expression()
    start = truth.xreplace({f: sympy.Float(float(f) * k) for f, k in zip(sorted(truth.atoms(sympy.Float), key=float),
                                                                         (0.5, 1.6, 0.8, 1.3, 0.6))})
    settings = cal.CalibrationSettings(requests_per_stage=0, max_iterations=8, warmup_s=0.0)
    result = cal.calibrate(start, exps, settings=settings)
    first = result.history[0]["replayed_loss"]
    assert first > 100.0 and result.loss < 0.05 * first
    errors = [abs(e) for w in result.errors.values() for m in w.values() for e in (m["e2e_err"], m["itl_err"])]
    assert max(errors) < 5.0   # the demo's measurements are 60-240 requests per stage: ~2 % sampling noise
    assert result.overheads["queue_overhead_s"] == pytest.approx(QUEUE_OVERHEAD_S, abs=0.002)
    weight = sympy.Symbol("rl_weight_load")   # the dominant term: its multiplier comes back
    assert isinstance(result.expr, sympy.Max)    # calibrated under the roofline floor
    (fitted,) = [a for a in result.expr.args if a != sympy.Symbol("rl_bound")]
    assert float(fitted.coeff(weight)) == pytest.approx(1.25, rel=0.05)


def test_the_cli_writes_an_artifact_that_replays_and_refuses_to_overwrite(demo_root, tmp_path, capsys):
    exps = [str(p) for p in _exps(demo_root, "dense-8b-tp1-code", "moe-64x1b-tp1-chat")]
    artifact = tmp_path / "law.json"
    artifact.write_text(json.dumps(_artifact_of(law_expression() * 1.2)))
    out = tmp_path / "cal"
    argv = [str(artifact), "--experiments", *exps, "--iterations", "2", "--requests", "0", "--out", str(out)]
    assert _run(cal.main, argv) == 0
    doc = json.loads((out / "artifact.json").read_text())
    assert doc["schema"] == "stepml-artifact/1" and doc["overheads"]["queueing_us"] > 0
    assert set(doc["calibration"]["errors"]) == {Path(e).name for e in exps}
    assert doc["calibration"]["history"] and doc["scheduler"]["async_scheduling"] is True
    assert (out / cal.STATE_FILE).is_file()
    capsys.readouterr()
    assert _run(cal.main, argv) == 2
    assert "already holds a calibration" in capsys.readouterr().err
    from discovery.formula import load_artifact

    _, predictor = load_artifact(out)
    result = replay_experiment(exps[0], predictor, 0, async_scheduling=True)
    assert np.isfinite(result.errors("stage_0")["e2e_err"])


def test_resume_continues_from_the_saved_state(demo_root, tmp_path):
    exps = [str(p) for p in _exps(demo_root, "dense-8b-tp1-code")]
    artifact = tmp_path / "law.json"
    artifact.write_text(json.dumps(_artifact_of(law_expression() * 0.8)))
    base = [str(artifact), "--experiments", *exps, "--requests", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _run(cal.main, base + ["--iterations", "3", "--out", str(straight)]) == 0
    assert _run(cal.main, base + ["--iterations", "1", "--out", str(stopped)]) == 0
    (stopped / "artifact.json").unlink()  # as if killed before the end
    state = json.loads((stopped / cal.STATE_FILE).read_text())
    state["settings"]["max_iterations"] = 3
    (stopped / cal.STATE_FILE).write_text(json.dumps(state))
    assert _run(cal.main, base + ["--iterations", "3", "--out", str(stopped), "--resume"]) == 0
    a = json.loads((straight / "artifact.json").read_text())
    b = json.loads((stopped / "artifact.json").read_text())
    assert a["expression"]["srepr"] == b["expression"]["srepr"]


@pytest.mark.parametrize("argv, message", [
    (["--experiments", "/nonexistent/exp"], "experiment directory not found"),
    (["--experiments", "EXP", "--seed", "-1"], "--seed"),
    (["--experiments", "EXP", "--budget", "nan"], "--budget"),
    (["--experiments", "EXP", "--iterations", "0"], "--iterations"),
])
def test_bad_input_is_one_line(argv, message, demo_root, tmp_path, capsys):
    artifact = tmp_path / "law.json"
    artifact.write_text(json.dumps(_artifact_of(law_expression())))
    exp = str(_exps(demo_root, "dense-8b-tp1-code")[0])
    argv = [exp if a == "EXP" else a for a in argv]
    assert _run(cal.main, [str(artifact), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_folds_hold_out_each_group_and_refuse_one_group(demo_root):
    exps = _exps(demo_root, "dense-8b", "moe-8x7b")
    folds = gen.folds(exps, "model")
    assert [g for g, _, _ in folds] == ["demo/demo-dense-8b", "demo/demo-moe-8x7b"]
    for _, train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == len(exps)
    with pytest.raises(Exception, match="only one group"):
        gen.folds(_exps(demo_root, "dense-8b"), "model")


def test_generalize_by_workload_prints_the_documented_json(demo_root, capsys):
    exps = [str(p) for p in _exps(demo_root, "dense-8b", "dense-34b")]
    argv = ["--by", "workload", "--experiments", *exps, "--budget", "0", "--iterations", "1", "--requests", "0",
            "--priors", "1", "--json"]
    assert _run(gen.main, argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["by"] == "workload" and set(doc["folds"]) == {"chat", "code"}
    for fold in doc["folds"].values():
        assert len(fold["experiments"]) == 2
        for errs in fold["experiments"].values():
            assert {"e2e_err", "ttft_err", "itl_err"} <= set(errs)
    assert {"e2e_mean", "e2e_max", "ttft_mean", "itl_mean", "per_group"} <= set(doc["summary"])
    assert doc["summary"]["e2e_mean"] < 15.0


def test_generalize_with_seeds_scores_the_mean_of_the_draws(demo_root, capsys):
    exps = [str(p) for p in _exps(demo_root, "dense-8b-tp1-chat", "dense-8b-tp1-code")]
    argv = ["--by", "workload", "--experiments", *exps, "--budget", "0", "--iterations", "1", "--requests", "0",
            "--priors", "1", "--seeds", "2", "--json"]
    assert _run(gen.main, argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["seeds"] == 2
    for fold in doc["folds"].values():
        for rows in (fold["experiments"], fold["baseline"]):
            for row in rows.values():
                spread = row["seed_spread"]
                assert spread["seeds"] == [0, 1] and len(set(spread["ttft_err"])) == 2
                for key in ("e2e_err", "ttft_err", "itl_err"):
                    assert row[key] == pytest.approx(abs(np.mean(spread[key])))
                m = row["means"]["e2e"]
                assert m["predicted"] == pytest.approx(m["measured"] * (1 + row["signed"]["e2e_err"] / 100))
    assert _run(gen.main, argv[:-3] + ["--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_a_held_out_row_is_the_mean_of_its_draws_and_the_table_shows_their_range():
    first = {"signed": {"e2e_err": 1.0, "ttft_err": -20.0, "itl_err": 0.5}, "measured": {"e2e": 5.0, "ttft": 0.1,
             "itl": 0.01}, "saturated": False, "extrapolated": False, "outside": "", "load": None, "stage_errors": {}}
    row = gen._row([first, {"signed": {"e2e_err": 2.0, "ttft_err": 10.0, "itl_err": 0.7}}], seed=4)
    assert row["signed"] == pytest.approx({"e2e_err": 1.5, "ttft_err": -5.0, "itl_err": 0.6})
    assert row["ttft_err"] == pytest.approx(5.0) and row["seed_spread"]["seeds"] == [4, 5]
    assert row["means"]["e2e"] == pytest.approx({"predicted": 5.0 * 1.015, "measured": 5.0})
    single = gen._row([first], seed=4)
    assert single["ttft_err"] == pytest.approx(20.0) and single["seed_spread"] is None
    fold = gen.FoldResult("g", ("a",), ("x", "y"), "f", {"queue_overhead_s": 0.0, "end_overhead_s": 0.0}, 1.0, {},
                          {"x": row, "y": single}, "b", {"x": single, "y": single}, 1.0)
    lines = gen.table([fold]).splitlines()
    assert lines[1].rstrip().endswith("-20.0 .. +10.0") and ".." not in lines[2]      # one draw: no range
    assert any(line.startswith("TTFT% over draws:") for line in lines)


def _artifact_of(expr) -> dict:
    """A minimal artifact document for a formula over catalogue features."""
    used = sorted(str(s) for s in expr.free_symbols)
    return {"schema": "stepml-artifact/1", "name": "law",
            "expression": {"srepr": sympy.srepr(expr)},
            "features": [{"name": f, "definition_srepr": sympy.srepr(catalog.get_feature(f).sympy_expr())}
                         for f in used]}


def test_the_roofline_floor_wraps_once_and_keeps_the_fit_physical(demo_root):
    floored = cal.with_roofline_floor(law_expression())
    assert isinstance(floored, sympy.Max) and sympy.Symbol("rl_bound") in floored.args
    assert cal.with_roofline_floor(floored) == floored
    # a law at half its size is below the roofline on big batches; the floor lifts exactly those steps
    exp = _exps(demo_root, "dense-34b-tp2-code")[0]
    half = FormulaPredictor(law_expression() * 0.5, tuple(catalog.registry()))
    kept = replay_experiment(exp, half, 0, keep_sim=True)
    steps, constants = kept.sim.steps, kept.constants
    formula = cal.ParamFormula(cal.with_roofline_floor(law_expression() * 0.5))
    plain = cal.ParamFormula(law_expression() * 0.5)
    cols = {**{c: steps[c].to_numpy(dtype=float) for c in steps.columns if c.startswith(("batch.", "kv."))},
            **constants}
    n = len(steps)
    bound = cal.ParamFormula(sympy.Symbol("rl_bound") + sympy.Float(0.0))
    lifted, raw, floor = (f.durations(f.x0, cols, n) for f in (formula, plain, bound))
    assert np.all(lifted >= floor - 1e-9) and np.allclose(lifted, np.maximum(raw, floor))
    assert np.any(raw < floor)                       # the floor matters on this workload


def test_a_calibrated_artifact_exports_in_full_and_passes_the_audit(tmp_path, capsys):
    """The split saved beside a calibrated artifact makes it exportable (all languages) and auditable."""
    from discovery import audit, export
    from features.demo import demo_steps

    steps = tmp_path / "steps.parquet"
    demo_steps().to_parquet(steps)
    ids = sorted(set(demo_steps()["experiment_id"].astype(str)))
    law = law_expression().subs(sympy.Symbol("rl_allreduce"), 0)     # BLIS's hardware has no NVLink bandwidth
    doc = _artifact_of(cal.with_roofline_floor(law))
    doc.update({"calibration": {"experiments": ids[:-1]}, "scheduler": {"async_scheduling": True},
                "overheads": {"queueing_us": 9000.0, "post_decode_us": 2000.0, "output_token_us": 0.0}})
    cal.write_artifact(doc, tmp_path / "cal", steps, ids[:-1])
    saved = json.loads((tmp_path / "cal" / "artifact.json").read_text())
    assert (saved["split"], saved["fold"]) == ("calibration", "held-out")
    assert 0 < saved["metrics"]["test_mape"] < 10          # the held-out experiment's steps, never calibrated on
    assert _run(export.main, [str(tmp_path / "cal" / "artifact.json"), "--out", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    assert "c check: pass" in out and "go check: pass" in out and "QueueingTime 9000 µs" in out
    exported = json.loads((tmp_path / "full" / "artifact.json").read_text())
    assert exported["expression"]["srepr"] == saved["expression"]["srepr"]      # calibrated constants kept as they are
    assert exported["rounding"]["applied"] is False
    assert _run(audit.main, [str(tmp_path / "full"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["invariants"]["INV-M-7"]["pass"] is True
    md = (tmp_path / "full" / "AUDIT.md").read_text()
    assert "Queueing (send → scheduler) 9000 µs" in md and "not refitted or rounded" in md
    capsys.readouterr()
    assert _run(export.main, [str(tmp_path / "cal" / "artifact.json"), "--out", str(tmp_path / "full")]) == 2
    assert "already holds an export" in capsys.readouterr().err


def test_parsimony_prefers_fewer_constants_only_within_the_tolerance():
    from types import SimpleNamespace

    x, y = sympy.symbols("batch_size num_layers")
    small = SimpleNamespace(expr=sympy.Float(2.0) * x + sympy.Float(5.0), loss=10.4)
    big = SimpleNamespace(expr=sympy.Float(2.0) * x + sympy.Float(3.0) * y + sympy.Float(5.0), loss=10.0)
    assert gen.parsimonious([big, small]) is small                     # 4 % worse, one constant fewer
    assert gen.parsimonious([big, SimpleNamespace(expr=small.expr, loss=10.6)]).expr == big.expr  # 6 % worse


def test_go_tests_of_a_calibrated_artifact_cover_every_calibration_model(data_root, tmp_path):
    """The Go test models are those of the experiments a formula was calibrated on (7B and Mixtral too), not
    only of its step data (70B and 34B); calibration ids that cannot be found fall back to the step data."""
    from discovery.blis_export import artifact_models

    ids = sorted(p.name for p in (data_root / "blis" / "experiments").iterdir() if "reasoning" not in p.name)
    doc = {"calibration": {"experiments": ids}, "split": "calibration"}
    models = artifact_models(doc, tmp_path / "artifact.json")
    assert sorted(models.models) == ["codellama-34b tp2", "llama-2-70b tp4", "llama-2-70b-hf tp4", "llama-2-7b tp1",
                                     "mixtral-8x7b-v0-1 tp2"]
    with pytest.raises(StepMLError):
        artifact_models({"calibration": {"experiments": ["no-such-experiment"]}}, tmp_path / "artifact.json")
