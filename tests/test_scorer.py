"""The shared scorer (evaluation.scorer) on a tiny hand-made dataset whose every number is worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evaluation.scorer import phase_labels, score, score_predictions, scorecard_rows
from features.dataset import Dataset
from features.splits import Split

# row: experiment, model, workload, prefill reqs, decode reqs, prefill tok, decode tok, target, gap, prediction (APE %)
ROWS = [
    ("A", "m1", "chat", 1, 0, 100, 0, 100.0, 1, 110.0),   # 0 prefill-only  +10
    ("A", "m1", "chat", 0, 2, 0, 2, 200.0, 2, 180.0),     # 1 decode-only   -10
    ("A", "m1", "chat", 1, 2, 50, 2, 400.0, 1, 500.0),    # 2 mixed         +25
    ("A", "m1", "chat", 0, 3, 0, 3, 50.0, 3, 40.0),       # 3 decode-only   -20
    ("B", "m2", "code", 0, 1, 0, 1, 1000.0, 1, 1100.0),   # 4 decode-only   +10
    ("B", "m2", "code", 1, 1, 200, 1, 500.0, 2, 600.0),   # 5 mixed         +20
    ("B", "m2", "code", 2, 0, 300, 0, 250.0, 3, 200.0),   # 6 prefill-only  -20
    ("B", "m2", "code", 0, 4, 0, 4, 80.0, 1, 120.0),      # 7 decode-only   +50
]
PRED = np.array([r[9] for r in ROWS])
SPLIT = Split("hand", "", np.array([0, 1, 4, 5]), np.array([2, 6]), np.array([3, 7]))


def _frame() -> pd.DataFrame:
    cols = ["experiment_id", "model", "workload", "batch.num_prefill_reqs", "batch.num_decode_reqs",
            "batch.prefill_tokens", "batch.decode_tokens", "target.cycle_us", "target.cycle_gap"]
    return pd.DataFrame([r[:9] for r in ROWS], columns=cols)


@pytest.fixture
def dataset() -> Dataset:
    return Dataset(_frame(), "target.cycle_us", "test", weight_column="target.cycle_gap")


class Fixed:
    """A predictor returning fixed values (one per row of the hand-made frame)."""

    def __init__(self, values, name="fixed"):
        self.values = np.asarray(values, dtype=float)
        self.name = name
        self.calls = 0

    def predict(self, columns):
        self.calls += 1
        assert len(columns) == len(self.values)
        return self.values.copy()


# -- overall and per-group MAPE --------------------------------------------------------------------

def test_overall_mape_and_mspe_per_part(dataset):
    predictor = Fixed(PRED, "hand")
    card = score(predictor, dataset, SPLIT)
    assert predictor.calls == 1
    assert card.predictor == "hand" and card.split == "hand"
    # train rows 0,1,4,5: APE 10,10,10,20; signed +10,-10,+10,+20
    assert card.mape("train") == pytest.approx(12.5)
    assert card.overall["train"]["mspe"] == pytest.approx(7.5)
    assert card.overall["train"]["n"] == 4
    # val rows 2,6: APE 25,20; signed +25,-20
    assert card.mape("val") == pytest.approx(22.5)
    assert card.mape() == pytest.approx(22.5)  # default part is validation
    assert card.overall["val"]["mspe"] == pytest.approx(2.5)
    # test rows 3,7: APE 20,50; signed -20,+50
    assert card.mape("test") == pytest.approx(35.0)
    assert card.overall["test"]["mspe"] == pytest.approx(15.0)
    assert card.overall["test"]["n"] == 2
    assert card.bad_predictions == {"nan": 0, "inf": 0, "nonpositive": 0}


def test_per_group_mape_per_part(dataset):
    card = score(Fixed(PRED), dataset, SPLIT)
    assert card.group_metric("train", "experiment_id") == pytest.approx({"A": 10.0, "B": 15.0})
    assert card.group_metric("train", "model") == pytest.approx({"m1": 10.0, "m2": 15.0})
    assert card.group_metric("train", "workload") == pytest.approx({"chat": 10.0, "code": 15.0})
    assert card.group_metric("val", "experiment_id") == pytest.approx({"A": 25.0, "B": 20.0})
    assert card.group_metric("test", "experiment_id") == pytest.approx({"A": 20.0, "B": 50.0})
    assert card.group_metric("test", "experiment_id", "mspe") == pytest.approx({"A": -20.0, "B": 50.0})
    assert card.groups[("test", "experiment_id")]["B"]["n"] == 1
    # phases: train has rows 0 (prefill-only), 1 and 4 (decode-only), 5 (mixed)
    assert card.group_metric("train", "phase") == pytest.approx(
        {"prefill-only": 10.0, "decode-only": 10.0, "mixed": 20.0})
    assert card.group_metric("val", "phase") == pytest.approx({"mixed": 25.0, "prefill-only": 20.0})
    assert card.group_metric("test", "phase") == pytest.approx({"decode-only": 35.0})


def test_scorecard_rows_flatten_one_part(dataset):
    card = score(Fixed(PRED, "hand"), dataset, SPLIT, ci=True)
    rows = {r["group"]: r for r in scorecard_rows(card, "test", "experiment_id")}
    assert set(rows) == {"A", "B"}
    assert rows["A"]["predictor"] == "hand"
    assert rows["A"]["mape"] == pytest.approx(20.0) and rows["A"]["n"] == 1
    # one row per group: the bootstrap CI of a single row is that row's APE
    assert rows["B"]["ci"] == pytest.approx([50.0, 50.0])


def test_phase_labels():
    frame = _frame()
    assert phase_labels(frame).tolist() == ["prefill-only", "decode-only", "mixed", "decode-only",
                                            "decode-only", "mixed", "prefill-only", "decode-only"]
    assert phase_labels(frame.drop(columns="batch.num_decode_reqs")).tolist() == ["all"] * len(frame)


def test_groups_missing_from_the_frame_are_left_out(dataset):
    frame = dataset.frame.drop(columns=["model", "workload"])
    ds = Dataset(frame, "target.cycle_us", "test", weight_column="target.cycle_gap")
    card = score(Fixed(PRED), ds, SPLIT)
    assert {col for _, col in card.groups} == {"experiment_id", "phase"}
    assert card.mape("test") == pytest.approx(35.0)


# -- bad predictions ---------------------------------------------------------------------------------

def test_bad_predictions_are_counted_not_a_crash(dataset):
    pred = PRED.copy()
    pred[0] = np.nan     # train
    pred[1] = np.inf     # train
    pred[2] = 0.0        # val: APE 100
    pred[3] = -5.0       # test: APE |−5 − 50|/50 = 110
    card = score(Fixed(pred), dataset, SPLIT)
    assert card.bad_predictions == {"nan": 1, "inf": 1, "nonpositive": 2}
    assert card.mape("train") == math.inf
    assert card.overall["train"]["bad_predictions"] == {"nan": 1, "inf": 1, "nonpositive": 0}
    # finite non-positive predictions are scored as they are
    assert card.mape("val") == pytest.approx((100.0 + 20.0) / 2)
    assert card.mape("test") == pytest.approx((110.0 + 50.0) / 2)
    assert card.overall["test"]["bad_predictions"] == {"nan": 0, "inf": 0, "nonpositive": 1}
    # only the experiment holding the bad rows is infinite
    assert card.group_metric("train", "experiment_id") == {"A": math.inf, "B": pytest.approx(15.0)}


def test_scalar_prediction_is_broadcast(dataset):
    class Constant:
        name = "const"

        def predict(self, columns):
            return 100.0

    card = score(Constant(), dataset, SPLIT)
    # test targets 50 and 80: APE 100 and 25
    assert card.mape("test") == pytest.approx(62.5)


# -- weighting -------------------------------------------------------------------------------------

def test_weighted_uses_the_gap_weights(dataset):
    card = score(Fixed(PRED), dataset, SPLIT, weighted=True)
    # train gaps 1,2,1,2 on APE 10,10,10,20
    assert card.mape("train") == pytest.approx((10 + 20 + 10 + 40) / 6)
    # val gaps 1,3 on APE 25,20
    assert card.mape("val") == pytest.approx((25 + 60) / 4)
    # test gaps 3,1 on APE 20,50 and signed -20,+50
    assert card.mape("test") == pytest.approx((60 + 50) / 4)
    assert card.overall["test"]["mspe"] == pytest.approx((-60 + 50) / 4)
    assert card.group_metric("train", "experiment_id") == pytest.approx({"A": 10.0, "B": (10 + 40) / 3})
    unweighted = score(Fixed(PRED), dataset, SPLIT)
    assert unweighted.mape("train") == pytest.approx(12.5)


def test_score_predictions_matches_score(dataset):
    a = score(Fixed(PRED, "x"), dataset, SPLIT, weighted=True)
    b = score_predictions(PRED, dataset, SPLIT, "x", weighted=True)
    for part in ("train", "val", "test"):
        for key in ("n", "mape", "mspe", "p50", "bad_predictions"):
            assert a.overall[part][key] == b.overall[part][key], (part, key)
    assert a.group_metric("test", "phase") == b.group_metric("test", "phase")


