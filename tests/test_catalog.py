"""features.catalog: every feature's formula on hand-made columns, availability and lookup errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.catalog import (AVAILABILITY, available_features, compute_features, feature_frame, get_feature,
                              registry)
from features.errors import StepMLError
from features.schema import canonical_dtypes

# Mixtral-like MoE layer numbers, kept small enough to check by hand
MOE = {"arch.num_experts": 8.0, "arch.experts_per_token": 2.0, "arch.num_layers": 2.0, "arch.hidden_size": 4.0,
       "arch.intermediate_size": 10.0, "arch.num_heads": 2.0, "arch.num_kv_heads": 1.0, "arch.head_dim": 2.0,
       "arch.bytes_per_param": 2.0, "arch.tp": 2.0, "arch.ep": 1.0, "arch.total_params": 1_000.0,
       "arch.active_params": 400.0, "hw.flops": 1e12, "hw.hbm_bw": 1e9, "hw.interconnect_bw": 5e8}


def _one(name, cols):
    return compute_features(cols, [name])[name]


def test_batch_composition_features():
    cols = {"batch.num_prefill_reqs": np.array([0, 2, 1, 0]), "batch.num_decode_reqs": np.array([5, 0, 3, 0]),
            "batch.prefill_tokens": np.array([0, 900, 64, 0]), "batch.decode_tokens": np.array([5, 0, 3, 0]),
            "batch.scheduled_tokens": np.array([5, 900, 67, 0])}
    assert _one("batch_size", cols).tolist() == [5, 2, 4, 0]
    assert _one("is_mixed", cols).tolist() == [0, 0, 1, 0]
    assert _one("prefill_tokens", cols).tolist() == [0, 900, 64, 0]
    assert _one("scheduled_tokens", cols).dtype == np.float64


def test_kv_per_req_is_tokens_over_batch_size_and_zero_for_an_empty_batch():
    cols = {"kv.tokens_in_use": np.array([1000.0, 90.0, 50.0]), "batch.num_prefill_reqs": np.array([1, 0, 0]),
            "batch.num_decode_reqs": np.array([3, 9, 0])}
    assert _one("kv_per_req", cols).tolist() == [250.0, 10.0, 0.0]


def test_active_experts_literal_value():
    cols = {**MOE, "batch.scheduled_tokens": np.array([0.0, 1.0, 3.0, 1000.0])}
    # E(1 - (1 - k/E)^T) with E=8, k=2: T=0 → 0; T=1 → 2; T=3 → 8(1 - 0.75³) = 4.625; T large → 8
    np.testing.assert_allclose(_one("active_experts", cols), [0.0, 2.0, 4.625, 8.0], rtol=1e-12)
    np.testing.assert_allclose(_one("tokens_per_expert", cols), [0.0, 0.25, 0.75, 250.0])
    assert float(_one("is_moe", cols)) == 1.0


def test_active_experts_of_a_dense_model_is_one():
    cols = {"arch.num_experts": 1.0, "arch.experts_per_token": 1.0, "batch.scheduled_tokens": np.array([1, 7, 512])}
    assert _one("active_experts", cols).tolist() == [1.0, 1.0, 1.0]
    assert float(_one("is_moe", cols)) == 0.0


def test_rl_weight_load_of_a_dense_model_is_all_weights_over_bandwidth():
    total, nbytes, tp, hbm = 6.74e9, 2.0, 2.0, 3.35e12
    cols = {**MOE, "arch.num_experts": 1.0, "arch.experts_per_token": 1.0, "arch.total_params": total,
            "arch.bytes_per_param": nbytes, "arch.tp": tp, "hw.hbm_bw": hbm, "arch.num_layers": 32.0,
            "arch.hidden_size": 4096.0, "arch.intermediate_size": 11008.0,
            "batch.scheduled_tokens": np.array([1.0, 50.0, 2048.0])}
    expected = total * nbytes / (tp * hbm) * 1e6
    np.testing.assert_allclose(_one("rl_weight_load", cols), [expected] * 3, rtol=1e-12)
    assert expected == pytest.approx(2011.94, rel=1e-5)


def test_rl_weight_load_of_a_moe_model_counts_only_active_experts():
    cols = {**MOE, "batch.scheduled_tokens": np.array([1.0, 3.0])}
    expert = 3 * 4 * 10                                       # 120 params per expert per layer
    idle = np.array([8 - 2.0, 8 - 4.625])                     # experts not touched
    expected = (1000 - 2 * expert * idle) * 2 / (2 * 1e9) * 1e6
    np.testing.assert_allclose(_one("rl_weight_load", cols), expected, rtol=1e-12)


def test_roofline_terms_by_hand():
    cols = {**MOE, "batch.prefill_tokens": np.array([100.0]), "batch.decode_tokens": np.array([10.0]),
            "batch.scheduled_tokens": np.array([110.0]), "kv.tokens_in_use": np.array([500.0]),
            "batch.prefill_context_sum": np.array([5050.0])}
    out = compute_features(cols, ["rl_prefill_compute", "rl_decode_compute", "rl_kv_read", "rl_attn_compute",
                                  "rl_allreduce", "rl_tp_comm", "rl_expert_compute", "rl_expert_weights"])
    assert out["rl_prefill_compute"][0] == pytest.approx(2 * 400 * 100 / (2 * 1e12) * 1e6)
    assert out["rl_decode_compute"][0] == pytest.approx(2 * 400 * 10 / (2 * 1e12) * 1e6)
    kv_bytes_per_token = 2 * 2 * 1 * 2 * 2                   # K and V · layers · kv heads · head dim · bytes
    assert out["rl_kv_read"][0] == pytest.approx(500 * kv_bytes_per_token / (2 * 1e9) * 1e6)
    assert out["rl_attn_compute"][0] == pytest.approx(4 * 2 * 2 * 2 * 5050 / (2 * 1e12) * 1e6)
    assert out["rl_allreduce"][0] == pytest.approx(4 * 2 * 110 * 4 * 2 * (2 - 1) / 2 / 5e8 * 1e6)
    assert out["rl_tp_comm"][0] == pytest.approx(4 * 2 * 110 * 4 * 2 * (2 - 1) / 2 / 1e9 * 1e6)   # at HBM B/s
    assert out["rl_expert_compute"][0] == pytest.approx(2 * 110 * 2 * 120 * 2 / (2 * 1 * 1e12) * 1e6)
    active = 8 * (1 - 0.75 ** 110)
    assert out["rl_expert_weights"][0] == pytest.approx(active * 120 * 2 * 2 / (2 * 1 * 1e9) * 1e6)


def test_allreduce_is_zero_without_tensor_parallelism():
    cols = {**MOE, "arch.tp": 1.0, "batch.scheduled_tokens": np.array([64.0])}
    assert _one("rl_allreduce", cols).tolist() == [0.0]


def test_leaky_features_are_never_available():
    every_column = list(canonical_dtypes()) + list(MOE)
    leaky = {f.name for f in registry().values() if f.availability == "leaky"}
    assert leaky == {"num_finished", "num_preempted", "recorded_duration"}
    for allow in (("simulator", "trace"), ("simulator", "trace", "leaky"), ("leaky",)):
        names = {f.name for f in available_features(every_column, allow)}
        assert not names & leaky, allow
    assert available_features(every_column, ("leaky",)) == []
    assert {f.availability for f in available_features(every_column, ("simulator",))} == {"simulator"}
    trace_only = {f.name for f in available_features(every_column, ("trace",))}
    assert trace_only == {"running_depth", "waiting_depth", "kv_usage"}


def test_available_features_need_every_input():
    names = {f.name for f in available_features(["batch.num_prefill_reqs", "batch.num_decode_reqs"])}
    assert names == {"num_prefill_reqs", "num_decode_reqs", "batch_size", "is_mixed"}


def test_unknown_feature_lists_the_valid_names():
    with pytest.raises(StepMLError) as info:
        get_feature("batch_sz")
    message = str(info.value)
    assert message.startswith("unknown feature 'batch_sz'; valid: ")
    assert all(name in message for name in ("batch_size", "kv_per_req", "active_experts", "rl_weight_load"))
    with pytest.raises(StepMLError, match=r"unknown feature 'nope'"):
        compute_features({}, ["nope"])


def test_missing_input_column_is_named():
    with pytest.raises(StepMLError, match=r"feature 'kv_per_req' needs column\(s\) kv\.tokens_in_use that the data lacks"):
        compute_features({"batch.num_prefill_reqs": [1], "batch.num_decode_reqs": [1]}, ["kv_per_req"])


def test_registry_is_well_formed():
    reg = registry()
    assert len(reg) == len({f.name for f in reg.values()}) >= 40
    known = set(canonical_dtypes())
    for name, feature in reg.items():
        assert feature.name == name and feature.unit and feature.description
        assert feature.availability in AVAILABILITY
        assert feature.inputs, name
        for col in feature.inputs:
            assert col in known or col.startswith(("arch.", "hw.")), (name, col)
    with pytest.raises(TypeError):
        reg["x"] = None                                         # read-only view


def _full_row() -> dict[str, float]:
    """A value for every input of every feature (MoE numbers above, 3.0 elsewhere)."""
    inputs = {c for f in registry().values() for c in f.inputs}
    return {c: MOE.get(c, 3.0) for c in sorted(inputs)}


def test_every_feature_is_finite_on_a_full_row():
    cols = {c: np.array([v, v]) for c, v in _full_row().items()}
    values = compute_features(cols, list(registry()))
    for name, v in values.items():
        assert v.shape == (2,) and np.all(np.isfinite(v)), name


def test_plain_float_inputs_give_the_same_values_as_arrays():
    """One simulated step passes plain floats: every feature must accept them."""
    row = _full_row()
    scalar = compute_features(row, list(registry()))
    array = compute_features({c: np.array([v]) for c, v in row.items()}, list(registry()))
    for name in registry():
        assert float(scalar[name]) == pytest.approx(float(array[name][0]), rel=1e-12), name


def test_feature_frame_is_aligned_with_the_index():
    frame = pd.DataFrame({"batch.num_prefill_reqs": [1, 0], "batch.num_decode_reqs": [2, 4],
                          "arch.num_experts": [8.0, 8.0]}, index=[10, 20])
    out = feature_frame(frame, ["batch_size", "is_moe"])
    assert list(out.index) == [10, 20]
    assert out["batch_size"].tolist() == [3.0, 4.0] and out["is_moe"].tolist() == [1.0, 1.0]
