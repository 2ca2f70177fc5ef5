"""The shared objective: relative error, scaling, constant fit, probe penalty, complexity, Pareto front."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import sympy

from discovery.candidate import Candidate, Problem
from features.errors import StepMLError
from search_spaces.numeric import lambdify_formula
from search_spaces.objective import (Objective, complexity, constrained_loss, linear_scaling, pareto_front,
                                     pareto_mask, relative_error, violation_fraction)
from search_spaces.spaces import SearchSpace


def toy(mode: str = "penalise", weights: np.ndarray | None = None) -> Problem:
    """y = 1000 + 5x with 2 % noise; probes say a larger x must not predict less."""
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 100.0, 200)
    y = (1000.0 + 5.0 * x) * (1 + 0.02 * rng.standard_normal(x.size))
    lo = np.linspace(0.0, 90.0, 10)
    space = SearchSpace("toy", "toy", ("x",), ("add", "sub", "mul"), max_size=9, max_depth=3, constraint_mode=mode)
    return Problem(space, ("x",), {"x": x}, y, weights, {"x": x}, y, None,
                   probes={"x_axis": ({"x": lo}, {"x": lo + 10.0})})


# --------------------------------------------------------------------------- relative error


def test_relative_error_is_a_fraction_and_weighted_by_normalised_weights():
    y = np.array([100.0, 200.0, 400.0])
    pred = np.array([110.0, 180.0, 500.0])  # APE 0.10, 0.10, 0.25
    assert relative_error(pred, y) == pytest.approx(0.15)
    assert relative_error(y, y) == 0.0
    wn = np.array([1.0, 2.0, 1.0]) / 4
    assert relative_error(pred, y, wn) == pytest.approx((0.10 + 0.20 + 0.25) / 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 0.0, -1.0])
def test_relative_error_is_inf_with_any_bad_prediction(bad):
    y = np.array([100.0, 200.0, 400.0])
    assert relative_error(np.array([110.0, bad, 500.0]), y) == math.inf
    assert relative_error(np.array([110.0, bad, 500.0]), y, np.array([0.5, 0.0, 0.5])) == math.inf


def test_violation_fraction_counts_decreasing_and_non_positive_pairs():
    lo = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    hi = np.array([1.0, 2.5, 2.0, 4.0 - 1e-12, -1.0, np.nan, 7.0, 9.0])
    # pair 2 decreases, pair 4 is negative, pair 5 is NaN; pair 3 is within the 1e-9 relative slack.
    assert violation_fraction([(lo, hi)]) == pytest.approx(3 / 8)
    # pooled over axes, and a non-positive lo counts too
    assert violation_fraction([(lo, hi), (np.array([0.0, 1.0]), np.array([1.0, 2.0]))]) == pytest.approx(4 / 10)
    assert violation_fraction([]) == 0.0
    assert violation_fraction([(lo, lo + 1)]) == 0.0


def test_constrained_loss_modes():
    assert constrained_loss(0.1, 0.5, "penalise") == pytest.approx(0.1 * 6.0)
    assert constrained_loss(0.1, 0.0, "penalise") == 0.1
    assert constrained_loss(0.1, 0.01, "reject") == math.inf
    assert constrained_loss(0.1, 0.0, "reject") == 0.1
    assert constrained_loss(0.1, 1.0, "off") == 0.1
    with pytest.raises(StepMLError):
        constrained_loss(0.1, 0.0, "bogus")


def test_linear_scaling_is_the_weighted_least_squares_fit():
    rng = np.random.default_rng(1)
    f = rng.uniform(0, 10, 50)
    y = 3.0 + 2.0 * f * (1 + 0.05 * rng.standard_normal(50))
    u = 1.0 / y**2
    a, b = linear_scaling(f, y, u)
    design = np.column_stack([f, np.ones_like(f)]) * np.sqrt(u)[:, None]
    expected, *_ = np.linalg.lstsq(design, y * np.sqrt(u), rcond=None)
    assert (a, b) == pytest.approx(tuple(expected), rel=1e-9)
    assert linear_scaling(np.full(5, 2.0), np.arange(1.0, 6.0), np.ones(5))[0] == 0.0  # constant tree


# --------------------------------------------------------------------------- the objective


def test_fit_recovers_the_line_and_formula_loss_agrees():
    problem = toy("penalise")
    objective = Objective(problem, max_nfev=50)
    fit = objective.fit(lambda c, x: c[0] * x + c[1] * x * x, [1.0, 0.5])  # a curved start: the fit flattens it
    assert fit.violation == 0.0 and fit.loss == fit.mre and fit.loss < 0.03
    assert abs(fit.consts[1] * fit.a) < 1e-3 * abs(fit.consts[0] * fit.a)
    x = sympy.Symbol("x")
    expr = fit.b + fit.a * (fit.consts[0] * x + fit.consts[1] * x ** 2)
    loss, mre, violation = objective.formula_loss(lambdify_formula(expr, ("x",)))
    assert loss == pytest.approx(fit.loss, rel=1e-9) and violation == 0.0


def test_probe_penalty_and_reject_mode():
    x = sympy.Symbol("x")
    decreasing = lambdify_formula(2000.0 - x, ("x",))
    penalised = Objective(toy("penalise")).formula_loss(decreasing)
    off = Objective(toy("off")).formula_loss(decreasing)
    assert penalised[2] == 1.0 and penalised[0] == pytest.approx(off[0] * 11.0)
    assert Objective(toy("reject")).formula_loss(decreasing)[0] == math.inf


def test_weights_change_the_loss_and_are_checked():
    w = np.r_[np.zeros(100), np.ones(100)]
    x = sympy.Symbol("x")
    f = lambdify_formula(1000.0 + 6.0 * x, ("x",))
    assert Objective(toy(weights=w)).formula_loss(f)[1] != Objective(toy()).formula_loss(f)[1]
    with pytest.raises(StepMLError, match="weights"):
        Objective(toy(weights=-w))


def test_objective_pickles_without_derived_state():
    objective = Objective(toy(), max_nfev=10)
    clone = pickle.loads(pickle.dumps(objective))
    fn = lambda c, x: c[0] * x  # noqa: E731
    assert clone.fit(fn, [2.0]) == objective.fit(fn, [2.0])


def test_a_tree_that_overflows_is_infinitely_bad():
    fit = Objective(toy()).fit(lambda c, x: x * c[0], [1e308])
    assert fit.loss == math.inf and fit.evals == 1


# --------------------------------------------------------------------------- complexity and front


def test_complexity_is_the_weight_of_the_prefix_form():
    x, y = sympy.symbols("x y")
    assert complexity(2.5 * x + sympy.Max(3.0, y)) == 8
    with pytest.raises(StepMLError):
        complexity("not an expression (")


def test_pareto_front_keeps_the_first_of_ties_and_drops_infinite_losses():
    x = sympy.Symbol("x")
    cands = [Candidate(x + k, cx, loss, "t", str(k)) for k, (cx, loss) in
             enumerate([(5, 0.3), (3, 0.5), (5, 0.3), (7, 0.4), (9, 0.1), (11, math.inf)])]
    front = pareto_front(cands)
    assert [(c.complexity, c.loss, c.provenance) for c in front] == [(3, 0.5, "1"), (5, 0.3, "0"), (9, 0.1, "4")]
    assert pareto_mask([5, 3, 5], [0.3, 0.5, 0.3]).tolist() == [True, True, False]
