"""Tests for the DEAP tree-GP engine and the parallel mappers.

Most runs use the bundled synthetic demo data (exact per-step cycle times,
``max_gap=1``) in the roofline space with small populations; the constraint
tests use a hand-made one-feature problem whose numbers can be worked out by
hand.
"""
from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest
import sympy

from discovery.candidate import Problem, build_problem
from discovery.engines.deap_engine import DeapEngine, DeapSettings
from discovery.engines.deap_trees import EvalResult, TreeEvaluator
from discovery.engines.parallel import chunked, process_map, serial_map
from features.dataset import load_dataset
from features.errors import StepMLError
from features.splits import make_splits
from search_spaces.numeric import lambdify_formula
from search_spaces.objective import complexity, violation_fraction
from search_spaces.prefix import format_prefix, seed_nodes
from search_spaces.spaces import SearchSpace, get_space

SMALL = DeapSettings(population=40, generations=6, islands=2, migration_interval=2, migration_size=3,
                     budget_s=600.0, seed=11)


@pytest.fixture(scope="module")
def demo_problem() -> Problem:
    dataset = load_dataset(None, max_gap=1)
    return build_problem(dataset, make_splits(dataset.frame)[0], get_space("roofline"))


@pytest.fixture(scope="module")
def small_run(demo_problem):
    """One small search on the demo problem (reused by several tests)."""
    engine = DeapEngine(SMALL)
    calls = []
    candidates = engine.search(demo_problem, progress=lambda *args: calls.append(args))
    return engine, candidates, calls


def signature(candidates) -> list[tuple[str, str, int, str, int]]:
    """Everything a candidate prints, byte for byte (losses by repr)."""
    return [(str(c.expr), repr(c.loss), c.complexity, c.provenance, c.n_constants) for c in candidates]


def mre(expr: sympy.Expr, problem: Problem) -> float:
    pred = lambdify_formula(expr, problem.features)(problem.X_train)
    return float(np.mean(np.abs(pred - problem.y_train) / problem.y_train))


# --------------------------------------------------------------------------- toy problem


def toy_problem(mode: str, seeds: tuple[str, ...] = ("c0 - c1*x",), noise: float = 0.02) -> Problem:
    """y decreases in x (1000 − 5x, with noise); probes say a larger x must not predict less."""
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 100.0, 200)
    y = (1000.0 - 5.0 * x) * (1 + noise * rng.standard_normal(x.size))
    lo = np.linspace(0.0, 90.0, 10)
    space = SearchSpace("toy", "toy", ("x",), ("add", "sub", "mul"), max_size=9, max_depth=3,
                        constant_range=(-2.0, 2.0), constraint_mode=mode, seed_formulas=seeds)
    return Problem(space, ("x",), {"x": x}, y, None, {"x": x}, y, None,
                   probes={"x_axis": ({"x": lo}, {"x": lo + 10.0})})


# --------------------------------------------------------------------------- building blocks


def test_evaluator_optimises_constants_and_is_picklable(demo_problem):
    evaluator = TreeEvaluator(demo_problem, max_nfev=50)
    tree = "add(add(1.0, mul(1.0, rl_weight_load)), add(mul(1.0, rl_prefill_compute), mul(1.0, rl_kv_read)))"
    result = evaluator(tree)
    assert isinstance(result, EvalResult)
    assert result.tree != tree  # constants moved
    no_opt = TreeEvaluator(demo_problem, max_nfev=0)(tree)
    assert no_opt.tree == tree and result.loss < no_opt.loss
    assert result.loss < 0.05 and result.violation == 0.0 and result.node_evals > 0
    # the optimised constants print exactly: re-reading the string reproduces the loss bit for bit
    assert TreeEvaluator(demo_problem, max_nfev=0)(result.tree).loss == result.loss
    clone = pickle.loads(pickle.dumps(evaluator))
    assert clone(tree) == result
    # a tree that overflows on training rows has an infinite loss (and is not optimised)
    assert evaluator("mul(rl_weight_load, 1e308)").loss == math.inf


def test_evaluator_applies_the_constraint_mode_to_a_decreasing_fit():
    results = {mode: TreeEvaluator(toy_problem(mode), max_nfev=0)("x") for mode in ("off", "penalise", "reject")}
    off = results["off"]
    assert off.a < 0  # the data decreases in x, so the fitted slope is negative
    assert off.violation == 0.0 and 0 < off.loss < 0.05
    assert results["penalise"].violation == 1.0
    assert results["penalise"].loss == pytest.approx(off.mre * 11.0)
    assert results["reject"].loss == math.inf and results["reject"].mre == pytest.approx(off.mre)


def test_seed_formulas_become_trees_or_are_skipped(demo_problem):
    evaluator = TreeEvaluator(demo_problem)
    space = get_space("roofline")

    def tree(text):
        nodes = seed_nodes(text, demo_problem.features, space.operators, evaluator.symbols)
        return None if nodes is None else format_prefix(nodes, evaluator.arity)

    trees = [tree(s) for s in space.seed_formulas]
    assert trees[1] == ("add(add(1.0, mul(1.0, rl_weight_load)), "
                        "add(mul(1.0, rl_prefill_compute), mul(1.0, rl_kv_read)))")
    assert "max(" in trees[0]
    # a feature the problem lacks, or an operator the space lacks: skipped
    assert tree("c0 + c1*prefill_tokens") is None
    assert tree("c0 + rl_kv_read/rl_weight_load") is None


def test_settings_are_validated():
    with pytest.raises(StepMLError):
        DeapSettings(population=1)
    with pytest.raises(StepMLError):
        DeapSettings(crossover_prob=0.8, mutation_prob=0.5)
    with pytest.raises(StepMLError):
        DeapSettings(population=10, migration_size=10)


def test_chunked_keeps_order():
    assert chunked(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]


# --------------------------------------------------------------------------- search


def test_search_recovers_the_demo_law_structure(demo_problem):
    # No seed formulas: the structure has to be found by the search itself.
    space = dataclasses.replace(demo_problem.space, seed_formulas=())
    problem = dataclasses.replace(demo_problem, space=space)
    engine = DeapEngine(DeapSettings(population=100, generations=20, islands=2, budget_s=600.0, seed=0))
    candidates = engine.search(problem)
    good = [c for c in candidates
            if c.loss < 0.05 and {"rl_weight_load", "rl_prefill_compute"} <= set(c.features)]
    assert good, [(str(c.expr), c.loss) for c in candidates]
    best = min(candidates, key=lambda c: c.loss)
    assert best.loss < 0.03
    floor = problem.floor_train
    assert floor is not None   # the demo data know the roofline lower bound of every step
    for cand in candidates:  # the reported loss is the formula's loss, times the penalty of a bound it breaks
        pred = lambdify_formula(cand.expr, problem.features)(problem.X_train)
        below = float(np.mean(pred < floor * (1 - 1e-9)))
        if below == 0.0:
            assert mre(cand.expr, problem) == pytest.approx(cand.loss, rel=1e-9)
        else:
            assert cand.loss > mre(cand.expr, problem)
    assert all(np.all(lambdify_formula(c.expr, problem.features)(problem.X_train) >= floor * (1 - 1e-9))
               for c in good)   # the law's shape never predicts faster than physics
    assert engine.stats_["node_evals_per_s"] > 0 and engine.stats_["evaluations"] > 0


def test_candidates_form_a_pareto_set(small_run, demo_problem):
    _, candidates, _ = small_run
    assert len(candidates) >= 3
    assert [c.complexity for c in candidates] == sorted(c.complexity for c in candidates)
    for a in candidates:
        assert a.engine == "deap" and math.isfinite(a.loss)
        assert a.complexity == complexity(a.expr)
        assert a.provenance == "seed" or a.provenance.startswith("deap gen ")
        assert a.n_constants == sum(isinstance(n, sympy.Float) for n in sympy.preorder_traversal(a.expr))
        for b in candidates:
            dominated = (b.loss <= a.loss and b.complexity <= a.complexity
                         and (b.loss < a.loss or b.complexity < a.complexity))
            assert not dominated, (str(a.expr), str(b.expr))
    assert len({c.key for c in candidates}) == len(candidates)


def test_progress_and_stats(small_run):
    engine, candidates, calls = small_run
    assert [c[0] for c in calls] == list(range(SMALL.generations + 1))
    best = [c[1] for c in calls]
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:]))  # best loss never gets worse
    assert best[-1] == pytest.approx(min(c.loss for c in candidates))
    assert all(c[2] >= 1 for c in calls)
    assert [c[3] for c in calls] == sorted(c[3] for c in calls)
    assert all(len(c) == 5 and 0 < c[4] < 1 for c in calls)  # best entry's validation relative error
    stats = engine.stats_
    assert stats["generations"] == SMALL.generations and stats["stopped_by"] == "generations"
    assert stats["node_evals_per_s"] > 1e6 and stats["wall_s"] > 0


def test_same_seed_gives_identical_candidates(small_run, demo_problem):
    _, first, _ = small_run
    second = DeapEngine(SMALL).search(demo_problem)
    assert signature(second) == signature(first)


def test_different_seeds_differ(small_run, demo_problem):
    _, first, _ = small_run
    other = DeapEngine(dataclasses.replace(SMALL, seed=SMALL.seed + 1)).search(demo_problem)
    assert signature(other) != signature(first)


def test_serial_and_process_maps_agree(small_run, demo_problem):
    _, first, _ = small_run
    with serial_map() as mapper:
        serial = DeapEngine(SMALL).search(demo_problem, mapper=mapper)
    with process_map(2) as mapper:
        parallel = DeapEngine(SMALL).search(demo_problem, mapper=mapper)
    assert signature(serial) == signature(first)
    assert signature(parallel) == signature(first)


def test_dask_map_agrees(small_run, demo_problem):
    pytest.importorskip("distributed")
    from discovery.engines.parallel import dask_map

    _, first, _ = small_run
    settings = dataclasses.replace(SMALL, generations=3)
    reference = DeapEngine(settings).search(demo_problem)
    with dask_map(workers=1) as mapper:
        assert list(mapper(abs, [-1, 2, -3])) == [1, 2, 3]
        result = DeapEngine(settings).search(demo_problem, mapper=mapper)
    assert signature(result) == signature(reference)


class Killed(Exception):
    pass


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(demo_problem):
    settings = dataclasses.replace(SMALL, generations=7, migration_interval=3, seed=5)
    straight_states = []
    straight = DeapEngine(settings).search(demo_problem, checkpoint=straight_states.append)
    assert [s["generation"] for s in straight_states] == list(range(8))

    saved = []

    def kill_at_four(state):
        saved.append(pickle.dumps(state))  # the state must be picklable
        if state["generation"] == 4:
            raise Killed

    with pytest.raises(Killed):
        DeapEngine(settings).search(demo_problem, checkpoint=kill_at_four)
    state = pickle.loads(saved[-1])
    assert state["generation"] == 4
    resumed_engine = DeapEngine(settings)  # a new instance
    resumed_states = []
    resumed = resumed_engine.search(demo_problem, checkpoint=resumed_states.append, resume_state=state)
    assert signature(resumed) == signature(straight)
    assert [s["generation"] for s in resumed_states] == [5, 6, 7]
    final_a, final_b = straight_states[-1], resumed_states[-1]
    for key in ("islands", "hall_of_fame", "random_state", "cache", "best_loss", "stall"):
        assert final_a[key] == final_b[key], key
    assert resumed_engine.stats_["generations"] == 7

    other = dataclasses.replace(settings, population=settings.population + 2)
    with pytest.raises(StepMLError):
        DeapEngine(other).search(demo_problem, resume_state=state)


def test_budget_stops_the_run(demo_problem):
    engine = DeapEngine(dataclasses.replace(SMALL, generations=50, budget_s=1e-6))
    candidates = engine.search(demo_problem)
    assert engine.stats_["stopped_by"] == "budget"
    assert engine.stats_["generations"] == 0
    assert candidates  # generation 0 still yields a Pareto set


def test_early_stopping():
    engine = DeapEngine(DeapSettings(population=12, generations=30, islands=1, migration_size=2,
                                     early_stop_generations=2, seed=3))
    engine.search(toy_problem("off", noise=0.0))
    assert engine.stats_["stopped_by"] == "early_stop"
    assert engine.stats_["generations"] < 30


def test_a_decreasing_seed_is_penalised_and_rejected():
    settings = DeapSettings(population=16, generations=3, islands=1, migration_size=2, seed=2)
    seeded = {}
    for mode in ("off", "penalise", "reject"):
        engine = DeapEngine(settings)
        candidates = engine.search(toy_problem(mode))
        seeded[mode] = candidates
        for cand in candidates:
            f = lambdify_formula(cand.expr, ["x"])
            lo, hi = toy_problem(mode).probes["x_axis"]
            v = violation_fraction([(f(lo), f(hi))])
            if mode == "reject":
                assert v == 0.0, str(cand.expr)
            if mode == "penalise":
                assert cand.loss == pytest.approx(mre(cand.expr, toy_problem(mode)) * (1 + 10 * v), rel=1e-9)
    # without constraints the decreasing law wins; with them it is penalised or removed
    best_off = min(seeded["off"], key=lambda c: c.loss)
    assert best_off.loss < 0.03 and best_off.expr.diff(sympy.Symbol("x")).is_negative
    assert min(c.loss for c in seeded["penalise"]) > best_off.loss
    assert min(c.loss for c in seeded["reject"]) > best_off.loss
