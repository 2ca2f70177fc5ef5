"""Step tables (parquet/CSV), canonical dtypes, and TOML column maps (features.colmap)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from features.colmap import UNIT_TO_US, apply_colmap, load_colmap, resolve_map, shipped_maps
from features.dataset import load_dataset, read_steps_path
from features.errors import StepMLError
from features.schema import coerce_columns, require_columns

from conftest import write_table

# -- step tables and dtypes ----------------------------------------------------------------------


def test_parquet_and_csv_step_tables_load_the_same(tmp_path, steps_table, write_table, isolated_metadata):
    table = steps_table({"expA": 6, "expB": 5})
    pq = load_dataset(write_table(tmp_path / "steps.parquet", table))
    csv = load_dataset(write_table(tmp_path / "steps.csv", table))
    assert pq.kind == csv.kind == "steps"
    assert len(pq.frame) == 9            # the last row of each experiment has no cycle time
    pd.testing.assert_frame_equal(pq.frame, csv.frame, check_like=True)


def test_step_table_without_experiment_column_uses_the_file_stem(tmp_path, make_steps, write_table):
    raw = read_steps_path(write_table(tmp_path / "run42.csv", make_steps(4)))
    assert raw["experiment_id"].tolist() == ["run42"] * 4
    assert list(raw.columns)[0] == "experiment_id"


def test_step_table_missing_required_column_is_named(tmp_path, make_steps, write_table):
    frame = pd.DataFrame(make_steps(4)).drop(columns=["batch.prefill_tokens"])
    with pytest.raises(StepMLError, match=r"missing required attribute\(s\): batch\.prefill_tokens"):
        read_steps_path(write_table(tmp_path / "s.parquet", frame))


def test_unsupported_and_corrupt_tables_are_errors(tmp_path, isolated_metadata):
    (tmp_path / "s.xlsx").write_text("x")
    with pytest.raises(StepMLError, match=r"unsupported data file"):
        load_dataset(tmp_path / "s.xlsx")
    (tmp_path / "s.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StepMLError, match=r"s\.parquet: cannot read table"):
        load_dataset(tmp_path / "s.parquet")


def test_coerce_columns_casts_and_names_bad_columns():
    frame = pd.DataFrame({"step.id": ["1", "2"], "kv.usage_gpu_ratio": ["0.5", "1"], "tp": [2.0, 4.0],
                          "arch.hidden_size": [8, 8], "experiment_id": [1, 2], "other": ["a", "b"]})
    out = coerce_columns(frame, "src")
    assert out["step.id"].dtype == np.int64 and out["step.id"].tolist() == [1, 2]
    assert out["kv.usage_gpu_ratio"].dtype == np.float64
    assert out["tp"].dtype == np.int64
    assert out["arch.hidden_size"].dtype == np.float64
    assert out["experiment_id"].tolist() == ["1", "2"]
    assert out["other"].tolist() == ["a", "b"]
    with pytest.raises(StepMLError, match=r"src: column 'step\.id' has 1 missing values"):
        coerce_columns(pd.DataFrame({"step.id": [1, None]}), "src")
    with pytest.raises(StepMLError, match=r"src: column 'batch\.decode_tokens' is not int"):
        coerce_columns(pd.DataFrame({"batch.decode_tokens": ["3", "three"]}), "src")
    with pytest.raises(StepMLError, match=r"src: column 'step\.id' must hold integers; row 1 has 2\.5"):
        coerce_columns(pd.DataFrame({"step.id": [1.0, 2.5]}), "src")


def test_csv_with_fractional_step_ids_is_an_error(tmp_path, make_steps, write_table, isolated_metadata):
    frame = pd.DataFrame(make_steps(5))
    frame["step.id"] = frame["step.id"] + 0.5
    with pytest.raises(StepMLError, match=r"column 'step\.id' must hold integers"):
        load_dataset(write_table(tmp_path / "s.csv", frame))


def test_require_columns_lists_every_missing_one():
    with pytest.raises(StepMLError, match=r"t: missing required attribute\(s\): a, c"):
        require_columns(pd.DataFrame({"b": [1]}), ("a", "b", "c"), "t")


# -- column maps ---------------------------------------------------------------------------------

CUSTOM_MAP = """
name = "tiny"
description = "a hand-made kernel table"
hardware = "h100-sxm"
group_columns = ["shape", "kernel"]
experiment = "{hidden}-{dtype}"

[target]
column = "latency_ms"
unit = "ms"

[features]
"batch.scheduled_tokens" = "tokens"
"arch.hidden_size" = "hidden"
"arch.intermediate_size" = { column = "inter_k", scale = 1024 }

[derived]
shape = "{hidden}x{inter_k}"

[filters]
dtype = "bf16"
routing = ["balanced", "uniform"]

[constants]
"arch.num_layers" = 1
"""


def _kernel_table() -> pd.DataFrame:
    return pd.DataFrame({
        "tokens": [1, 2, 4, 8, 16, 32],
        "hidden": [4096, 4096, 4096, 8192, 8192, 8192],
        "inter_k": [14, 14, 14, 28, 28, 28],
        "dtype": ["bf16", "bf16", "fp8", "bf16", "bf16", "bf16"],
        "routing": ["balanced", "uniform", "balanced", "skewed", "balanced", "uniform"],
        "kernel": ["triton", "triton", "triton", "cutlass", "cutlass", "cutlass"],
        "latency_ms": [0.5, 0.25, 0.125, 2.0, 4.0, 8.0],
    })


@pytest.fixture
def custom_map(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(CUSTOM_MAP)
    return path


def test_custom_map_parses(custom_map):
    cmap = load_colmap(custom_map)
    assert cmap.name == "tiny" and cmap.target == ("latency_ms",) and cmap.target_unit == "ms"
    assert cmap.features == {"batch.scheduled_tokens": "tokens", "arch.hidden_size": "hidden",
                             "arch.intermediate_size": "inter_k"}
    assert cmap.units == {"arch.intermediate_size": 1024.0}
    assert cmap.filters == {"dtype": ["bf16"], "routing": ["balanced", "uniform"]}
    assert cmap.constants == {"arch.num_layers": 1.0}
    assert cmap.hardware == "h100-sxm"
    assert cmap.group_columns == ("shape", "kernel")
    assert cmap.source == str(custom_map)


def test_custom_map_applied_to_a_small_table(custom_map):
    out = apply_colmap(_kernel_table(), load_colmap(custom_map), "k.csv")
    # fp8 row (index 2) and skewed row (index 3) are filtered out
    assert out["batch.scheduled_tokens"].tolist() == [1, 2, 16, 32]
    assert out["arch.hidden_size"].tolist() == [4096, 4096, 8192, 8192]
    assert out["arch.intermediate_size"].tolist() == [14 * 1024, 14 * 1024, 28 * 1024, 28 * 1024]
    assert out["target.value_us"].tolist() == [500.0, 250.0, 4000.0, 8000.0]      # ms → µs
    assert out["shape"].tolist() == ["4096x14", "4096x14", "8192x28", "8192x28"]
    assert out["experiment_id"].tolist() == ["4096-bf16", "4096-bf16", "8192-bf16", "8192-bf16"]
    assert out["arch.num_layers"].tolist() == [1.0] * 4
    assert out["kernel"].tolist() == ["triton", "triton", "cutlass", "cutlass"]   # raw group column kept
    assert out["routing"].tolist() == ["balanced", "uniform", "balanced", "uniform"]
    assert out["step.id"].tolist() == [0, 1, 2, 3]


def test_custom_map_through_load_dataset(tmp_path, custom_map):
    path = tmp_path / "kernels.csv"
    _kernel_table().to_csv(path, index=False)
    one_experiment = tmp_path / "one.toml"      # >= 3 rows per experiment are needed
    one_experiment.write_text(CUSTOM_MAP.replace('experiment = "{hidden}-{dtype}"', 'experiment = "{dtype}"'))
    ds = load_dataset(path, colmap=one_experiment)
    assert ds.kind == "table" and ds.target == "target.value_us"
    assert ds.frame["experiment_id"].tolist() == ["bf16"] * 4
    assert ds.group_columns == ("experiment_id", "shape", "kernel")
    assert ds.y.tolist() == [500.0, 250.0, 4000.0, 8000.0]
    assert ds.frame["hardware"].tolist() == ["h100-sxm"] * 4                  # hw.* from the datasheet
    assert ds.frame["hw.flops"].tolist() == [989.5e12] * 4 and ds.frame["hw.hbm_bw"].iloc[0] == 3.35e12
    assert ds.frame["batch.scheduled_tokens"].dtype == np.int64
    assert "scheduled_tokens" in ds.feature_names() and "hidden_size" in ds.feature_names()
    with pytest.raises(StepMLError, match=r"unknown target 'cycle'"):
        load_dataset(path, "cycle", colmap=one_experiment)
    with pytest.raises(StepMLError, match=r"experiment '4096-bf16' has 2 rows \(at least 3 needed\)"):
        load_dataset(path, colmap=custom_map)


def test_unknown_columns_are_listed(custom_map):
    table = _kernel_table().drop(columns=["tokens", "routing"])
    with pytest.raises(StepMLError) as info:
        apply_colmap(table, load_colmap(custom_map), "k.csv")
    message = str(info.value)
    assert "k.csv: column map 'tiny' names unknown column(s): routing, tokens;" in message
    assert "the table has: hidden, inter_k" in message


def test_unknown_column_in_a_format_string_is_named(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[target]\ncolumn = "latency_ms"\n[derived]\nshape = "{hidden}x{heads}"\n')
    with pytest.raises(StepMLError, match=r"format '\{hidden\}x\{heads\}' names unknown column\(s\): heads"):
        apply_colmap(_kernel_table(), load_colmap(path))


def test_unknown_raw_group_column_is_listed(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('group_columns = ["gpu"]\n[target]\ncolumn = "latency_ms"\n')
    with pytest.raises(StepMLError, match=r"unknown column\(s\): gpu"):
        apply_colmap(_kernel_table(), load_colmap(path))


def test_filters_that_leave_no_rows_are_an_error(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[target]\ncolumn = "latency_ms"\n[filters]\ndtype = "fp4"\n')
    with pytest.raises(StepMLError, match=r"filters left no rows"):
        apply_colmap(_kernel_table(), load_colmap(path))


def test_non_numeric_feature_or_target_values_are_errors(tmp_path, custom_map):
    table = _kernel_table().astype({"hidden": object, "latency_ms": object})
    table.loc[1, "hidden"] = "wide"
    with pytest.raises(StepMLError, match=r"column 'hidden' \(feature 'arch\.hidden_size'\) has 1 non-numeric "
                                          r"value\(s\), first 'wide' at row 1"):
        apply_colmap(table, load_colmap(custom_map))
    table = _kernel_table().astype({"latency_ms": object})
    table.loc[0, "latency_ms"] = "n/a"
    with pytest.raises(StepMLError, match=r"column 'latency_ms' \(target\) has 1 non-numeric"):
        apply_colmap(table, load_colmap(custom_map))


def test_summed_target_columns(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[target]\ncolumns = ["a", "b"]\nunit = "s"\n')
    out = apply_colmap(pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, 0.25]}), load_colmap(path))
    assert out["target.value_us"].tolist() == [1.5e6, 2.25e6]
    assert out["experiment_id"].tolist() == ["m", "m"]                     # name defaults to the stem


def test_units_table():
    assert UNIT_TO_US == {"us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6, "ns": 1e-3}


@pytest.mark.parametrize("text, message", [
    ('[features]\n"x" = "y"\n', r"\[target\] needs 'column'"),
    ('[target]\ncolumn = "t"\nunit = "min"\n', r"unknown target unit 'min'; valid: us, µs, ms, s, ns"),
    ('[target]\ncolumn = "t"\n[constants]\n"arch.num_layers" = "one"\n',
     r"\[constants\] 'arch\.num_layers' must be a number, got 'one'"),
    ('[target]\ncolumn = "t"\n[features]\n"arch.hidden_size" = { scale = 2 }\n',
     r"\[features\] 'arch\.hidden_size' needs a 'column'"),
    ('[target]\ncolumn = "t"\n[features]\n"arch.hidden_size" = { column = "h", scale = "x" }\n',
     r"scale must be a number"),
    ("[target\ncolumn = 1\n", r"malformed TOML"),
])
def test_bad_column_maps_are_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(StepMLError, match=message):
        load_colmap(path)


def test_unknown_map_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(StepMLError, match=r"unknown column map 'nope'; shipped: context_attention_perf, gemm_perf, "
                       r"generation_attention_perf, moe_perf, vidur_mlp, vidur_mlp_ops"):
        resolve_map("nope")
    with pytest.raises(StepMLError, match=r"unknown column map"):
        resolve_map(tmp_path / "absent.toml")


def test_shipped_maps_load():
    assert {"moe_perf", "vidur_mlp"} <= set(shipped_maps())
    moe = load_colmap("moe_perf")
    assert moe.target == ("latency",) and moe.target_unit == "ms"
    assert moe.filters == {"moe_dtype": ["bfloat16"], "distribution": ["balanced"]}
    assert moe.group_columns == ("shape",)
    assert moe.features["arch.num_experts"] == "num_experts" and moe.features["arch.experts_per_token"] == "topk"
    vidur = load_colmap("vidur_mlp")
    assert vidur.target_unit == "ms" and len(vidur.target) == 9
    assert all(c.startswith("time_stats.") and c.endswith(".median") for c in vidur.target)
    assert vidur.features["arch.tp"] == "num_tensor_parallel_workers"


def _lookup_map(tmp_path, lookup: str):
    path = tmp_path / "lookup.toml"
    path.write_text(CUSTOM_MAP.replace('shape = "{hidden}x{inter_k}"',
                                       f'shape = "{{hidden}}x{{inter_k}}"\nmatrices = {lookup}\n'
                                       '"op.flops" = "2 * matrices * tokens * hidden * inter_k"'))
    return path


def test_lookup_gives_a_number_per_value_of_a_column(tmp_path):
    path = _lookup_map(tmp_path, '{ column = "shape", values = { "8192x28" = 2 }, default = 3 }')
    out = apply_colmap(_kernel_table(), load_colmap(path), "k.csv")
    assert out["shape"].tolist() == ["4096x14", "4096x14", "8192x28", "8192x28"]
    assert out["matrices"].tolist() == [3.0, 3.0, 2.0, 2.0]           # later expressions read it
    np.testing.assert_allclose(out["op.flops"], 2 * out["matrices"] * [1, 2, 16, 32] * out["arch.hidden_size"]
                               * [14, 14, 28, 28])
    numeric = _lookup_map(tmp_path, '{ column = "hidden", values = { "4096" = 1, "8192" = 5 } }')
    assert apply_colmap(_kernel_table(), load_colmap(numeric), "k.csv")["matrices"].tolist() == [1, 1, 5, 5]


@pytest.mark.parametrize("lookup, message", [
    ('{ column = "shape", values = { "8192x28" = 2 } }',
     r"k\.csv: column map 'tiny' \[derived\] 'matrices' lists no value for shape = '4096x14' \(2 row\(s\)\) "
     r"and has no default"),
    ('{ column = "shap", values = { "a" = 2 }, default = 1 }', r"looks up unknown column 'shap' \(did you mean shape"),
])
def test_lookup_problems_on_the_table_are_one_line(tmp_path, lookup, message):
    with pytest.raises(StepMLError, match=message):
        apply_colmap(_kernel_table(), load_colmap(_lookup_map(tmp_path, lookup)), "k.csv")


@pytest.mark.parametrize("lookup, message", [
    ('{ column = "shape", value = { "a" = 2 } }', r"unknown \[derived\] 'matrices' key\(s\) 'value' \(did you mean values"),
    ('{ column = "shape" }', r"\[derived\] 'matrices' needs 'column' and 'values'"),
    ('{ column = "shape", values = {} }', r"values must be a non-empty table"),
    ('{ column = "shape", values = { "a" = "two" } }', r"values 'a' must be a number, got 'two'"),
    ('{ column = "shape", values = { "a" = 2 }, default = "x" }', r"default must be a number"),
])
def test_lookup_problems_in_the_map_are_one_line(tmp_path, lookup, message):
    with pytest.raises(StepMLError, match=message):
        load_colmap(_lookup_map(tmp_path, lookup))


# -- shipped maps on the real tables ---------------------------------------------------------------

def test_real_moe_perf_through_load_dataset(real_path):
    path = real_path("kernels/aiconfigurator_h100_vllm0.24/moe_perf.parquet")
    ds = load_dataset(path)                     # the shipped map is picked by file name
    assert ds.kind == "table" and ds.target == "target.value_us"
    assert len(ds.frame) == 5400
    assert ds.frame["shape"].nunique() == 16
    assert "shape" in ds.group_columns
    raw = pd.read_parquet(path)
    kept = raw[(raw["moe_dtype"] == "bfloat16") & (raw["distribution"] == "balanced")].reset_index(drop=True)
    np.testing.assert_allclose(ds.y, kept["latency"].to_numpy() * 1000.0, rtol=1e-12)
    np.testing.assert_array_equal(ds.frame["batch.scheduled_tokens"], kept["num_tokens"])
    assert (ds.frame["experiment_id"] == ds.frame["shape"]).all()
    assert "4096x14336x8x2" in set(ds.frame["shape"])           # Mixtral-8x7B
    assert "active_experts" in ds.feature_names()


def test_real_moe_perf_weight_stream_is_physical(real_path):
    """op.weight_bytes of the MoE map streams at a believable fraction of the HBM peak on every shape.

    Where every expert is hit (T·k >= 2E) but few tokens reach each (T·k/E <= 16), a GPU holding all or
    half the experts (tp·ep <= 2: one shape has no tp = ep = 1 rows) is bound by reading its experts' weights: the bandwidth that implies must lie below the
    datasheet peak and not far under it, for gated (3 matrices) and non-gated (2, Nemotron-3) experts alike.
    """
    from features import catalog

    ds = load_dataset(real_path("kernels/aiconfigurator_h100_vllm0.24/moe_perf.parquet"))
    f = ds.frame
    weight_time = catalog.feature_frame(f, ["op_weight_memory"])["op_weight_memory"]
    routed = f["batch.scheduled_tokens"] * f["arch.experts_per_token"] / f["arch.num_experts"]
    bound = (routed >= 2) & (routed <= 16) & (f["arch.tp"] * f["arch.ep"] <= 2)
    utilisation = (weight_time / ds.y)[bound].groupby(f["shape"][bound]).median()
    assert len(utilisation) == 16
    assert utilisation.between(0.75, 1.0).all(), utilisation.round(2).to_dict()
    assert set(f.loc[f["expert_matrices"] == 2, "shape"]) == {"2688x1856x128x6", "2048x5120x512x22"}
    parts = catalog.feature_frame(f, ["op_memory", "op_weight_memory", "op_act_memory"])
    np.testing.assert_allclose(parts["op_weight_memory"] + parts["op_act_memory"], parts["op_memory"], rtol=1e-12)


def test_real_vidur_mlp_csv_loads(real_path):
    path = real_path("kernels/vidur_h100/Llama-2-70b-hf/mlp.csv")
    ds = load_dataset(path)
    raw = pd.read_csv(path)
    cmap = load_colmap("vidur_mlp")
    assert ds.kind == "table" and len(ds.frame) == len(raw) > 0
    np.testing.assert_allclose(ds.y, raw[list(cmap.target)].sum(axis=1).to_numpy() * 1000.0, rtol=1e-12)
    assert set(ds.frame["arch.tp"]) == {1.0, 2.0, 4.0, 8.0}
    assert set(ds.frame["shape"]) == {"8192x28672"}
    assert (ds.y > 0).all()


def test_real_vidur_mlp_ops_counts_phi2s_two_matrices(real_path):
    """phi-2's MLP is not gated (use_gated_mlp = False): 2 weight matrices, so its roofline utilisation matches
    the gated models' (with 3 it would sit far above them)."""
    from features import catalog

    folder = real_path("kernels/vidur_h100")
    ds = load_dataset(str(folder / "*" / "mlp.csv"), colmap="vidur_mlp_ops")
    f = ds.frame
    assert f.groupby("model")["matrices"].first().to_dict() == {
        "CodeLlama-34b-Instruct-hf": 3, "Llama-2-70b-hf": 3, "Llama-2-7b-hf": 3, "internlm-20b": 3, "phi-2": 2}
    utilisation = (catalog.feature_frame(f, ["op_bound"])["op_bound"] / ds.y).groupby(f["model"]).median()
    assert utilisation.max() / utilisation.min() < 1.25, utilisation.round(2).to_dict()


# -- column maps a user can write: checks, expressions, path columns, hardware, several files ----------------

def _map(tmp_path, text: str, name: str = "m.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ('target = "latency"\n', r"\[target\] must be a table \(a \[target\] section\), got str 'latency'"),
    ('features = "tokens"\n[target]\ncolumn = "t"\n', r"\[features\] must be a table"),
    ('[target]\ncolumn = "t"\n[derived]\nshape = 3\n', r"\[derived\] 'shape' must be a non-empty string, got 3"),
    ('group_columns = "shape"\n[target]\ncolumn = "t"\n',
     r"group_columns must be a list of strings \(e\.g\. \[\"shape\"\]\), got 'shape'"),
    ('group_column = ["shape"]\n[target]\ncolumn = "t"\n',
     r"unknown key\(s\) 'group_column' \(did you mean group_columns"),
    ('[target]\ncolum = "t"\n', r"unknown \[target\] key\(s\) 'colum' \(did you mean column"),
    ('[target]\ncolumn = "t"\ncolumns = ["t"]\n', r"takes 'column' or 'columns', not both"),
    ('[target]\ncolumn = "t"\n[features]\n"batch.prefil_tokens" = "p"\n',
     r"\[features\] 'batch\.prefil_tokens' is not a canonical column \(did you mean batch\.prefill_tokens"),
    ('[target]\ncolumn = "t"\n[features]\n"arch.hidden_size" = { column = "h", scal = 2 }\n',
     r"unknown \[features\] 'arch\.hidden_size' key\(s\) 'scal'"),
    ('[target]\ncolumn = "t"\n[constants]\n"hw.flops" = 1e15\n', r"hardware figures come from a datasheet"),
    ('[target]\ncolumn = "t"\n[constants]\n"arch.num_layerz" = 1\n', r"is not a canonical column"),
    ('[target]\ncolumn = "t"\n[features]\n"target.value_us" = "t"\n', r"is set by the loader"),
    ('[target]\ncolumn = "t"\n[constants]\n"arch.num_layers" = nan\n', r"must be a finite number"),
    ('[target]\ncolumn = "t"\n[filters]\ndtype = { a = 1 }\n', r"\[filters\] 'dtype' must be a value or a list"),
    ('experiment = "{a.__class__}"\n[target]\ncolumn = "t"\n', r"write plain \{column\} fields"),
    ('path_columns = "runs/mlp.csv"\n[target]\ncolumn = "t"\n', r"path_columns 'runs/mlp\.csv' names no \{column\}"),
    ('hardware = 7\n[target]\ncolumn = "t"\n', r"hardware must be a string, got 7"),
    ("[target]\ncolumn = 'a'\n[target]\n", r"malformed TOML"),
    ("\xff\xfe", r"malformed TOML"),
])
def test_column_map_mistakes_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_bytes(text.encode("latin-1") if text == "\xff\xfe" else text.encode("utf-8"))
    with pytest.raises(StepMLError, match=message) as info:
        load_colmap(path)
    assert "\n" not in str(info.value)


def test_derived_expressions_are_evaluated_with_numpy(tmp_path):
    table = pd.DataFrame({"batch": [1, 2, 4, 8], "kv len": [10.0, 20.0, 30.0, 40.0], "t": [1.0, 2.0, 3.0, 4.0]})
    path = _map(tmp_path, '[target]\ncolumn = "t"\n'
                '[derived]\ntokens = "batch * Symbol(\'kv len\')"\n'
                '"kv.tokens_in_use" = "max(tokens - 25, 0) + sqrt(batch) / 2 + log(exp(batch)) - abs(-1) ** 2"\n'
                'label = "b{batch}"\n'
                '[features]\n"batch.scheduled_tokens" = "tokens"\n')
    out = apply_colmap(table, load_colmap(path))
    b, kv = table["batch"].to_numpy(float), table["kv len"].to_numpy()
    np.testing.assert_array_equal(out["tokens"], b * kv)
    np.testing.assert_array_equal(out["batch.scheduled_tokens"], b * kv)          # a feature from a derived column
    np.testing.assert_allclose(out["kv.tokens_in_use"], np.maximum(b * kv - 25, 0) + np.sqrt(b) / 2 + b - 1,
                               rtol=1e-12)
    assert out["label"].tolist() == ["b1", "b2", "b4", "b8"]


@pytest.mark.parametrize("expression, message", [
    ("batch / (kv_len - kv_len)", r"is not finite"),
    ("batch / (kv_len - 20)", r"not a finite number at 1 row\(s\), first row 1"),
    ("log(batch - 10)", r"not a finite number"),
    ("batch * kvlen", r"names unknown column 'kvlen' \(did you mean kv_len\?\)"),
    ("__import__('os').system('touch {marker}')", r"cannot parse"),
    ("open('{marker}', 'w')", r"cannot parse"),
    ("batch.__class__", r"names unknown column"),
    ("[batch][0]", r"cannot parse"),
    ("batch if 1 else kv_len", r"cannot parse"),
])
def test_bad_derived_expressions_are_refused_and_never_run(tmp_path, expression, message):
    marker = tmp_path / "pwned"
    table = pd.DataFrame({"batch": [1, 2, 4, 8], "kv_len": [10.0, 20.0, 30.0, 40.0], "t": [1.0, 2.0, 3.0, 4.0]})
    text = expression.replace("{marker}", str(marker))
    path = _map(tmp_path, '[target]\ncolumn = "t"\n[derived]\ntokens = ' + repr(text).replace("\\'", "'") + "\n")
    with pytest.raises(StepMLError, match=message):
        apply_colmap(table, load_colmap(path), "k.csv")
    assert not marker.exists()


def test_filters_may_name_derived_columns(tmp_path):
    table = pd.DataFrame({"a": [1, 2, 3, 4], "t": [1.0, 2.0, 3.0, 4.0]})
    path = _map(tmp_path, '[target]\ncolumn = "t"\n[derived]\nkind = "k{a}"\n[filters]\nkind = ["k2", "k4"]\n')
    assert apply_colmap(table, load_colmap(path))["target.value_us"].tolist() == [2.0, 4.0]


def _vidur_like(rows: int = 6, scale: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"num_tokens": np.arange(1, rows + 1) * 16, "tp": [1, 2] * (rows // 2),
                         "ms": np.linspace(0.1, 0.6, rows) * scale})


PATH_MAP = """
name = "byfolder"
files = ["ops.csv"]
path_columns = "{hardware}_runs/{model}/ops.csv"
group_columns = ["model"]
experiment = "{model}-tp{tp}"
[target]
column = "ms"
unit = "ms"
[features]
"batch.scheduled_tokens" = "num_tokens"
"arch.tp" = "tp"
"""


def test_group_and_hardware_columns_come_from_the_file_path(tmp_path, isolated_metadata):
    cmap = _map(tmp_path, PATH_MAP)
    for hw, model in (("a100_80gb", "llama"), ("l40s", "llama"), ("h200", "mistral")):
        write_table(tmp_path / "data" / f"{hw}_runs" / model / "ops.csv", _vidur_like())
    ds = load_dataset(tmp_path / "data", colmap=cmap)              # a folder: every ops.csv below it
    assert ds.kind == "table" and len(ds.frame) == 18
    by_hw = ds.frame.groupby("hardware")["hw.hbm_bw"].first().to_dict()
    assert by_hw == {"a100-sxm-80gb": 2.039e12, "h200-sxm": 4.8e12, "l40s": 0.864e12}
    assert ds.frame.groupby("hardware")["hw.flops"].first().to_dict() == {
        "a100-sxm-80gb": 312e12, "h200-sxm": 989.5e12, "l40s": 362.05e12}
    assert ds.frame.loc[ds.frame["hardware"] == "l40s", "hw.interconnect_bw"].iloc[0] == 64e9   # PCIe: no NVLink
    assert sorted(set(ds.frame["model"])) == ["llama", "mistral"]
    assert ds.frame["step.id"].tolist() == list(range(18))                       # file row order, files in order
    (tmp_path / "elsewhere").mkdir()
    write_table(tmp_path / "elsewhere" / "ops.csv", _vidur_like())
    with pytest.raises(StepMLError, match=r"ops\.csv: the file path does not match path_columns"):
        load_dataset(tmp_path / "elsewhere" / "ops.csv", colmap=cmap)
    write_table(tmp_path / "bad" / "tpu_runs" / "x" / "ops.csv", _vidur_like())
    with pytest.raises(StepMLError, match=r"no hardware datasheet named 'tpu'; known: a100-sxm-40gb"):
        load_dataset(tmp_path / "bad", colmap=cmap)


def test_several_files_through_one_map_folder_glob_and_list(tmp_path, isolated_metadata):
    cmap = _map(tmp_path, PATH_MAP)
    for model in ("a", "b"):
        write_table(tmp_path / "d" / "h100_runs" / model / "ops.csv", _vidur_like())
    write_table(tmp_path / "d" / "h100_runs" / "notes.csv", pd.DataFrame({"x": [1]}))
    folder = load_dataset(tmp_path / "d", colmap=cmap)
    glob_ = load_dataset(str(tmp_path / "d" / "*" / "*" / "ops.csv"), colmap=cmap)
    listed = load_dataset([tmp_path / "d" / "h100_runs" / m / "ops.csv" for m in ("a", "b")], colmap=cmap)
    joined = load_dataset(os.pathsep.join(str(tmp_path / "d" / "h100_runs" / m / "ops.csv") for m in "ab"),
                          colmap=cmap)
    for ds in (glob_, listed, joined):
        pd.testing.assert_frame_equal(ds.frame, folder.frame)
    assert set(folder.frame["hardware"]) == {"h100-sxm"}
    assert joined.source.count(", ") == 1 and "ops.csv" in joined.source
    with pytest.raises(StepMLError, match=r"no files match"):
        load_dataset(str(tmp_path / "d" / "*" / "nothing*.csv"), colmap=cmap)


def test_a_raw_column_can_be_the_target_and_cycle_is_not_offered(tmp_path, isolated_metadata, capsys):
    cmap = _map(tmp_path, PATH_MAP.replace('path_columns = "{hardware}_runs/{model}/ops.csv"\n', "")
                .replace('experiment = "{model}-tp{tp}"', 'experiment = "all"').replace('["model"]', "[]"))
    table = _vidur_like().assign(other_us=np.arange(1.0, 7.0))
    path = write_table(tmp_path / "ops.csv", table)
    ds = load_dataset(path, "other_us", colmap=cmap)
    assert ds.target == "other_us" and ds.y.tolist() == list(np.arange(1.0, 7.0))
    assert "raw column of the table, read as µs" in capsys.readouterr().err
    assert load_dataset(path, "batch.scheduled_tokens", colmap=cmap).y.tolist() == list(table["num_tokens"] * 1.0)
    with pytest.raises(StepMLError) as info:
        load_dataset(path, "cycle", colmap=cmap)
    message = str(info.value)
    assert "needs step data" in message and "valid: target.value_us, or a numeric column:" in message
    assert "valid: cycle" not in message


def _moe_like(rows: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"kernel_source": "x", "moe_dtype": "bfloat16", "num_tokens": np.arange(1, rows + 1),
                         "hidden_size": 4096, "inter_size": 14336, "topk": 2, "num_experts": 8, "moe_tp_size": 1,
                         "moe_ep_size": 1, "distribution": "balanced", "latency": np.linspace(0.1, 0.2, rows)})


def test_a_map_picked_by_file_name_whose_hardware_the_path_contradicts_says_so(tmp_path, isolated_metadata, capsys):
    same = write_table(tmp_path / "aiconfigurator_h100_vllm0.24" / "moe_perf.parquet", _moe_like())
    assert set(load_dataset(same).frame["hw.hbm_bw"]) == {3.35e12}
    assert "warning" not in capsys.readouterr().err
    other = write_table(tmp_path / "aiconfigurator_a100_sxm_80gb" / "moe_perf.parquet", _moe_like())
    ds = load_dataset(other)                                  # picked by name; the path says A100 80GB
    err = capsys.readouterr().err
    assert "is for h100-sxm but the path names a100-sxm-80gb; using the a100-sxm-80gb datasheet" in err
    assert set(ds.frame["hardware"]) == {"a100-sxm-80gb"} and set(ds.frame["hw.hbm_bw"]) == {2.039e12}
    explicit = load_dataset(other, colmap="moe_perf")         # the user chose the map: it keeps its hardware
    assert "keeping h100-sxm" in capsys.readouterr().err
    assert set(explicit.frame["hw.hbm_bw"]) == {3.35e12}
    vague = write_table(tmp_path / "a100" / "moe_perf.parquet", _moe_like())
    with pytest.raises(StepMLError, match=r"the path names a100-sxm-40gb or a100-sxm-80gb"):
        load_dataset(vague)


def test_missing_step_columns_suggest_a_column_map(tmp_path, isolated_metadata):
    path = write_table(tmp_path / "ops.csv", _vidur_like())
    with pytest.raises(StepMLError, match=r"missing required attribute\(s\): step\.id.*not a step table\? map its "
                                          r"columns with --colmap"):
        load_dataset(path)


def _readme_maps() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = text.split("### Request logs")[0]               # the column-map examples, not the request map
    return [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]


def test_the_readme_column_map_examples_work(tmp_path, isolated_metadata):
    first, second = _readme_maps()
    rng = np.random.default_rng(0)
    for hw, model in (("a100-80gb", "llama"), ("l40s", "llama"), ("h100", "mistral")):
        batch = rng.integers(1, 64, 12)
        write_table(tmp_path / "runs" / f"{hw}_runs" / model / "ops.csv",
                    pd.DataFrame({"batch": batch, "kv_len": rng.integers(16, 2048, 12), "width_k": 4,
                                  "step_ms": 5 + 0.1 * batch}))
    ds = load_dataset(tmp_path / "runs", colmap=_map(tmp_path, second, "ops.toml"))
    assert len(ds.frame) == 36 and set(ds.frame["hardware"]) == {"a100-sxm-80gb", "l40s", "h100-sxm"}
    np.testing.assert_array_equal(ds.frame["kv.tokens_in_use"],
                                  ds.frame["batch.num_decode_reqs"] * pd.concat(
                                      [pd.read_csv(f)["kv_len"] for f in sorted((tmp_path / "runs").rglob("ops.csv"))],
                                      ignore_index=True))
    assert ds.frame["arch.hidden_size"].unique().tolist() == [4096.0]
    from features.splits import make_splits

    assert [s.fold for s in make_splits(ds.frame, "logo:hardware")] == ["a100-sxm-80gb", "h100-sxm", "l40s"]
    cmap = load_colmap(_map(tmp_path, first, "vidur.toml"))
    assert cmap.hardware == "h100-sxm" and len(cmap.target) == 3


def test_the_readme_vidur_example_on_three_real_models(real_path, tmp_path):
    folder = real_path("kernels/vidur_h100")
    first = _readme_maps()[0]
    ds = load_dataset(str(folder / "*-hf" / "mlp.csv"), colmap=_map(tmp_path, first, "vidur.toml"))
    assert set(ds.frame["shape"]) == {"4096x11008", "8192x28672", "8192x22016"}
    assert set(ds.frame["hw.flops"]) == {989.5e12}
