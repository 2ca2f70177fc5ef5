"""Probe pairs for the monotonicity constraints and the extrapolation grid (evaluation.probes)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sympy

from evaluation.baselines import roofline_time
from evaluation.predictors import FormulaPredictor
from evaluation.probes import AXES, extrapolation_grid, perturb, probe_pairs
from features import catalog
from features.dataset import load_dataset

ARCH = {"arch.active_params": 1e9, "arch.total_params": 1e9, "arch.tp": 2.0, "arch.ep": 1.0,
        "arch.num_layers": 10.0, "arch.hidden_size": 1000.0, "arch.num_heads": 10.0, "arch.num_kv_heads": 2.0,
        "arch.head_dim": 100.0, "arch.intermediate_size": 3000.0, "arch.num_experts": 8.0,
        "arch.experts_per_token": 2.0, "arch.bytes_per_param": 2.0,
        "hw.flops": 1e15, "hw.hbm_bw": 1e12, "hw.interconnect_bw": 1e11}

#: Features that must not decrease when the batch gets more work on any axis.
WORK_FEATURES = ("prefill_tokens", "decode_tokens", "scheduled_tokens", "batch_size", "kv_tokens",
                 "decode_ctx_sum", "prefill_attn_work", "active_experts", "tokens_per_expert",
                 "rl_prefill_compute", "rl_decode_compute", "rl_attn_compute", "rl_weight_load", "rl_kv_read",
                 "rl_allreduce", "rl_expert_compute", "rl_expert_weights")


def _hand_frame() -> pd.DataFrame:
    """Prefill-only, decode-only and mixed batches; batch columns are integers as read from traces."""
    frame = pd.DataFrame({
        "experiment_id": ["A", "A", "A"],
        "batch.num_prefill_reqs": [1, 0, 2],
        "batch.num_decode_reqs": [0, 8, 4],
        "batch.prefill_tokens": [100, 0, 1000],
        "batch.decode_tokens": [0, 8, 4],
        "batch.scheduled_tokens": [100, 8, 1004],
        "batch.prefill_context_sum": [5050, 0, 300_000],
        "batch.decode_context_sum": [0, 4000, 2000],
        "kv.tokens_in_use": [100.0, 4000.0, 3000.0],
    })
    for key, value in ARCH.items():
        frame[key] = value
    return frame


def _col(frame: pd.DataFrame, name: str) -> list[float]:
    return frame[name].astype(float).tolist()


@pytest.fixture(scope="module")
def demo_frame() -> pd.DataFrame:
    return load_dataset(None).frame


# -- perturb ---------------------------------------------------------------------------------------------

def test_perturb_prefill_axis():
    lo = _hand_frame()
    hi = perturb(lo, "prefill_tokens")
    # d = max(16, round(0.25 * prefill)) = 25, 16, 250
    assert _col(hi, "batch.prefill_tokens") == [125, 16, 1250]
    assert _col(hi, "batch.scheduled_tokens") == [125, 24, 1254]
    assert _col(hi, "kv.tokens_in_use") == [125, 4016, 3250]
    assert _col(hi, "batch.prefill_context_sum") == [5050 + 325, 136, 300_000 + 31_375]
    assert _col(hi, "batch.num_prefill_reqs") == [1, 1, 2]   # the decode-only batch gains a prefill request
    for unchanged in ("batch.decode_tokens", "batch.num_decode_reqs", "batch.decode_context_sum"):
        assert _col(hi, unchanged) == _col(lo, unchanged)


def test_perturb_decode_axis():
    lo = _hand_frame()
    hi = perturb(lo, "decode_tokens")
    # d = max(1, round(0.25 * decode)) = 1, 2, 1; mean KV per request = 100/1, 4000/8, 3000/6
    assert _col(hi, "batch.decode_tokens") == [1, 10, 5]
    assert _col(hi, "batch.num_decode_reqs") == [1, 10, 5]
    assert _col(hi, "batch.scheduled_tokens") == [101, 10, 1005]
    assert _col(hi, "kv.tokens_in_use") == [200, 5000, 3500]
    assert _col(hi, "batch.decode_context_sum") == [100, 5000, 2500]
    for unchanged in ("batch.prefill_tokens", "batch.num_prefill_reqs", "batch.prefill_context_sum"):
        assert _col(hi, unchanged) == _col(lo, unchanged)


def test_perturb_kv_axis():
    lo = _hand_frame()
    hi = perturb(lo, "kv_tokens")
    assert _col(hi, "kv.tokens_in_use") == [141, 5016, 3766]
    assert _col(hi, "batch.decode_context_sum") == [16, 5016, 2516]
    for unchanged in ("batch.prefill_tokens", "batch.decode_tokens", "batch.scheduled_tokens",
                      "batch.num_prefill_reqs", "batch.num_decode_reqs", "batch.prefill_context_sum"):
        assert _col(hi, unchanged) == _col(lo, unchanged)


def test_perturb_copies_and_rejects_unknown_axes():
    lo = _hand_frame()
    before = lo.copy()
    for axis in AXES:
        hi = perturb(lo, axis)
        assert hi is not lo
        assert hi["batch.prefill_tokens"].dtype.kind == "f"
    pd.testing.assert_frame_equal(lo, before)
    with pytest.raises(ValueError, match="unknown probe axis 'batch_size'.*prefill_tokens"):
        perturb(lo, "batch_size")


@pytest.mark.parametrize("axis", AXES)
def test_perturb_moves_every_derived_feature_consistently(axis):
    lo = _hand_frame()
    hi = perturb(lo, axis)
    f_lo = catalog.compute_features(lo, WORK_FEATURES)
    f_hi = catalog.compute_features(hi, WORK_FEATURES)
    for name in WORK_FEATURES:
        assert (f_hi[name] >= f_lo[name] - 1e-9).all(), (axis, name)
    main = {"prefill_tokens": "prefill_tokens", "decode_tokens": "decode_tokens", "kv_tokens": "kv_tokens"}[axis]
    assert (f_hi[main] > f_lo[main]).all()
    assert (f_hi["scheduled_tokens"] == f_hi["prefill_tokens"] + f_hi["decode_tokens"]).all()


# -- probe_pairs ---------------------------------------------------------------------------------------

def test_probe_pairs_are_deterministic_for_a_seeded_generator(demo_frame):
    a = probe_pairs(demo_frame, np.random.default_rng(7), n=64)
    b = probe_pairs(demo_frame, np.random.default_rng(7), n=64)
    c = probe_pairs(demo_frame, np.random.default_rng(8), n=64)
    assert set(a) == set(AXES)
    for axis in AXES:
        pd.testing.assert_frame_equal(a[axis][0], b[axis][0])
        pd.testing.assert_frame_equal(a[axis][1], b[axis][1])
        assert len(a[axis][0]) == len(a[axis][1]) == 64
    assert not a["prefill_tokens"][0].equals(c["prefill_tokens"][0])
    # every axis perturbs the same drawn rows, kept in their original order
    lo = a["decode_tokens"][0]
    pd.testing.assert_frame_equal(lo, a["kv_tokens"][0])
    assert lo["step.id"].groupby(lo["experiment_id"]).apply(lambda s: s.is_monotonic_increasing).all()


def test_probe_pairs_small_frames_and_missing_columns():
    frame = _hand_frame()
    pairs = probe_pairs(frame, np.random.default_rng(0), n=256)
    pd.testing.assert_frame_equal(pairs["prefill_tokens"][0], frame)   # n > rows: every row once
    without_kv = probe_pairs(frame.drop(columns="kv.tokens_in_use"), np.random.default_rng(0))
    assert set(without_kv) == {"prefill_tokens", "decode_tokens"}
    only = probe_pairs(frame, np.random.default_rng(0), axes=("decode_tokens",))
    assert set(only) == {"decode_tokens"}


def _violations(expr: str, pairs) -> dict[str, int]:
    predictor = FormulaPredictor(sympy.sympify(expr), ("prefill_tokens", "decode_tokens", "kv_tokens"))
    return {axis: int((predictor.predict(hi) < predictor.predict(lo)).sum()) for axis, (lo, hi) in pairs.items()}


def test_monotone_formula_has_no_violations(demo_frame):
    pairs = probe_pairs(demo_frame, np.random.default_rng(0), n=256)
    assert _violations("100 + 2*prefill_tokens + 3*decode_tokens", pairs) == {a: 0 for a in AXES}
    assert _violations("50 + 0.01*kv_tokens", pairs) == {a: 0 for a in AXES}


def test_decreasing_formula_has_violations(demo_frame):
    pairs = probe_pairs(demo_frame, np.random.default_rng(0), n=256)
    found = _violations("100000 - 10*decode_tokens", pairs)
    assert found["decode_tokens"] == 256       # every decode probe adds at least one token
    assert found["prefill_tokens"] == found["kv_tokens"] == 0
    assert _violations("100000 - kv_tokens", pairs)["kv_tokens"] == 256


def test_roofline_is_monotone_on_the_probe_pairs(demo_frame):
    for axis, (lo, hi) in probe_pairs(demo_frame, np.random.default_rng(1), n=256).items():
        assert (roofline_time(hi) >= roofline_time(lo) - 1e-9).all(), axis


# -- extrapolation grid ----------------------------------------------------------------------------------

def test_extrapolation_grid_covers_the_server_limits():
    template = {"arch.tp": 2.0, "hw.flops": 1e15, "experiment_id": "x", "batch.prefill_tokens": -1.0}
    grid = extrapolation_grid(template, max_num_seqs=128, max_batched_tokens=2048, max_model_len=4096)
    batch = grid["batch.num_prefill_reqs"] + grid["batch.num_decode_reqs"]
    assert batch.min() == 1 and batch.max() == 128
    assert {1, 128} <= set(batch.astype(int))
    assert grid["batch.prefill_tokens"].min() == 0 and grid["batch.prefill_tokens"].max() == 2048
    # template constants are carried; columns the grid sets are not overwritten
    assert (grid["arch.tp"] == 2.0).all() and (grid["hw.flops"] == 1e15).all()
    assert (grid["experiment_id"] == "x").all()
    assert (grid["batch.prefill_tokens"] >= 0).all()


def test_extrapolation_grid_rows_are_consistent_batches():
    grid = extrapolation_grid({}, max_num_seqs=8, max_batched_tokens=512, max_model_len=1024, points=4)
    # batch sizes round(geomspace(1, 8, 4)) = 1, 2, 4, 8; prefill 0, 16, 51, 161, 512
    batch = (grid["batch.num_prefill_reqs"] + grid["batch.num_decode_reqs"]).astype(int)
    assert sorted(set(batch)) == [1, 2, 4, 8]
    assert sorted(set(grid["batch.prefill_tokens"].astype(int))) == [0, 16, 51, 161, 512]
    assert (grid["batch.scheduled_tokens"] == grid["batch.prefill_tokens"] + grid["batch.decode_tokens"]).all()
    assert (grid["batch.num_decode_reqs"] == grid["batch.decode_tokens"]).all()
    assert (grid["batch.num_prefill_reqs"] == (grid["batch.prefill_tokens"] > 0)).all()
    assert (grid["kv.tokens_in_use"] >= grid["batch.prefill_tokens"]).all()
    assert (grid["batch.decode_context_sum"] <= 1024 * grid["batch.decode_tokens"] + 1e-9).all()
    # no batch exceeds the step's token budget
    assert grid["batch.scheduled_tokens"].max() == 512
    assert (grid["batch.scheduled_tokens"] <= 512).all()
    # every (batch size, prefill) combination within the budget, at 4 KV fill levels
    combos = grid.groupby([batch, grid["batch.prefill_tokens"]]).size()
    assert (combos == 4).all()
    assert len(combos) == 4 * 5 - 3   # 512-token prefill fits only next to 0 decodes (batch size 1)
    for name in ("prefill_tokens", "decode_tokens", "kv_tokens", "prefill_attn_work", "batch_size"):
        assert np.isfinite(catalog.compute_features(grid, [name])[name]).all()
