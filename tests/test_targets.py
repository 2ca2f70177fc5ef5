"""features.targets (cycle and duration targets) and the validation load_dataset applies to them."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.catalog import get_feature
from features.dataset import load_dataset
from features.errors import StepMLError
from features.schema import ANALYSIS_COLUMNS, LEAKY_COLUMNS
from features.targets import DEFAULT_MAX_GAP, add_targets, sampling_stats, target_column

MS = 1_000_000  # ns


def _steps(ids, ts_ms, experiment=None, duration=None):
    frame = pd.DataFrame({"step.id": ids, "step.ts_start_ns": [int(t * MS) for t in ts_ms],
                          "batch.prefill_tokens": 0, "batch.decode_tokens": 1})
    if duration is not None:
        frame["step.duration_us"] = duration
    if experiment is not None:
        frame.insert(0, "experiment_id", experiment)
    return frame


def _nan_equal(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=1e-12, equal_nan=True)


# -- add_targets ---------------------------------------------------------------------------------

def test_cycle_is_delta_ts_over_delta_id_attributed_to_the_earlier_step():
    # ids 10, 11, 13, 30, 31; Δts 20 ms over 1 id, 50 ms over 2 ids, 17 ids (> max_gap), 18 ms over 1
    frame = add_targets(_steps([10, 11, 13, 30, 31], [0, 20, 70, 400, 418]))
    assert frame["step.id"].tolist() == [10, 11, 13, 30, 31]
    _nan_equal(frame["target.cycle_us"], [20_000, 25_000, np.nan, 18_000, np.nan])
    _nan_equal(frame["target.cycle_gap"], [1, 2, 17, 1, np.nan])


def test_max_gap_decides_which_gaps_give_a_cycle_time():
    steps = _steps([10, 11, 13, 30, 31], [0, 20, 70, 400, 418])
    wide = add_targets(steps, max_gap=17)
    assert wide["target.cycle_us"].iloc[2] == pytest.approx(330_000 / 17)
    narrow = add_targets(steps, max_gap=1)
    _nan_equal(narrow["target.cycle_us"], [20_000, np.nan, np.nan, 18_000, np.nan])
    _nan_equal(narrow["target.cycle_gap"], [1, 2, 17, 1, np.nan])   # the gap is kept even without a cycle
    assert DEFAULT_MAX_GAP == 10
    with pytest.raises(StepMLError, match=r"max gap must be >= 1, got 0"):
        add_targets(steps, max_gap=0)


def test_unsorted_input_is_sorted_before_differencing():
    frame = add_targets(_steps([13, 10, 11], [70, 0, 20]).assign(tag=["c", "a", "b"]))
    assert frame["step.id"].tolist() == [10, 11, 13]
    assert frame["tag"].tolist() == ["a", "b", "c"]                  # rows travel with their ids
    _nan_equal(frame["target.cycle_us"], [20_000, 25_000, np.nan])


def test_experiments_do_not_leak_into_each_other():
    a = _steps([1, 2, 3], [0, 10, 20], experiment="A")
    b = _steps([4, 5, 6], [25, 55, 85], experiment="B")    # B's first step follows A's last by 1 id
    mixed = pd.concat([b, a]).sample(frac=1.0, random_state=3).reset_index(drop=True)
    frame = add_targets(mixed)
    assert frame["experiment_id"].tolist() == ["A"] * 3 + ["B"] * 3
    _nan_equal(frame["target.cycle_us"], [10_000, 10_000, np.nan, 30_000, 30_000, np.nan])
    _nan_equal(frame["target.cycle_gap"], [1, 1, np.nan, 1, 1, np.nan])


def test_same_step_id_in_two_experiments_is_fine_but_a_duplicate_within_one_is_not():
    ok = add_targets(pd.concat([_steps([1, 2], [0, 10], "A"), _steps([1, 2], [0, 30], "B")]))
    _nan_equal(ok["target.cycle_us"], [10_000, np.nan, 30_000, np.nan])
    dup = pd.concat([_steps([1, 2, 3], [0, 10, 20], "A"), _steps([5, 7, 7], [0, 10, 20], "B")])
    with pytest.raises(StepMLError, match=r"^src: duplicate step id 7 in experiment B$"):
        add_targets(dup, source="src")
    with pytest.raises(StepMLError, match=r"duplicate step id 3$"):
        add_targets(_steps([3, 3, 4], [0, 1, 2]))


def test_duration_target_is_the_recorded_duration():
    frame = add_targets(_steps([1, 2, 3], [0, 10, 20], duration=[410, 395, 7]))
    assert frame["target.duration_us"].tolist() == [410.0, 395.0, 7.0]
    assert frame["target.duration_us"].dtype == np.float64
    assert "target.duration_us" not in add_targets(_steps([1, 2], [0, 1])).columns


def test_non_increasing_timestamps_give_non_positive_cycles():
    frame = add_targets(_steps([1, 2, 3], [0, 0, -5]))
    _nan_equal(frame["target.cycle_us"], [0.0, -5_000, np.nan])


def test_target_column_resolves_aliases_and_names_valid_ones():
    cols = ["step.id", "target.cycle_us", "target.duration_us", "target.cycle_gap", "my_time"]
    assert target_column("cycle", cols) == "target.cycle_us"
    assert target_column("duration", cols) == "target.duration_us"
    assert target_column("my_time", cols) == "my_time"
    with pytest.raises(StepMLError) as info:
        target_column("latency", cols)
    assert str(info.value) == "unknown target 'latency'; valid: cycle, duration, or a numeric column: my_time"
    with pytest.raises(StepMLError) as info:  # a mapped table: cycle cannot exist, and is not offered
        target_column("cycle", ["batch.scheduled_tokens", "target.value_us"], mapped=True)
    assert str(info.value) == ("unknown target 'cycle' ('cycle' needs step data: a column-mapped table has no step "
                               "timestamps); valid: target.value_us, or a numeric column: batch.scheduled_tokens")


def test_sampling_stats_by_hand():
    frame = add_targets(_steps([0, 1, 2, 4, 20], [0, 10, 20, 40, 200], "A"))
    s = sampling_stats(frame)["A"]
    assert s["rows"] == 5 and s["step_id_span"] == 21.0
    assert s["sampling_rate"] == pytest.approx(5 / 21)
    assert s["gap_median"] == 1.5 and s["gap_max"] == 16.0
    assert s["gap_share_1"] == 0.5 and s["gap_share_2_10"] == 0.25 and s["gap_share_over_10"] == 0.25


# -- load_dataset: validation of targets and columns ----------------------------------------------------

def test_dataset_cycle_target_weights_and_dropped_rows(tmp_path, steps_table, write_table, isolated_metadata):
    table = steps_table({"expA": 5, "expB": 4}, id_step=2, cycle_ns=15 * MS)
    ds = load_dataset(write_table(tmp_path / "s.parquet", table))
    assert ds.target == "target.cycle_us" and ds.weight_column == "target.cycle_gap"
    assert ds.dropped == 2 and len(ds.frame) == 7
    assert ds.y.tolist() == [15_000.0] * 7
    assert ds.weights.tolist() == [2.0] * 7
    assert ds.experiments.keys() == {"expA", "expB"}
    assert not ds.synthetic and ds.kind == "steps"
    dur = load_dataset(tmp_path / "s.parquet", "duration")
    assert dur.target == "target.duration_us" and dur.weights is None and dur.dropped == 0
    assert dur.y.tolist() == [400.0] * 9


def test_dataset_max_gap_is_passed_through(tmp_path, steps_table, write_table, isolated_metadata):
    path = write_table(tmp_path / "s.csv", steps_table({"e": 7}, id_step=[1, 5, 1, 5, 1, 5]))
    assert len(load_dataset(path).frame) == 6
    assert load_dataset(path, max_gap=4).y.tolist() == [20_000.0, 20_000.0, 20_000.0]


def test_too_few_rows_with_a_target_is_an_error(tmp_path, steps_table, write_table, isolated_metadata):
    path = write_table(tmp_path / "s.csv", steps_table({"e": 5}, id_step=[1, 5, 1, 5]))
    with pytest.raises(StepMLError, match=r"rows with a valid 'target.cycle_us' target.*has 2 rows"):
        load_dataset(path, max_gap=4)


def test_zero_or_negative_cycle_is_an_error(tmp_path, steps_table, write_table, isolated_metadata):
    table = steps_table({"e": 5})
    table.loc[3, "step.ts_start_ns"] = table.loc[2, "step.ts_start_ns"]     # a step that took no time
    with pytest.raises(StepMLError, match=r"target 'target\.cycle_us' has 1 zero or negative values"):
        load_dataset(write_table(tmp_path / "s.csv", table))
    table.loc[3, "step.ts_start_ns"] = table.loc[2, "step.ts_start_ns"] - 5   # clock went backwards
    with pytest.raises(StepMLError, match=r"zero or negative"):
        load_dataset(write_table(tmp_path / "s.csv", table))


def test_experiment_with_fewer_than_three_rows_is_an_error(tmp_path, steps_table, write_table, isolated_metadata):
    path = write_table(tmp_path / "s.csv", steps_table({"big": 6, "tiny": 2}))
    with pytest.raises(StepMLError, match=r"experiment 'tiny' has 2 rows \(at least 3 needed\)"):
        load_dataset(path)


def test_missing_data_is_an_error(tmp_path):
    with pytest.raises(StepMLError, match=r"data not found: .*nothing\.parquet"):
        load_dataset(tmp_path / "nothing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StepMLError, match=r"no traces\.json, traces\.json\.gz or step tables below this folder"):
        load_dataset(tmp_path / "empty")


def test_nan_in_a_user_target_column_is_an_error(tmp_path, steps_table, write_table, isolated_metadata):
    table = steps_table({"e": 5})
    table["my_time"] = [1.0, 2.0, math.nan, 4.0, 5.0]
    path = write_table(tmp_path / "s.csv", table)
    with pytest.raises(StepMLError, match=r"target 'my_time' has 1 missing/NaN values \(first at row 2\)"):
        load_dataset(path, "my_time")
    with pytest.raises(StepMLError, match=r"unknown target 'latency'"):
        load_dataset(path, "latency")
    table["my_time"] = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert load_dataset(write_table(tmp_path / "s.csv", table), "my_time").y.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_duplicate_step_id_through_load_dataset(tmp_path, steps_table, write_table, isolated_metadata):
    table = steps_table({"e": 5})
    table.loc[4, "step.id"] = 2
    with pytest.raises(StepMLError, match=r"duplicate step id 2 in experiment e"):
        load_dataset(write_table(tmp_path / "s.csv", table))


def test_leaky_and_analysis_columns_are_excluded(tmp_path, steps_table, write_table, isolated_metadata):
    table = steps_table({"e": 6})
    for col in ANALYSIS_COLUMNS:
        table[col] = 1.0
    ds = load_dataset(write_table(tmp_path / "s.parquet", table))
    assert set(ds.excluded) == set(LEAKY_COLUMNS) | set(ANALYSIS_COLUMNS)
    assert not set(ANALYSIS_COLUMNS) & set(ds.frame.columns)
    names = ds.feature_names()
    assert not {"num_finished", "num_preempted", "recorded_duration"} & set(names)
    assert {"batch_size", "kv_tokens", "running_depth"} <= set(names)
    # the columns are there (a leaky request would find them) yet the features never offer them
    assert ds.feature_names(("simulator", "trace", "leaky")) == names
    for name in names:
        assert not set(get_feature(name).inputs) & set(LEAKY_COLUMNS), name


def test_excluded_lists_only_the_leaky_columns_present(tmp_path, steps_table, write_table,
                                                              isolated_metadata):
    table = steps_table({"e": 4})[["experiment_id", "step.id", "step.ts_start_ns", "batch.prefill_tokens",
                                   "batch.decode_tokens"]]
    ds = load_dataset(write_table(tmp_path / "s.csv", table))
    assert ds.excluded == ("step.ts_start_ns",)     # the timestamp itself is timing, never a feature
    assert "kv_tokens" not in ds.feature_names()


def test_kv_tokens_in_use_is_ratio_times_blocks_times_16(tmp_path, steps_table, write_table, isolated_metadata):
    table = steps_table({"e": 5})
    ds = load_dataset(write_table(tmp_path / "s.csv", table), "duration")
    expected = table["kv.usage_gpu_ratio"] * table["kv.blocks_total_gpu"] * 16
    np.testing.assert_allclose(ds.frame["kv.tokens_in_use"], expected, rtol=1e-12)
    assert ds.frame["kv.tokens_in_use"].tolist() == pytest.approx([160, 320, 480, 640, 800])
    # a table that already knows the tokens keeps them
    table["kv.tokens_in_use"] = 7.0
    kept = load_dataset(write_table(tmp_path / "s2.csv", table), "duration")
    assert kept.frame["kv.tokens_in_use"].tolist() == [7.0] * 5


def test_otlp_folder_gives_one_experiment_per_trace_folder(tmp_path, make_steps, write_otlp, isolated_metadata):
    write_otlp(tmp_path / "runs" / "20260101-000000-tiny-tp2-general" / "traces.json.gz", make_steps(5))
    write_otlp(tmp_path / "runs" / "other" / "traces.json", make_steps(4, cycle_ns=10 * MS))
    ds = load_dataset(tmp_path / "runs")
    assert sorted(ds.experiments) == ["20260101-000000-tiny-tp2-general", "other"]
    by_exp = ds.frame.groupby("experiment_id")["target.cycle_us"].agg(["size", "median"])
    assert by_exp.loc["other"].tolist() == [3, 10_000.0]
    assert by_exp.loc["20260101-000000-tiny-tp2-general"].tolist() == [4, 20_000.0]
    tiny = ds.frame[ds.frame["experiment_id"] == "20260101-000000-tiny-tp2-general"]
    assert set(tiny["model"]) == {"tiny"} and set(tiny["workload"]) == {"general"} and set(tiny["tp"]) == {2}
    assert set(tiny["arch.tp"]) == {2.0}


def test_skip_bad_lines_through_load_dataset(tmp_path, make_steps, write_otlp, isolated_metadata):
    path = write_otlp(tmp_path / "e" / "traces.json", make_steps(6), per_line=2, insert_lines={2: "{bad"})
    with pytest.raises(StepMLError, match=r"traces\.json:2: malformed JSON"):
        load_dataset(path)
    assert len(load_dataset(path, skip_bad_lines=True).frame) == 5
