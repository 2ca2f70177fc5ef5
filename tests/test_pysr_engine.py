"""PySR: the space → PySRRegressor mapping (pure, no Julia), the missing-Julia error, and --import-pysr."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import sympy

from discovery import search
from discovery.candidate import build_problem
from discovery.engines import pysr_engine
from discovery.engines.pysr_engine import (PySREngine, PySRSettings, julia_status, pysr_kwargs,
                                           pysr_unsupported)
from discovery.rundir import expr_of
from features.cli import run
from features.dataset import load_dataset
from features.splits import make_splits
from search_spaces.operators import OPERATORS, parse_formula
from search_spaces.spaces import SearchSpace, get_space


def training_loss(expr, problem):
    """(loss, MRE, violation) of a formula on the problem's training rows, by the shared objective."""
    from search_spaces.numeric import lambdify_formula
    from search_spaces.objective import Objective

    return Objective(problem).formula_loss(lambdify_formula(expr, problem.features))


ROOT = Path(__file__).resolve().parents[1]
ROOF = ("rl_prefill_compute", "rl_decode_compute", "rl_weight_load", "rl_kv_read", "rl_allreduce")
RELATIVE = "loss(prediction, target) = abs(prediction - target) / abs(target)"


def _run(main, argv):
    with pytest.raises(SystemExit) as exc:
        run(main, argv, prog="test")
    return exc.value.code


@pytest.fixture
def no_julia(monkeypatch):
    monkeypatch.setattr(pysr_engine, "find_julia", lambda: None)
    monkeypatch.setattr(pysr_engine, "_STATUS", {})


# -- the mapping ---------------------------------------------------------------------------------

def test_roofline_space_maps_to_pysr_kwargs_exactly():
    kwargs = pysr_kwargs(get_space("roofline"), ROOF, {"seed": 3, "budget_s": 90, "generations": 7,
                                                        "population": 33, "islands": 4})
    assert kwargs == {
        "binary_operators": ["+", "*", "max", "min"],
        "unary_operators": [],
        "extra_sympy_mappings": {},
        "complexity_of_operators": {"+": 1, "*": 1, "max": 2, "min": 2},
        "complexity_of_constants": 1,
        "complexity_of_variables": 1,
        "constraints": {},
        "nested_constraints": {},
        "maxsize": 21,
        "maxdepth": 6,
        "elementwise_loss": RELATIVE,
        "timeout_in_seconds": 90.0,
        "niterations": 7,
        "populations": 4,
        "population_size": 33,
        "random_state": 3,
        "deterministic": True,
        "parallelism": "serial",
        "precision": 64,
        "model_selection": "best",
        "verbosity": 0,
        "progress": False,
        "variable_names": list(ROOF),
        "guesses": ["1.0 + 1.0*max(rl_decode_compute + rl_prefill_compute, rl_kv_read + rl_weight_load)"
                    " + 1.0*rl_allreduce",
                    "1.0 + 1.0*rl_weight_load + 1.0*rl_prefill_compute + 1.0*rl_kv_read"],
    }


def test_every_table_operator_weighted_loss_and_cluster():
    space = SearchSpace("all", "", ("prefill_tokens", "decode_tokens"), tuple(OPERATORS), max_size=20,
                        max_depth=5, loss="relative_weighted",
                        seed_formulas=("c0 + sqrt(prefill_tokens) - c1*decode_tokens", "c0 + exp(prefill_tokens)"))
    kwargs = pysr_kwargs(space, ("prefill_tokens", "decode_tokens"),
                         {"cluster_manager": "slurm", "procs": 16, "output_directory": "/runs/x/pysr",
                          "run_id": "r1"})
    mappings = kwargs.pop("extra_sympy_mappings")
    assert set(mappings) == {"sqrt_abs", "log1p_abs"}
    x = sympy.Symbol("x")
    assert mappings["sqrt_abs"](x) == sympy.sqrt(sympy.Abs(x))
    assert kwargs == {
        "binary_operators": ["+", "-", "*", "/", "max", "min"],
        "unary_operators": ["square", "cube", "sqrt_abs(x) = sqrt(abs(x))", "log1p_abs(x) = log1p(abs(x))",
                            "relu", "neg"],
        "complexity_of_operators": {"+": 1, "-": 1, "*": 1, "/": 2, "max": 2, "min": 2, "square": 2, "cube": 3,
                                    "sqrt_abs": 3, "log1p_abs": 3, "relu": 2, "neg": 1},
        "complexity_of_constants": 1,
        "complexity_of_variables": 1,
        "constraints": {"sqrt_abs": 10, "log1p_abs": 10, "square": 10, "cube": 10, "/": (-1, 10)},
        "nested_constraints": {"sqrt_abs": {"sqrt_abs": 0, "log1p_abs": 0},
                               "log1p_abs": {"sqrt_abs": 0, "log1p_abs": 0},
                               "square": {"square": 0, "cube": 0}, "cube": {"square": 0, "cube": 0}},
        "maxsize": 20,
        "maxdepth": 6,
        "elementwise_loss": "loss(prediction, target, weight) = weight * abs(prediction - target) / abs(target)",
        "timeout_in_seconds": 60.0,
        "niterations": 1_000_000_000,  # no generation limit by default: the timeout ends PySR
        "populations": 2,
        "population_size": 200,
        "random_state": 0,
        "parallelism": "multiprocessing",
        "procs": 16,
        "cluster_manager": "slurm",
        "output_directory": "/runs/x/pysr",
        "run_id": "r1",
        "precision": 64,
        "model_selection": "best",
        "verbosity": 0,
        "progress": False,
        "variable_names": ["prefill_tokens", "decode_tokens"],
        "guesses": ["1.0 + sqrt_abs(prefill_tokens) - 1.0*decode_tokens"],
    }
    # dotted feature names reach Julia as safe identifiers
    assert pysr_kwargs(space, ("batch.decode_tokens",))["variable_names"] == ["batch__decode_tokens"]
    unsupported = pysr_unsupported(space, ("prefill_tokens", "decode_tokens"))
    assert any("monotonicity" in u for u in unsupported)
    assert any("'c0 + exp(prefill_tokens)'" in u for u in unsupported)
    # the weighted loss follows the data: no weights → the plain relative loss
    assert pysr_kwargs(space, ("prefill_tokens",), {"weighted": False})["elementwise_loss"] == RELATIVE


def test_settings_are_checked():
    with pytest.raises(Exception, match="unknown cluster manager"):
        PySRSettings(cluster_manager="kubernetes")
    with pytest.raises(Exception, match="deterministic runs are serial"):
        PySRSettings(deterministic=True, procs=4)
    with pytest.raises(Exception, match="unknown PySR setting"):
        pysr_kwargs(get_space("linear"), ("prefill_tokens",), {"niterations": 3})
    multi = pysr_kwargs(get_space("linear"), ("prefill_tokens",), {"deterministic": False})
    assert multi["parallelism"] == "multithreading" and "deterministic" not in multi


# -- Julia -----------------------------------------------------------------------------------------

def test_missing_julia_is_one_line_exit_2(no_julia, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(search.main, ["--space", "linear", "--engine", "pysr", "--run-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("test: error: PySR needs Julia, which is not available here")
    assert "install Julia" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_cli_without_julia_in_a_subprocess(tmp_path):
    if pysr_engine.find_julia() is not None:
        pytest.skip("a Julia is installed here")
    proc = subprocess.run([sys.executable, "-m", "discovery.search", "--space", "linear", "--engine", "pysr",
                           "--run-dir", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "PySR needs Julia" in lines[0] and "Traceback" not in proc.stderr


def test_failed_or_slow_import_is_reported(monkeypatch):
    monkeypatch.setattr(pysr_engine, "find_julia", lambda: "/opt/julia/bin/julia")
    monkeypatch.setattr(pysr_engine, "_STATUS", {})
    seen = {}

    def failing(cmd, **kw):
        seen.update(kw)
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nImportError: libjulia not found\n")

    monkeypatch.setattr(pysr_engine.subprocess, "run", failing)
    ok, message = julia_status(12.0)
    assert not ok and "(import pysr failed: ImportError: libjulia not found)" in message
    assert seen["timeout"] == 12.0 and seen["env"]["PYTHON_JULIAPKG_OFFLINE"] == "yes"

    def slow(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(pysr_engine.subprocess, "run", slow)
    ok, message = julia_status(5.0)
    assert not ok and "more than 5 s" in message


def test_cluster_option_is_pysr_only(tmp_path, capsys):
    assert _run(search.main, ["--space", "linear", "--cluster", "slurm", "--run-dir", str(tmp_path / "a")]) == 2
    assert "--cluster applies to a search with --engine pysr only" in capsys.readouterr().err
    assert _run(search.main, ["--space", "linear", "--engine", "pysr", "--cluster", "k8s",
                              "--run-dir", str(tmp_path / "b")]) == 2
    assert "unknown --cluster 'k8s'" in capsys.readouterr().err


def test_engine_with_a_stand_in_pysr(monkeypatch):
    """Without Julia, a stand-in ``pysr`` module checks what the engine hands PySR and reads back."""
    calls = {}

    class FakeRegressor:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def fit(self, X, y, **kwargs):
            calls["fit"] = (X.shape, y.shape, kwargs)
            self.equations_ = pd.DataFrame({"complexity": [1, 5, 5], "loss": [0.3, 0.2, 0.25],
                                            "equation": ["5000.0", "(x1 * 250.0) + 5600.0", "bad((x0"]})
            return self

    monkeypatch.delenv("PYTHON_JULIAPKG_OFFLINE", raising=False)  # the engine sets it; restored after the test
    monkeypatch.setitem(sys.modules, "pysr", types.SimpleNamespace(PySRRegressor=FakeRegressor))
    monkeypatch.setattr(pysr_engine, "julia_status", lambda timeout_s=0: (True, "stand-in"))
    dataset = load_dataset(None)
    split = make_splits(dataset.frame, "temporal", dataset.content_hash())[0]
    problem = build_problem(dataset, split, get_space("linear"))
    engine = PySREngine({"budget_s": 30, "seed": 5})
    cands = engine.search(problem)
    assert calls["init"]["random_state"] == 5 and calls["init"]["parallelism"] == "serial"
    assert os.environ["PYTHON_JULIAPKG_OFFLINE"] == "yes"
    assert "variable_names" not in calls["init"]
    shape, yshape, fit = calls["fit"]
    assert shape == (len(problem.y_train), 2) and fit == {"variable_names": ["prefill_tokens", "decode_tokens"]}
    assert [str(c.expr) for c in cands] == ["5000.00000000000", "250.0*decode_tokens + 5600.0"]
    assert all(c.engine == "pysr" for c in cands)
    assert math.isclose(cands[1].loss, training_loss(cands[1].expr, problem)[0])
    stats = engine.stats_
    assert (stats["equations"], stats["candidates"], stats["skipped_unparsable"]) == (3, 2, 1)


# -- --import-pysr -----------------------------------------------------------------------------------

HOF_X = ("Complexity,Loss,Equation\n1,4.1e6,5000.0\n5,1.2e6,(x1 * 250.0) + 5600.0\n"
         "9,9.0e5,((x0 * 9.2) + (x1 * 247.0)) + 5440.0\n")
HOF_NAMES = HOF_X.replace("x0", "prefill_tokens").replace("x1", "decode_tokens")


def _import(tmp_path, path, name="run", extra=()):
    out = tmp_path / name
    code = _run(search.main, ["--space", "linear", "--import-pysr", str(path), "--run-dir", str(out), "--quiet",
                              *extra])
    return code, out


def test_import_x_names_and_feature_names_give_the_same_run(tmp_path):
    a = tmp_path / "pysr_a"
    a.mkdir()
    (a / "hall_of_fame.csv").write_text(HOF_X)
    b = tmp_path / "named.csv"
    b.write_text(HOF_NAMES)
    code_a, run_a = _import(tmp_path, a, "ra")
    code_b, run_b = _import(tmp_path, b, "rb")
    assert code_a == code_b == 0
    hof_a, hof_b = pd.read_csv(run_a / "hall_of_fame.csv"), pd.read_csv(run_b / "hall_of_fame.csv")
    assert len(hof_a) == 3 and (hof_a["engine"] == "pysr").all()
    assert (hof_a["provenance"] == f"pysr import {a / 'hall_of_fame.csv'}").all()
    assert (hof_b["provenance"] == f"pysr import {b}").all()
    cols = ["Complexity", "Loss", "Equation", "val_mape", "test_mape", "sympy", "front"]
    pd.testing.assert_frame_equal(hof_a[cols], hof_b[cols])
    imported = parse_formula("(x1 * 250.0) + 5600.0", ["prefill_tokens", "decode_tokens"])
    info = json.loads((run_a / "run.json").read_text())
    assert info["engines"] == ["pysr"] and info["imported_from"] == str(a / "hall_of_fame.csv")
    assert info["engine_stats"]["pysr"]["equations"] == 3
    # the imported formula's constants are refitted at rescoring (c0 + c1·decode_tokens keeps its shape) and
    # the loss is recomputed as the training MRE, the same number DEAP would report, lower than PySR's constants'
    row = hof_a[hof_a["Complexity"] == 5].iloc[0]
    expr = parse_formula(row["Equation"], ["prefill_tokens", "decode_tokens"])
    assert expr.free_symbols == imported.free_symbols and sympy.srepr(expr) != sympy.srepr(imported)
    dataset = load_dataset(None)
    split = make_splits(dataset.frame, "temporal", dataset.content_hash())[0]
    problem = build_problem(dataset, split, get_space("linear"))
    assert math.isclose(row["Loss"], 100 * training_loss(expr_of(row), problem)[0], rel_tol=1e-12)
    assert row["Loss"] < 100 * training_loss(imported, problem)[0]
    assert row["Loss"] < 100.0  # a percentage, not PySR's own 1.2e6


def test_import_prefers_the_bak_file(tmp_path):
    d = tmp_path / "pysr"
    d.mkdir()
    (d / "hall_of_fame.csv").write_text("Complexity,Loss,Equation\n3,1.0,x0 * 2.0\n")
    (d / "hall_of_fame.csv.bak").write_text(HOF_X)
    code, out = _import(tmp_path, d)
    assert code == 0
    assert len(pd.read_csv(out / "hall_of_fame.csv")) == 3
    assert json.loads((out / "run.json").read_text())["imported_from"].endswith("hall_of_fame.csv.bak")


@pytest.mark.parametrize("text, message", [
    (HOF_X + "11,1.0,((x0 * 2.5) +\n", "row 4 (Complexity 11): cannot parse formula"),
    (HOF_X + "7,1.0,exp(x0) + x7\n", "row 4 (Complexity 7)"),
    ("complexity,loss,equation\n1,1.0,5000.0\n", "missing column(s) Complexity, Loss, Equation"),
    ("Complexity,Equation\n1,5000.0\n", "missing column(s) Loss"),
])
def test_bad_pysr_files_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "hof.csv"
    path.write_text(text)
    code, out = _import(tmp_path, path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_import_of_a_missing_path(tmp_path, capsys):
    code, _ = _import(tmp_path, tmp_path / "nowhere")
    assert code == 2 and "no such PySR run directory" in capsys.readouterr().err
    empty = tmp_path / "emptydir"
    empty.mkdir()
    code, _ = _import(tmp_path, empty)
    assert code == 2 and "no hall_of_fame.csv" in capsys.readouterr().err
