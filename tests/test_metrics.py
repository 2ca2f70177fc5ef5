"""Tests for evaluation.metrics: every expected number below is worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.metrics import (
    ape_percentiles,
    bootstrap_ci,
    frac_over,
    mape,
    mspe,
    n_excluded,
    pearson_r,
    prediction_problems,
    r2,
    smape,
    summary,
    valid_target_mask,
    wilcoxon_p,
)

# Any RuntimeWarning (divide by zero, mean of empty slice, ...) fails the test.
pytestmark = pytest.mark.filterwarnings("error")

# Case A: APE = |p-t|/t*100 = [10, 10, 0, 100]; signed = [+10, -10, 0, +100]
T_A = [100.0, 200.0, 400.0, 50.0]
P_A = [110.0, 180.0, 400.0, 100.0]


# --------------------------------------------------------------------------
# target validity / exclusion
# --------------------------------------------------------------------------
def test_valid_target_mask():
    t = [1.0, 0.0, -1.0, np.nan, np.inf, -np.inf, 1e-300]
    assert valid_target_mask(t).tolist() == [True, False, False, False, False, False, True]
    assert valid_target_mask(t).dtype == bool
    assert n_excluded(t) == 5


def test_invalid_targets_are_excluded_and_counted():
    t = [100.0, 0.0, -5.0, np.nan, np.inf, 200.0]
    p = [110.0, 1.0, 1.0, 1.0, 1.0, 180.0]
    # only rows 0 and 5 survive: APE 10 and 10 -> MAPE 10; signed +10, -10 -> 0
    assert mape(t, p) == pytest.approx(10.0)
    assert mspe(t, p) == pytest.approx(0.0)
    s = summary(t, p)
    assert s["n"] == 2
    assert s["n_excluded"] == 4
    assert s["mape"] == pytest.approx(10.0)


# --------------------------------------------------------------------------
# point metrics, unweighted and weighted
# --------------------------------------------------------------------------
def test_mape_hand_case():
    # (10 + 10 + 0 + 100) / 4 = 30
    assert mape(T_A, P_A) == pytest.approx(30.0)


def test_mape_weighted():
    # w = [1, 1, 2, 0]: (1*10 + 1*10 + 2*0 + 0*100) / 4 = 5
    assert mape(T_A, P_A, weights=[1, 1, 2, 0]) == pytest.approx(5.0)
    # equal weights reproduce the unweighted mean
    assert mape(T_A, P_A, weights=[3, 3, 3, 3]) == pytest.approx(30.0)


def test_mspe_hand_case_and_weighted():
    # (10 - 10 + 0 + 100) / 4 = 25
    assert mspe(T_A, P_A) == pytest.approx(25.0)
    # w = [3, 1, 0, 0]: (3*10 - 1*10) / 4 = 5
    assert mspe(T_A, P_A, weights=[3, 1, 0, 0]) == pytest.approx(5.0)
    # pure under-prediction is negative: (90-100)/100*100 = -10
    assert mspe([100.0], [90.0]) == pytest.approx(-10.0)


def test_smape_hand_case_and_weighted():
    # terms: 200*10/210 = 200/21, 200*20/380 = 200/19, 0, 200*50/150 = 200/3
    # sum = 200*(1/21 + 1/19 + 1/3) = 200*519/1197 = 103800/1197; mean = 25950/1197 = 21.6791979...
    assert smape(T_A, P_A) == pytest.approx(25950 / 1197)
    assert smape(T_A, P_A) == pytest.approx(21.679197994987469)
    # w = [0, 0, 1, 1]: (0 + 200/3) / 2 = 100/3
    assert smape(T_A, P_A, weights=[0, 0, 1, 1]) == pytest.approx(100 / 3)


def test_pearson_and_r2_hand_cases():
    # t = [1,2,3], p = [1,3,2]: dt = [-1,0,1], dp = [-1,1,0]; cov = 1, var_t = var_p = 2 -> r = 0.5
    assert pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # residuals [0, -1, 1] -> SS_res = 2; SS_tot = 2 -> R2 = 0
    assert r2([1, 2, 3], [1, 3, 2]) == pytest.approx(0.0)
    # p = 2t: r = 1; residuals [1,2,3,4] -> SS_res = 30; SS_tot = 2.25+0.25+0.25+2.25 = 5 -> R2 = 1 - 6 = -5
    assert pearson_r([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert r2([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(-5.0)
    # perfect predictions
    assert r2([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)


def test_pearson_and_r2_weighted():
    # t = [1,2,3], p = [1,3,2], w = [2,1,1]: sum w = 4, mean_t = mean_p = 7/4
    # dt = [-3/4, 1/4, 5/4], dp = [-3/4, 5/4, 1/4]
    # cov = 2*9/16 + 5/16 + 5/16 = 28/16; var_t = var_p = 2*9/16 + 1/16 + 25/16 = 44/16 -> r = 7/11
    t, p, w = [1, 2, 3], [1, 3, 2], [2, 1, 1]
    assert pearson_r(t, p, weights=w) == pytest.approx(7 / 11)
    # SS_res = 2*0 + 1 + 1 = 2, SS_tot = 44/16 = 11/4 -> R2 = 1 - 8/11 = 3/11
    assert r2(t, p, weights=w) == pytest.approx(3 / 11)
    # an integer weight is the same as duplicating the row
    assert pearson_r([1, 1, 2, 3], [1, 1, 3, 2]) == pytest.approx(7 / 11)
    # a zero-weight outlier is ignored entirely
    assert pearson_r([1, 2, 3, 10], [1, 3, 2, -7], weights=[1, 1, 1, 0]) == pytest.approx(0.5)


def test_pearson_and_r2_degenerate_are_nan():
    assert math.isnan(pearson_r([1, 2, 3], [5, 5, 5]))  # constant prediction
    assert math.isnan(pearson_r([7, 7, 7], [1, 2, 3]))  # constant target
    assert math.isnan(r2([7, 7, 7], [1, 2, 3]))  # SS_tot = 0
    assert math.isnan(pearson_r([3], [4]))  # single row


def test_ape_percentiles_hand_case():
    # sorted APE = [0, 10, 10, 100] at positions 0, 1/3, 2/3, 1 (numpy "linear")
    # p50 -> index 1.5 -> 10; p90 -> index 2.7 -> 10 + 0.7*90 = 73; p99 -> index 2.97 -> 10 + 0.97*90 = 97.3
    got = ape_percentiles(T_A, P_A)
    assert list(got) == ["p50", "p90", "p99"]
    assert got["p50"] == pytest.approx(10.0)
    assert got["p90"] == pytest.approx(73.0)
    assert got["p99"] == pytest.approx(97.3)
    got = ape_percentiles(T_A, P_A, q=(25, 99.9))
    # p25 -> index 0.75 -> 7.5
    assert set(got) == {"p25", "p99.9"}
    assert got["p25"] == pytest.approx(7.5)


def test_ape_percentiles_weighted():
    # APE 0 gets weight 2: sorted [0(w2), 10, 10, 100], cum = 2,3,4,5,
    # positions (cum - w)/(5 - 1) = 0, 0.5, 0.75, 1
    # p50 -> 10; p90 -> between 0.75 (10) and 1 (100): 10 + 0.6*90 = 64
    got = ape_percentiles(T_A, P_A, q=(50, 90), weights=[1, 1, 2, 1])
    assert got["p50"] == pytest.approx(10.0)
    assert got["p90"] == pytest.approx(64.0)
    # equal weights give the unweighted (np.percentile) answer
    assert ape_percentiles(T_A, P_A, weights=[2, 2, 2, 2])["p90"] == pytest.approx(73.0)


def test_frac_over():
    # APE [10, 10, 0, 100]: > 50 -> 1 of 4
    assert frac_over(T_A, P_A) == pytest.approx(0.25)
    # strict ">": APE exactly 10 is not over 10
    assert frac_over(T_A, P_A, threshold=10.0) == pytest.approx(0.25)
    assert frac_over(T_A, P_A, threshold=9.99) == pytest.approx(0.75)
    # weighted: w = [1, 1, 1, 5] -> 5/8
    assert frac_over(T_A, P_A, weights=[1, 1, 1, 5]) == pytest.approx(0.625)


# --------------------------------------------------------------------------
# bad predictions
# --------------------------------------------------------------------------
def test_prediction_problems_counts():
    got = prediction_problems([np.nan, np.inf, -np.inf, 0.0, -50.0, 3.0])
    assert got == {"nan": 1, "inf": 2, "nonpositive": 2}
    assert prediction_problems([1.0, 2.0]) == {"nan": 0, "inf": 0, "nonpositive": 0}


def test_nonpositive_finite_predictions_are_used_as_is():
    t, p = [100.0, 100.0, 100.0], [50.0, 0.0, -50.0]
    # APE [50, 100, 150] -> 100
    assert mape(t, p) == pytest.approx(100.0)
    # signed [-50, -100, -150] -> -100
    assert mspe(t, p) == pytest.approx(-100.0)
    # sMAPE terms 200*50/150 = 200/3, 200*100/100 = 200, 200*150/150 = 200 -> (200/3 + 400)/3 = 1400/9
    assert smape(t, p) == pytest.approx(1400 / 9)
    assert summary(t, p)["bad_predictions"] == {"nan": 0, "inf": 0, "nonpositive": 2}


def test_nonfinite_predictions_are_infinite_error():
    t = [100.0, 100.0, 100.0]
    p = [110.0, 120.0, np.nan]
    assert mape(t, p) == math.inf
    assert smape(t, p) == math.inf
    assert math.isnan(mspe(t, p))  # a NaN prediction has no sign
    assert mspe(t, [110.0, 120.0, np.inf]) == math.inf
    assert mspe(t, [110.0, 120.0, -np.inf]) == -math.inf
    assert mape(t, [110.0, 120.0, -np.inf]) == math.inf
    # APE [10, 20, inf] -> 2 of 3 over 15 %
    assert frac_over(t, p, threshold=15.0) == pytest.approx(2 / 3)
    pct = ape_percentiles(t, p, q=(50, 99))
    assert pct["p50"] == pytest.approx(20.0)
    assert pct["p99"] == math.inf
    assert math.isnan(pearson_r(t, p))
    # targets must vary for R2 to be defined; the NaN prediction makes SS_res infinite
    assert r2([100.0, 200.0, 300.0], [110.0, 190.0, np.nan]) == -math.inf
    assert math.isnan(r2(t, p))  # constant target: SS_tot = 0
    s = summary(t, p)
    assert s["mape"] == math.inf
    assert s["bad_predictions"] == {"nan": 1, "inf": 0, "nonpositive": 0}


def test_nonfinite_prediction_with_zero_weight_does_not_poison():
    # the NaN row has zero weight -> only APE 10 counts
    assert mape([100.0, 100.0], [110.0, np.nan], weights=[1, 0]) == pytest.approx(10.0)
    assert r2([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, np.nan], weights=[1, 1, 1, 0]) == pytest.approx(1.0)


def test_bad_prediction_on_excluded_row_still_counted():
    s = summary([100.0, 0.0], [110.0, np.nan])
    assert s["mape"] == pytest.approx(10.0)  # row 1 excluded (target 0)
    assert s["bad_predictions"]["nan"] == 1


# --------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------
def test_empty_valid_set_is_nan_without_warnings():
    t, p = [0.0, -1.0, np.nan], [1.0, 1.0, 1.0]
    for f in (mape, mspe, smape, pearson_r, r2, frac_over):
        assert math.isnan(f(t, p)), f.__name__
        assert math.isnan(f([], [])), f.__name__
    assert all(math.isnan(v) for v in ape_percentiles(t, p).values())
    lo, hi = bootstrap_ci(t, p)
    assert math.isnan(lo) and math.isnan(hi)
    s = summary(t, p, ci=True)
    assert s["n"] == 0 and s["n_excluded"] == 3
    assert math.isnan(s["mape"]) and math.isnan(s["p99"]) and math.isnan(s["mape_ci"][0])


def test_all_zero_weights_is_nan():
    w = [0, 0, 0, 0]
    for f in (mape, mspe, smape, pearson_r, r2, frac_over):
        assert math.isnan(f(T_A, P_A, weights=w)), f.__name__
    assert math.isnan(ape_percentiles(T_A, P_A, weights=w)["p50"])
    assert math.isnan(summary(T_A, P_A, weights=w)["mape"])


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        mape(T_A, P_A, weights=[1, -1, 1, 1])
    with pytest.raises(ValueError):
        mape(T_A, P_A, weights=[1, np.nan, 1, 1])
    with pytest.raises(ValueError):
        mape(T_A, P_A, weights=[1, 1])
    with pytest.raises(ValueError):
        mape(T_A, P_A[:3])
    with pytest.raises(ValueError):
        bootstrap_ci(T_A, P_A, level=1.5)


# --------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------
def test_summary_matches_individual_metrics():
    s = summary(T_A, P_A)
    assert set(s) == {
        "n", "n_excluded", "mape", "mspe", "smape", "r", "r2",
        "p50", "p90", "p99", "frac_over_50", "bad_predictions",
    }
    assert s["n"] == 4 and s["n_excluded"] == 0
    assert s["mape"] == pytest.approx(30.0)
    assert s["mspe"] == pytest.approx(25.0)
    assert s["smape"] == pytest.approx(25950 / 1197)
    assert s["p90"] == pytest.approx(73.0)
    assert s["frac_over_50"] == pytest.approx(0.25)
    assert s["r"] == pytest.approx(pearson_r(T_A, P_A))
    assert s["r2"] == pytest.approx(r2(T_A, P_A))
    assert s["bad_predictions"] == {"nan": 0, "inf": 0, "nonpositive": 0}


def test_summary_weighted_and_ci():
    w = [1, 1, 2, 0]
    s = summary(T_A, P_A, weights=w, ci=True, seed=3)
    assert s["mape"] == pytest.approx(5.0)
    assert s["mspe"] == pytest.approx(0.0)  # (10 - 10 + 0) / 4
    assert s["frac_over_50"] == pytest.approx(0.0)
    assert s["r"] == pytest.approx(pearson_r(T_A, P_A, weights=w))
    lo, hi = bootstrap_ci(T_A, P_A, weights=w, seed=3)
    assert s["mape_ci"] == [lo, hi]
    assert "mape_ci" not in summary(T_A, P_A)


# --------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------
def _sample(n: int = 500, seed: int = 7):
    rng = np.random.default_rng(seed)
    t = rng.uniform(1.0, 20.0, n)
    p = t * rng.lognormal(0.0, 0.2, n)
    return t, p


def test_bootstrap_deterministic_and_contains_estimate():
    t, p = _sample()
    a = bootstrap_ci(t, p, seed=11)
    b = bootstrap_ci(t, p, seed=11)
    c = bootstrap_ci(t, p, seed=12)
    assert a == b
    assert a != c
    lo, hi = a
    assert lo < mape(t, p) < hi
    # 95 % interval is narrower at 50 %
    lo50, hi50 = bootstrap_ci(t, p, seed=11, level=0.5)
    assert lo < lo50 < hi50 < hi


@pytest.mark.parametrize("metric", [mape, mspe, smape, frac_over, pearson_r, r2])
@pytest.mark.parametrize("weighted", [False, True])
def test_bootstrap_vectorised_equals_loop(metric, weighted):
    # a plain wrapper forces the resample-by-resample path over the same indices
    t, p = _sample(200)
    w = np.random.default_rng(1).uniform(0.0, 2.0, t.size) if weighted else None
    if weighted:
        def loop(a, b, weights=None):
            return metric(a, b, weights=weights)
    else:
        def loop(a, b):
            return metric(a, b)
    fast = bootstrap_ci(t, p, metric=metric, n_resamples=300, seed=5, weights=w)
    slow = bootstrap_ci(t, p, metric=loop, n_resamples=300, seed=5, weights=w)
    assert fast == pytest.approx(slow, rel=1e-9, abs=1e-12)
    assert fast[0] <= metric(t, p, weights=w) <= fast[1]


def test_bootstrap_two_row_hand_case():
    # APE [0, 100]: resample means are 0 (prob 1/4), 50 (1/2), 100 (1/4),
    # so the 2.5th percentile is 0 and the 97.5th is 100.
    assert bootstrap_ci([100.0, 100.0], [100.0, 200.0], seed=0) == (0.0, 100.0)
    # a single row: every resample equals it
    assert bootstrap_ci([100.0], [130.0]) == pytest.approx((30.0, 30.0))


def test_bootstrap_ignores_invalid_targets():
    t, p = _sample(100)
    t_bad = np.concatenate([t, [0.0, np.nan, -3.0]])
    p_bad = np.concatenate([p, [1.0, 1.0, 1.0]])
    assert bootstrap_ci(t_bad, p_bad, seed=2) == bootstrap_ci(t, p, seed=2)


# --------------------------------------------------------------------------
# wilcoxon
# --------------------------------------------------------------------------
def test_wilcoxon_clear_case():
    base = np.arange(10, dtype=float) + 5.0
    worse = base + np.arange(1, 11)  # always worse, distinct differences
    # exact null: P(W+ = 55) = 1/2**10; two-sided -> 2/1024
    p = wilcoxon_p(worse, base)
    assert p < 0.05
    assert p == pytest.approx(2 / 1024)
    assert wilcoxon_p(base, worse) == pytest.approx(p)


def test_wilcoxon_degenerate_is_nan():
    a = [1.0, 2.0, 3.0]
    assert math.isnan(wilcoxon_p(a, a))  # all differences zero
    assert math.isnan(wilcoxon_p([1.0], [2.0]))  # one pair
    assert math.isnan(wilcoxon_p([], []))
    assert math.isnan(wilcoxon_p([1.0, np.nan], [2.0, 3.0]))  # one finite pair left
    with pytest.raises(ValueError):
        wilcoxon_p([1.0, 2.0], [1.0])


def test_wilcoxon_drops_nonfinite_pairs():
    base = np.arange(10, dtype=float) + 5.0
    worse = base + np.arange(1, 11)
    a = np.concatenate([worse, [np.nan]])
    b = np.concatenate([base, [1.0]])
    assert wilcoxon_p(a, b) == pytest.approx(2 / 1024)


# --------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------
def test_import_is_cheap():
    code = "import sys, evaluation.metrics; print('scipy.stats' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
    assert out.stderr == ""
