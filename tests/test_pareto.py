"""Pareto front, PySR's score and the front selections (discovery.pareto), on hand-made fronts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from discovery.pareto import SELECTIONS, pysr_score, select
from features.errors import StepMLError
from search_spaces.objective import pareto_mask

INF = math.inf

# A hand-made front (complexity ascending, loss descending) with four different answers:
#   scores  s0 = 0, s1 = ln(80/30)/2 = 0.4904, s2 = ln(30/10)/2 = 0.5493,
#           s3 = ln(10/7)/4 = 0.0892, s4 = ln(7/6.5)/6 = 0.0124
#   accuracy: lowest loss                                 -> row 4
#   score:    highest score                               -> row 2
#   best:     losses <= 1.5 * 6.5 = 9.75 are rows 3 and 4;
#             the higher score of the two                 -> row 3
#   knee:     x = (c - 1)/14, y = (ln l - ln 6.5)/(ln 80 - ln 6.5); the chord runs from
#             (0, 1) to (1, 0), so the distance is |x + y - 1|/sqrt(2):
#             row1 .2479, row2 .5340, row3 .3904          -> row 2
FRONT_C = [1, 3, 5, 9, 15]
FRONT_L = [80.0, 30.0, 10.0, 7.0, 6.5]


# -- pareto_mask ---------------------------------------------------------------------------------

def test_pareto_mask_hand_case_with_ties_inf_and_nan():
    complexity = [1, 2, 2, 3, 3, 4, 5, 1]
    loss = [10.0, 5.0, 5.0, 5.0, INF, 2.0, math.nan, 10.0]
    # row 0 kept; row 7 ties row 0 exactly (first kept); row 1 kept, row 2 ties it;
    # row 3 has the same loss at higher complexity (dominated); row 4 inf; row 5 kept; row 6 NaN.
    expected = [True, True, False, False, False, True, False, False]
    assert pareto_mask(complexity, loss).tolist() == expected


def test_pareto_mask_keeps_the_first_of_a_tie_whatever_its_position():
    assert pareto_mask([2, 2], [1.0, 1.0]).tolist() == [True, False]
    # the simpler row comes later in the input: both are on the front
    assert pareto_mask([3, 1], [1.0, 2.0]).tolist() == [True, True]
    # a later, simpler row with the same loss dominates the earlier one
    assert pareto_mask([3, 1], [2.0, 2.0]).tolist() == [False, True]


def test_pareto_mask_all_infinite_and_empty():
    assert pareto_mask([1, 2, 3], [INF, INF, math.nan]).tolist() == [False, False, False]
    assert pareto_mask([], []).tolist() == []


# -- pysr_score ----------------------------------------------------------------------------------

def test_pysr_score_exact_values():
    s = pysr_score([1, 3, 4], [8.0, 2.0, 1.5])
    assert s[0] == 0.0
    assert s[1] == pytest.approx(math.log(4) / 2)
    assert s[2] == pytest.approx(math.log(2 / 1.5))


def test_pysr_score_sorts_by_complexity_and_keeps_input_order():
    s = pysr_score([4, 1, 3], [1.5, 8.0, 2.0])
    np.testing.assert_allclose(s, [math.log(2 / 1.5), 0.0, math.log(4) / 2])


def test_pysr_score_equal_complexity_and_zero_loss():
    assert pysr_score([2, 2], [4.0, 1.0]).tolist() == [0.0, 0.0]
    # zero loss is clamped to 1e-300, so the score stays finite
    assert pysr_score([1, 2], [1.0, 0.0])[1] == pytest.approx(300 * math.log(10))


def test_pysr_score_skips_non_finite_rows():
    # the row after an infinite loss is scored against the last finite row, not +inf
    s = pysr_score([1, 2, 3, 4], [10.0, 1.0, INF, 0.9])
    assert s[1] == pytest.approx(math.log(10))
    assert s[3] == pytest.approx(math.log(1 / 0.9) / 2)
    assert np.isfinite(s[[0, 1, 3]]).all()


# -- select ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, expected", [("accuracy", 4), ("score", 2), ("best", 3), ("knee", 2)])
def test_select_on_a_hand_made_front(kind, expected):
    assert select(kind, FRONT_C, FRONT_L) == expected


def test_select_ignores_infinite_losses():
    c = FRONT_C + [0, 20]
    l = FRONT_L + [INF, INF]
    assert {k: select(k, c, l) for k in ("accuracy", "score", "best", "knee")} == {
        "accuracy": 4, "score": 2, "best": 3, "knee": 2}


def test_select_is_not_fooled_by_an_infinite_row_inside_the_front():
    # Without skipping the inf row, row 3 would get score +inf and win "score" and "best".
    c, l = [1, 2, 3, 4], [10.0, 1.0, INF, 0.9]
    assert select("score", c, l) == 1
    assert select("best", c, l) == 1
    assert select("accuracy", c, l) == 3


def test_select_single_member_and_degenerate_knee():
    for kind in SELECTIONS:
        assert select(kind, [5], [3.0]) == 0
    # the simplest member is also the most accurate: the knee is that member
    assert select("knee", [1, 2], [1.0, 2.0]) == 0


def test_select_errors():
    with pytest.raises(StepMLError, match="unknown selection 'pareto'.*best, accuracy, knee, score"):
        select("pareto", FRONT_C, FRONT_L)
    with pytest.raises(StepMLError, match="empty front"):
        select("best", [], [])
    with pytest.raises(StepMLError, match="finite loss"):
        select("best", [1, 2], [INF, math.nan])


# -- selection that sees the replay ----------------------------------------------------------------

def test_best_takes_the_lowest_replay_error_within_the_validation_window():
    # rows 3 and 4 are within 1.5 x the lowest loss; row 2 replays best but is outside the window
    replay = [np.nan, 40.0, 3.0, 12.0, 9.0]
    assert select("best", FRONT_C, FRONT_L, replay_loss=replay) == 4
    # without replay errors PySR's rule holds (row 3)
    assert select("best", FRONT_C, FRONT_L, replay_loss=[np.nan] * 5) == 3
    # a row the data rule excludes is never best, unless nothing else is left
    assert select("best", FRONT_C, FRONT_L, replay_loss=replay, eligible=[1, 1, 1, 1, 0]) == 3
    assert select("best", FRONT_C, FRONT_L, eligible=[0, 0, 0, 0, 0]) == 3


def test_a_reviewed_front_carries_its_replay_and_the_prefill_rule(linear_run, tmp_path):
    import json
    import shutil

    import sympy

    from discovery.rundir import HofRow, reviewed_front, uses_prefill, write_hof

    run = tmp_path / "run"
    shutil.copytree(linear_run, run)
    blind = sympy.sympify("200.0*decode_tokens + 6000.0")
    full = sympy.sympify("20.0*prefill_tokens + 210.0*decode_tokens + 5000.0")
    assert not uses_prefill(blind) and uses_prefill(full)
    write_hof(run, [HofRow(5, 10.0, str(blind), 0.0, 10.0, 10.0, 0.0, 2, sympy.srepr(blind), "deap", True, "a"),
                    HofRow(9, 9.0, str(full), 0.1, 9.5, 9.5, 0.0, 3, sympy.srepr(full), "deap", True, "b")])
    (run / "replay.json").write_text(json.dumps({"rows": {sympy.srepr(blind): {"e2e_err": 1.0, "ttft_err": 1.0,
                                                                               "itl_err": 1.0},
                                                          sympy.srepr(full): {"e2e_err": 5.0, "ttft_err": 5.0,
                                                                              "itl_err": 5.0}}}))
    front, eligible = reviewed_front(run)
    assert list(front["e2e_err"]) == [1.0, 5.0]
    info = json.loads((run / "run.json").read_text())
    assert info["data_has_prefill"] is True          # the demo data has prefill steps
    assert list(eligible) == [False, True]
    from discovery.pareto import pick_row

    assert pick_row(front, "best", eligible) == 1    # the prefill-blind row replays better but is not allowed
