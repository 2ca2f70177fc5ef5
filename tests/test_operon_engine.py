"""The Operon engine: space translation, candidates, determinism, budget, and deap+operon runs (demo data)."""
from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import sympy

pytest.importorskip("pyoperon")

from discovery import search  # noqa: E402
from discovery.candidate import build_problem  # noqa: E402
from discovery.engines import ENGINES, make_engine  # noqa: E402
from discovery.engines.operon_engine import (OperonEngine, OperonSettings, operon_options,  # noqa: E402
                                             operon_unsupported, seed_trees)
from features.cli import run  # noqa: E402
from features.dataset import load_dataset  # noqa: E402
from features.splits import make_splits  # noqa: E402
from search_spaces.objective import complexity  # noqa: E402
from search_spaces.spaces import SearchSpace, get_space  # noqa: E402


def training_loss(expr, problem):
    """(loss, MRE, violation) of a formula on the problem's training rows, by the shared objective."""
    from search_spaces.numeric import lambdify_formula
    from search_spaces.objective import Objective

    return Objective(problem).formula_loss(lambdify_formula(expr, problem.features))


TINY = dict(population=16, islands=1, generations=3, budget_s=30.0, seed=0)


@pytest.fixture(scope="module")
def demo():
    dataset = load_dataset(None)
    split = make_splits(dataset.frame, "temporal", dataset.content_hash())[0]
    return dataset, split


def _problem(demo, space):
    dataset, split = demo
    return build_problem(dataset, split, space if isinstance(space, SearchSpace) else get_space(space), seed=0)


def _run(main, argv):
    with pytest.raises(SystemExit) as exc:
        run(main, argv, prog="test")
    return exc.value.code


# -- translation -----------------------------------------------------------------------------

def test_options_translate_the_space():
    space = get_space("dense")
    features = ("prefill_tokens", "decode_tokens")
    opts = operon_options(space, features, OperonSettings(population=50, islands=3, generations=7, budget_s=12.5,
                                                          seed=42, threads=2))
    assert opts["allowed_symbols"] == "add,sub,mul,div,fmax,fmin,square,sqrtabs,constant,variable"
    assert (opts["max_length"], opts["max_depth"], opts["max_complexity"]) == (25, 7, 25)
    assert opts["population_size"] == opts["pool_size"] == 150
    assert (opts["generations"], opts["max_time"], opts["random_state"], opts["n_threads"]) == (7, 12, 42, 2)
    assert opts["objectives"] == ["relative", "complexity"]
    assert opts["coefficient_range"] == (-2.0, 2.0)
    assert opts["variable_names"] == ["prefill_tokens", "decode_tokens"]
    assert operon_options(space, features, OperonSettings(objective="r2"))["objectives"] == ["r2", "complexity"]
    assert operon_unsupported(space, OperonSettings()) == []


def test_inexpressible_operators_and_r2_are_reported():
    space = SearchSpace("odd", "", ("prefill_tokens", "decode_tokens"), ("add", "mul", "cube", "log1p", "relu"))
    lines = operon_unsupported(space, OperonSettings())
    assert len(lines) == 1 and "cube, log1p, relu" in lines[0]
    assert operon_options(space, ("prefill_tokens",), OperonSettings())["allowed_symbols"] == \
        "add,mul,constant,variable"
    r2 = " ".join(operon_unsupported(space, OperonSettings(objective="r2")))
    assert "loss relative" in r2 and "monotonicity in prefill_tokens" in r2
    with pytest.raises(Exception, match="objective"):
        OperonSettings(objective="mse")


def test_seed_trees_keep_operand_order(demo):
    """Operon stores ``A op B`` as ``B, A, op``: a seed with sub/div/max evaluates as its formula."""
    import pyoperon as op

    from search_spaces.numeric import lambdify_formula
    from search_spaces.operators import parse_formula

    space = get_space("dense")
    problem = _problem(demo, space)
    feats = problem.features
    X = np.column_stack([problem.X_train[f] for f in feats] + [problem.y_train])
    ds = op.Dataset(np.asfortranarray(X))
    inputs = [v.Hash for v in sorted(ds.Variables, key=lambda v: v.Index)[:-1]]
    opts = operon_options(space, feats, OperonSettings())
    text = "c0 + 3*max(kv_tokens - prefill_tokens, decode_tokens / (batch_size + 2)) - sqrt(kv_tokens)"
    trees, bad = seed_trees(op, [text, "c0 + cube(kv_tokens)"], feats, inputs, opts)
    assert len(trees) == 1 and bad == ["'c0 + cube(kv_tokens)'"]
    got = np.asarray(op.Evaluate(op.DispatchTable(), trees[0], ds, op.Range(0, ds.Rows)), dtype=float)
    want = lambdify_formula(parse_formula(text.replace("c0", "1.0"), feats), feats)(problem.X_train)
    np.testing.assert_allclose(got, want, rtol=1e-5)


# -- candidates ------------------------------------------------------------------------------

def test_candidates_are_table_formulas_with_recomputed_loss(demo):
    problem = _problem(demo, "dense")
    engine = make_engine("operon", dict(TINY, generations=4))
    cands = engine.search(problem)
    assert cands and all(c.engine == "operon" for c in cands)
    assert [c.complexity for c in cands] == sorted(c.complexity for c in cands)
    losses = [c.loss for c in cands]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)  # a Pareto set
    allowed = {sympy.Symbol(f) for f in problem.features}
    for c in cands:
        assert c.expr.free_symbols <= allowed
        assert c.complexity == complexity(c.expr)
        assert math.isclose(c.loss, training_loss(c.expr, problem)[0], rel_tol=1e-9)
        assert not c.expr.has(sympy.Abs(sympy.Abs(sympy.Symbol("x"))))
    stats = engine.stats_
    assert stats["generations"] == 4 and stats["stopped_by"] == "generations"
    assert stats["evaluations"] == 16 * 5 and stats["unsupported"] == []


def test_same_seed_same_candidates(demo):
    problem = _problem(demo, "roofline")
    first = OperonEngine(OperonSettings(**TINY)).search(problem)
    again = OperonEngine(OperonSettings(**TINY)).search(problem)
    assert [(c.key, c.loss, c.complexity) for c in first] == [(c.key, c.loss, c.complexity) for c in again]


def test_budget_is_respected(demo):
    problem = _problem(demo, "dense")
    engine = OperonEngine(OperonSettings(**dict(TINY, population=50, generations=10 ** 6, budget_s=2.0)))
    t0 = time.perf_counter()
    cands = engine.search(problem)
    assert time.perf_counter() - t0 < 3.5
    assert cands and engine.stats_["stopped_by"] == "budget"


def test_unsupported_operators_warn_and_never_appear(demo, capsys):
    space = dataclasses.replace(get_space("linear"), name="cubic", operators=("add", "mul", "cube"), max_size=9,
                                max_depth=3)
    cands = OperonEngine(OperonSettings(**TINY)).search(_problem(demo, space))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: operon engine cannot express: operators cube")
    assert cands and not any(c.expr.has(sympy.Pow) and any(p.exp == 3 for p in c.expr.atoms(sympy.Pow))
                             for c in cands)


def test_finished_result_is_checkpointed_and_resumed(demo):
    problem = _problem(demo, "linear")
    states = []
    engine = OperonEngine(OperonSettings(**TINY))
    cands = engine.search(problem, checkpoint=states.append)
    assert len(states) == 1 and states[0]["finished"]
    again = OperonEngine(OperonSettings(**TINY))
    restored = again.search(problem, resume_state=states[0])
    assert again.stats_["resumed"] and [c.key for c in restored] == [c.key for c in cands]
    with pytest.raises(Exception, match="different problem"):
        OperonEngine(OperonSettings(**dict(TINY, seed=1))).search(problem, resume_state=states[0])


# -- the search CLI -----------------------------------------------------------------------------

def test_operon_is_registered():
    assert {"deap", "operon", "pysr"} <= set(ENGINES)


def test_deap_and_operon_in_one_run(tmp_path):
    out = tmp_path / "run"
    argv = ["--space", "linear", "--engine", "deap,operon", "--generations", "3", "--population", "16",
            "--islands", "1", "--budget", "20", "--seed", "1", "--quiet", "--run-dir", str(out)]
    assert _run(search.main, argv) == 0
    hof = pd.read_csv(out / "hall_of_fame.csv")
    assert set(hof["engine"]) == {"deap", "operon"}
    assert hof.loc[hof["engine"] == "operon", "provenance"].str.startswith("operon front gen").all()
    info = json.loads((out / "run.json").read_text())
    assert info["engines"] == ["deap", "operon"]
    assert set(info["engine_stats"]) == {"deap", "operon"}
    assert info["engine_stats"]["operon"]["unsupported"] == []
    assert info["engine_stats"]["operon"]["options"]["max_time"] <= 10


def test_node_types_follow_the_cpp_names():
    """pyoperon 0.6.2 labels fmin/fmax the other way round: the engine resolves them by the node's name."""
    import pyoperon as op

    from discovery.engines.operon_engine import node_types

    types = node_types(op)
    assert op.Node(types["fmax"]).Name == "fmax" and op.Node(types["fmin"]).Name == "fmin"
    ds = op.Dataset(np.asfortranarray(np.array([[10.0, 0.0], [200.0, 0.0]])))
    x = op.Node.Variable(1.0)
    x.HashValue = x.CalculatedHashValue = sorted(ds.Variables, key=lambda v: v.Index)[0].Hash
    tree = op.Tree([op.Node.Constant(100.0), x, op.Node(types["fmax"])]).UpdateNodes()
    np.testing.assert_allclose(op.Evaluate(op.DispatchTable(), tree, ds, op.Range(0, 2)), [100.0, 200.0])
