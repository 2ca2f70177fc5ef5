"""The real measured data (skipped when absent): the OTLP step traces equal the enriched step table.

``blis/otel_step_traces/<experiment>/traces.json.gz`` re-encode the 20,112 rows of
``blis/steps/enriched_steps.parquet``; both must load to the same steps, the same
targets, and the cycle-time medians the data README reports.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.dataset import load_dataset, read_steps_path
from features.otlp import read_request_spans
from features.schema import ANALYSIS_COLUMNS, BATCH_SUMMARY_COLUMNS, LEAKY_COLUMNS

TRACES = "blis/otel_step_traces"
TABLE = "blis/steps/enriched_steps.parquet"
RAW_ROWS = {
    "20260217-202857-llama-2-70b-tp4-general": 5_992,
    "20260217-203421-llama-2-70b-hf-tp4-codegen": 6_679,
    "20260218-150304-codellama-34b-tp2-general": 7_441,
}
CYCLE_MEDIAN_US = {
    "20260217-202857-llama-2-70b-tp4-general": 19_090.0,
    "20260217-203421-llama-2-70b-hf-tp4-codegen": 17_980.0,
    "20260218-150304-codellama-34b-tp2-general": 15_090.0,
}
ORDER = ["experiment_id", "step.id"]


@pytest.fixture(scope="module")
def paths(data_root):
    traces, table = data_root / TRACES, data_root / TABLE
    missing = [p for p in (traces, table) if not p.exists()]
    if missing:
        pytest.skip(f"real data not found at {missing[0]}; set STEPML_DATA to the shared data folder")
    return traces, table


@pytest.fixture(scope="module")
def raw(paths):
    traces, table = paths
    from_traces = read_steps_path(traces).sort_values(ORDER, kind="stable").reset_index(drop=True)
    from_table = pd.read_parquet(table).sort_values(ORDER, kind="stable").reset_index(drop=True)
    return from_traces, from_table


@pytest.fixture(scope="module")
def datasets(paths):
    traces, table = paths
    return load_dataset(traces), load_dataset(table)


def test_three_trace_files(paths):
    traces, _ = paths
    files = sorted(p.relative_to(traces).as_posix() for p in traces.rglob("traces.json*"))
    assert files == [f"{exp}/traces.json.gz" for exp in sorted(RAW_ROWS)]


def test_raw_rows_per_experiment(raw):
    from_traces, from_table = raw
    assert len(from_traces) == len(from_table) == 20_112
    assert from_traces.groupby("experiment_id").size().to_dict() == RAW_ROWS
    assert from_table.groupby("experiment_id").size().to_dict() == RAW_ROWS


def test_traces_hold_exactly_the_table_values(raw):
    from_traces, from_table = raw
    assert list(from_traces.columns) == ["experiment_id"] + list(BATCH_SUMMARY_COLUMNS)
    assert from_traces["experiment_id"].tolist() == from_table["experiment_id"].astype(str).tolist()
    for name, kind in BATCH_SUMMARY_COLUMNS.items():
        a, b = from_traces[name].to_numpy(), from_table[name].to_numpy()
        if kind == "int":
            assert from_traces[name].dtype == np.int64
            np.testing.assert_array_equal(a, b.astype(np.int64), err_msg=name)
        else:
            np.testing.assert_array_equal(a, b.astype(float), err_msg=name)   # bit-exact doubles


def test_both_sources_load_to_the_same_dataset(datasets):
    from_traces, from_table = datasets
    assert from_traces.target == from_table.target == "target.cycle_us"
    assert from_traces.dropped == from_table.dropped
    assert len(from_traces.frame) == len(from_table.frame) == 20_112 - from_traces.dropped
    assert set(from_traces.frame.columns) == set(from_table.frame.columns)
    a = from_traces.frame.sort_values(ORDER).reset_index(drop=True)
    b = from_table.frame.sort_values(ORDER).reset_index(drop=True)[list(a.columns)]
    for frame in (a, b):                               # str dtypes of the group columns may differ
        for col in ("experiment_id", "model", "workload"):
            frame[col] = frame[col].astype(str)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=True)
    assert from_traces.content_hash() == from_table.content_hash()


def test_excluded_columns(datasets):
    from_traces, from_table = datasets
    assert set(from_traces.excluded) == set(LEAKY_COLUMNS)
    assert set(from_table.excluded) == set(LEAKY_COLUMNS) | set(ANALYSIS_COLUMNS)
    assert not set(ANALYSIS_COLUMNS) & set(from_table.frame.columns)
    for ds in datasets:
        assert not {"num_finished", "num_preempted", "recorded_duration"} & set(ds.feature_names())


def test_cycle_medians_per_experiment(datasets):
    for ds in datasets:
        medians = ds.frame.groupby("experiment_id")["target.cycle_us"].median().to_dict()
        assert medians.keys() == CYCLE_MEDIAN_US.keys()
        for exp, expected in CYCLE_MEDIAN_US.items():
            assert medians[exp] == pytest.approx(expected, rel=0.01), exp


def test_cycle_is_the_timestamp_difference(datasets, raw):
    ds = datasets[0]
    steps = raw[0]
    exp = "20260218-150304-codellama-34b-tp2-general"
    rows = steps[steps["experiment_id"] == exp]
    ids, ts = rows["step.id"].to_numpy(), rows["step.ts_start_ns"].to_numpy()
    gap = np.diff(ids)
    expected = (np.diff(ts) / 1e3 / gap)[gap <= 10]
    got = ds.frame.loc[ds.frame["experiment_id"] == exp, "target.cycle_us"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert ((ds.weights >= 1) & (ds.weights <= 10)).all()


def test_metadata_is_joined(datasets):
    ds = datasets[0]
    assert ds.experiments["20260218-150304-codellama-34b-tp2-general"].arch.name == "CodeLlama-34b-Instruct-hf"
    assert ds.experiments["20260217-202857-llama-2-70b-tp4-general"].arch.name == "Llama-2-70b-hf"
    for meta in ds.experiments.values():
        assert meta.server is not None and meta.server.max_num_seqs == 128
        assert meta.hardware is not None and meta.hardware.dense_bf16_flops == pytest.approx(989.5e12)
    frame = ds.frame
    assert set(frame.loc[frame["tp"] == 2, "arch.num_layers"]) == {48.0}
    assert set(frame["arch.tp"]) == {2.0, 4.0}
    assert frame["kv.tokens_in_use"].to_numpy() == pytest.approx(
        (frame["kv.usage_gpu_ratio"] * frame["kv.blocks_total_gpu"] * 16).to_numpy())


def test_request_traces_read(data_root):
    folder = data_root / "blis" / "request_traces"
    files = sorted(folder.glob("*/traces.json"))
    if not files:
        pytest.skip(f"real data not found at {folder}; set STEPML_DATA to the shared data folder")
    for path in files:
        table = read_request_spans(path)
        assert len(table) > 0, path
        assert table["arrival_s"].is_monotonic_increasing
        assert (table["ttft_s"] > 0).all() and (table["ttft_s"] <= table["e2e_s"] + 1e-9).all(), path
        assert (table["prompt_tokens"] > 0).all() and (table["completion_tokens"] >= 0).all()
        assert table["end_s"].to_numpy() == pytest.approx((table["arrival_s"] + table["e2e_s"]).to_numpy(), abs=0.05)
