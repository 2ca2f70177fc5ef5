"""The Python API: StepTimeRegressor (scikit-learn's estimator checks, PySR's conventions) and run_search."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sympy
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from discovery import SearchResult, StepTimeRegressor, run_search
from discovery.rundir import read_hof
from features.errors import StepMLError

#: A budget that never runs out: the fits are deterministic.
TINY = dict(generations=1, population=8, islands=1, budget=600.0)


@parametrize_with_checks([StepTimeRegressor(**TINY)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_named_columns_give_named_formulas_and_pysr_like_tables():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"prefill_tokens": rng.uniform(0, 2000, 300), "decode_tokens": rng.uniform(1, 64, 300)})
    y = 5000.0 + 2.0 * X["prefill_tokens"] + 40.0 * X["decode_tokens"]
    model = StepTimeRegressor(space="linear", generations=3, population=24, islands=1, budget=600.0).fit(X, y)
    assert list(model.equations_.columns[:5]) == ["complexity", "loss", "equation", "score", "sympy_format"]
    assert model.equations_["complexity"].is_monotonic_increasing
    assert model.equations_["loss"].is_monotonic_decreasing  # a Pareto set, loss in percent
    expr = model.sympy()
    assert {s.name for s in expr.free_symbols} == {"prefill_tokens", "decode_tokens"}
    assert model.score(X, y) > 0.999 and model.equations_["loss"].iloc[model.best_index_] < 0.1
    assert "prefill" in model.latex() and list(model.feature_names_in_) == ["prefill_tokens", "decode_tokens"]
    assert isinstance(model.sympy(0), sympy.Expr)


def test_canonical_step_columns_compute_the_space_features():
    rng = np.random.default_rng(1)
    prefill = rng.integers(0, 2048, 400).astype(float) * (rng.random(400) < 0.4)
    decode = rng.integers(1, 64, 400).astype(float)
    X = pd.DataFrame({"batch.prefill_tokens": prefill, "batch.decode_tokens": decode,
                      "batch.scheduled_tokens": prefill + decode, "batch.num_prefill_reqs": (prefill > 0) * 1.0,
                      "batch.num_decode_reqs": decode, "kv.tokens_in_use": decode * 700.0 + prefill})
    y = pd.Series(5000.0 + 2.0 * prefill + 40.0 * decode) * (1 + 0.01 * rng.standard_normal(400))
    model = StepTimeRegressor(space="linear", generations=2, population=16, islands=1, budget=600.0).fit(X, y)
    assert set(model.features_) == {"prefill_tokens", "decode_tokens"}  # computed by the catalogue
    assert model.n_features_in_ == 6 and model.score(X, y) > 0.95
    from search_spaces.objective import relative_error

    mre = 100 * relative_error(model.predict(X), y.to_numpy())
    loss = model.equations_["loss"].iloc[model.best_index_]  # the training loss, probe penalty included
    assert loss / 11 - 1e-9 <= mre <= loss + 1e-9
    with pytest.raises(ValueError, match="DataFrame"):
        model.predict(X.to_numpy())


def test_params_clone_and_bad_input():
    model = StepTimeRegressor(**TINY)
    assert clone(model).get_params() == model.get_params()
    assert model.set_params(space="roofline").space == "roofline"
    X = np.ones((10, 2))
    with pytest.raises(ValueError, match="> 0"):
        StepTimeRegressor(**TINY).fit(X, -np.ones(10))
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        StepTimeRegressor(space="nope", **TINY).fit(X, np.ones(10))
    with pytest.raises(ValueError, match="model_selection"):
        StepTimeRegressor(model_selection="worst", **TINY).fit(X, np.ones(10))
    with pytest.raises(ValueError, match="operator"):
        StepTimeRegressor(**TINY).fit(pd.DataFrame({"max": [1.0, 2.0], "b": [1.0, 3.0]}), [1.0, 2.0])


def test_run_search_is_what_the_cli_writes(tmp_path):
    result = run_search(space="linear", seed=3, generations=2, population=16, islands=1, run_dir=tmp_path / "r")
    assert isinstance(result, SearchResult) and result.run_dir == tmp_path / "r"
    table = read_hof(result.run_dir)
    assert result.equations["Equation"].tolist() == table["Equation"].tolist()
    assert result.front and result.pick("best") in result.front
    assert result.reproducible and "reproducible" in result.reproduce_hint()
    assert result.info["loss_unit"] == "percent" and result.info["seed"] == 3
    with pytest.raises(StepMLError, match="already holds a run"):
        run_search(space="linear", run_dir=tmp_path / "r")
    with pytest.raises(StepMLError, match="unknown search option"):
        run_search(space="linear", generation=3)
