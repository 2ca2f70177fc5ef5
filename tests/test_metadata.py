"""features.metadata: experiment names, model configs, parameter counts, hardware, server config."""
from __future__ import annotations

import json

import pytest

from features.errors import StepMLError
from features.metadata import (ExperimentName, arch_columns, default_data_root, experiment_meta,
                               find_experiment_dir, find_model_config, load_hardware, load_model_config,
                               load_server_config, metadata_roots, model_arch_from_config,
                               parse_experiment_name)

# -- experiment names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, model, tp, workload", [
    ("20260218-120914-mixtral-8x7b-v0-1-tp2-codegen", "mixtral-8x7b-v0-1", 2, "codegen"),
    ("20260217-203421-llama-2-70b-hf-tp4-codegen", "llama-2-70b-hf", 4, "codegen"),
    ("20260218-150304-codellama-34b-tp2-general", "codellama-34b", 2, "general"),
    ("20260217-162547-llama-2-7b-tp1-roleplay", "llama-2-7b", 1, "roleplay"),
    ("20260101-000000-my-tp4-model-tp16-long_context", "my-tp4-model", 16, "long_context"),
])
def test_parse_experiment_name(name, model, tp, workload):
    parsed = parse_experiment_name(name)
    assert parsed == ExperimentName(name, name[:15], model, tp, workload)


@pytest.mark.parametrize("name", ["jan20-codellama-prefill-1", "20260218-120914-mixtral", "",
                                  "20260218-120914-mixtral-tpx-general", "2026021-120914-m-tp2-general",
                                  "20260218-120914-m-tp2-code-gen"])
def test_non_matching_names_give_none(name):
    assert parse_experiment_name(name) is None


# -- model configs -------------------------------------------------------------------------------

LLAMA_LIKE = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 2,
              "intermediate_size": 16, "vocab_size": 10, "torch_dtype": "float16"}


@pytest.fixture
def configs_dir(tmp_path):
    root = tmp_path / "model_configs"
    for name in ("CodeLlama-34b-Instruct-hf", "Llama-2-70b-hf", "Llama-2-7b-hf", "Mixtral-8x7B-v0.1"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(LLAMA_LIKE))
    (root / "gpt-2-empty").mkdir()             # no config.json: never a match
    return root


@pytest.mark.parametrize("model, folder", [
    ("codellama-34b", "CodeLlama-34b-Instruct-hf"),
    ("codellama/CodeLlama-34b-Instruct-hf", "CodeLlama-34b-Instruct-hf"),
    ("meta-llama/Llama-2-70b-hf", "Llama-2-70b-hf"),
    ("llama-2-70b", "Llama-2-70b-hf"),
    ("llama-2-70b-hf", "Llama-2-70b-hf"),
    ("llama-2-7b", "Llama-2-7b-hf"),
    ("mixtral-8x7b-v0-1", "Mixtral-8x7B-v0.1"),
    ("mistralai/Mixtral-8x7B-v0.1", "Mixtral-8x7B-v0.1"),
])
def test_find_model_config_on_a_tmp_folder(configs_dir, model, folder):
    found = find_model_config(model, configs_dir)
    assert found is not None and found.name == folder


@pytest.mark.parametrize("model", ["gpt-2", "gpt-2-empty", "falcon-40b", "", "org/"])
def test_find_model_config_without_a_match(configs_dir, model):
    assert find_model_config(model, configs_dir) is None


def test_find_model_config_in_a_missing_folder(tmp_path):
    assert find_model_config("llama-2-7b", tmp_path / "absent") is None


def test_find_model_config_on_real_data(real_path):
    configs = real_path("blis/model_configs")
    assert find_model_config("codellama-34b", configs).name == "CodeLlama-34b-Instruct-hf"
    assert find_model_config("llama-2-70b", configs).name == "Llama-2-70b-hf"
    assert find_model_config("llama-2-7b", configs).name == "Llama-2-7b-hf"
    assert find_model_config("mixtral-8x7b-v0-1", configs).name == "Mixtral-8x7B-v0.1"


def test_dense_parameter_counts_by_hand():
    arch = model_arch_from_config(LLAMA_LIKE, "tiny")
    assert (arch.head_dim, arch.num_kv_heads, arch.num_experts, arch.experts_per_token) == (4, 1, 1, 1)
    assert arch.bytes_per_param == 2 and not arch.is_moe
    # attention 8·2·4·2 + 8·4·2 = 192; MLP 3·8·16 = 384; norms 16; per layer 592; ×2 layers
    # plus untied embeddings 2·10·8 = 160
    assert arch.attention_params == 192 and arch.expert_params == 384
    assert arch.total_params == 2 * 592 + 160
    assert arch.active_params == arch.total_params
    tied = model_arch_from_config({**LLAMA_LIKE, "tie_word_embeddings": True})
    assert tied.total_params == 2 * 592 + 80


def test_moe_parameter_counts_by_hand():
    arch = model_arch_from_config({**LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2})
    assert arch.is_moe
    router = 8 * 4
    assert arch.total_params == 2 * (192 + 4 * 384 + router + 16) + 160
    assert arch.active_params == 2 * (192 + 2 * 384 + router + 16) + 160


def test_mixtral_parameter_counts(real_path):
    arch = load_model_config(real_path("blis/model_configs/Mixtral-8x7B-v0.1"))
    assert arch.name == "Mixtral-8x7B-v0.1"
    assert (arch.num_experts, arch.experts_per_token, arch.num_layers, arch.hidden_size) == (8, 2, 32, 4096)
    assert arch.total_params == pytest.approx(46.7e9, rel=2e-3)
    assert arch.active_params == pytest.approx(12.9e9, rel=2e-3)
    # worked out by hand from config.json: per layer 41,943,040 attention + 176,160,768 per expert
    # + 32,768 router + 8,192 norms; embeddings 2·32000·4096
    assert arch.total_params == 46_702_788_608
    assert arch.active_params == 12_879_921_152


def test_bad_model_configs_are_errors(tmp_path):
    with pytest.raises(StepMLError, match=r"model config tiny lacks key 'intermediate_size'"):
        model_arch_from_config({k: v for k, v in LLAMA_LIKE.items() if k != "intermediate_size"}, "tiny")
    with pytest.raises(StepMLError, match=r"has a bad value"):
        model_arch_from_config({**LLAMA_LIKE, "hidden_size": "wide"}, "tiny")
    with pytest.raises(StepMLError, match=r"model config not found"):
        load_model_config(tmp_path / "absent")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(StepMLError, match=r"config\.json: malformed JSON"):
        load_model_config(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    with pytest.raises(StepMLError, match=r"config\.json: expected a JSON object"):
        load_model_config(tmp_path / "m")


# -- hardware ------------------------------------------------------------------------------------

def _sheet(path, tflops, sparse):
    path.write_text(json.dumps({"name": "GPU", "compute": {"bf16_tensor_core": tflops, "with_sparsity": sparse},
                                "memory": {"capacity_gb": 80, "bandwidth_tb_s": 3.35},
                                "interconnect": {"nvlink_bandwidth_gb_s": 900}}))
    return path


def test_sparse_tensor_figure_is_halved(tmp_path):
    hw = load_hardware(_sheet(tmp_path / "sparse.json", 1979, True))
    assert hw.dense_bf16_flops == 989.5e12
    assert hw.hbm_bytes_per_s == pytest.approx(3.35e12)
    assert hw.interconnect_bytes_per_s == 900e9 and hw.memory_bytes == 80e9
    assert load_hardware(_sheet(tmp_path / "dense.json", 989, False)).dense_bf16_flops == 989e12


def test_bad_hardware_sheets_are_errors(tmp_path):
    with pytest.raises(StepMLError, match=r"hardware datasheet not found"):
        load_hardware(tmp_path / "absent.json")
    for text in ('{"compute": {}}', "[1]", '{"compute": [1]}', "not json"):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(StepMLError, match=r"bad\.json: not a hardware datasheet"):
            load_hardware(tmp_path / "bad.json")


def test_real_h100_sxm_is_989_5_dense_tflops(real_path):
    hw = load_hardware(real_path("blis/hardware/h100-sxm.json"))
    assert hw.dense_bf16_flops == pytest.approx(989.5e12)
    assert hw.hbm_bytes_per_s == pytest.approx(3.35e12)
    assert hw.interconnect_bytes_per_s == pytest.approx(900e9)


# -- server config, experiment folders, roots ---------------------------------------------------------

def test_server_config(tmp_path):
    path = tmp_path / "exp-config.yaml"
    path.write_text("model: org/Model-1\ntensor_parallelism: 4\nmax_num_seqs: 64\n")
    server = load_server_config(path)
    assert (server.model_id, server.tp, server.max_num_seqs) == ("org/Model-1", 4, 64)
    assert (server.max_num_batched_tokens, server.max_model_len) == (2048, 4096)       # defaults
    path.write_text("model: [unclosed\n")
    with pytest.raises(StepMLError, match=r"exp-config\.yaml: malformed YAML"):
        load_server_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(StepMLError, match=r"expected a mapping"):
        load_server_config(path)
    path.write_text("tensor_parallelism: four\n")
    with pytest.raises(StepMLError, match=r"exp-config\.yaml: bad value"):
        load_server_config(path)
    with pytest.raises(StepMLError, match=r"experiment config not found"):
        load_server_config(tmp_path / "absent.yaml")


def test_experiment_folder_with_a_config_wins_over_a_trace_folder(tmp_path):
    exp = "20260101-000000-tiny-tp2-general"
    traces = tmp_path / "traces" / exp
    traces.mkdir(parents=True)
    real = tmp_path / "blis" / "experiments" / exp
    real.mkdir(parents=True)
    (real / "exp-config.yaml").write_text("model: org/tiny\ntensor_parallelism: 2\n")
    roots = [tmp_path / "traces", tmp_path]
    assert find_experiment_dir(exp, roots) == real
    assert find_experiment_dir(exp, [tmp_path / "traces"]) == traces          # nothing better
    assert find_experiment_dir("20260101-000000-other-tp1-x", roots) is None


def test_experiment_meta_from_tmp_files(tmp_path, isolated_metadata):
    exp = "20260101-000000-tiny-model-tp2-general"
    (tmp_path / "experiments" / exp).mkdir(parents=True)
    (tmp_path / "experiments" / exp / "exp-config.yaml").write_text("model: org/Tiny-Model-HF\ntensor_parallelism: 2\n")
    (tmp_path / "model_configs" / "Tiny-Model-HF").mkdir(parents=True)
    (tmp_path / "model_configs" / "Tiny-Model-HF" / "config.json").write_text(json.dumps(LLAMA_LIKE))
    (tmp_path / "hardware").mkdir()
    _sheet(tmp_path / "hardware" / "h100-sxm.json", 1979, True)
    meta = experiment_meta(exp, [tmp_path])
    assert (meta.model, meta.workload, meta.tp) == ("tiny-model", "general", 2)
    assert meta.server.model_id == "org/Tiny-Model-HF"
    assert meta.arch.name == "Tiny-Model-HF" and meta.arch.total_params == 1344
    assert meta.hardware.dense_bf16_flops == 989.5e12
    cols = arch_columns(meta.arch, meta.hardware, meta.tp)
    assert cols["arch.tp"] == 2.0 and cols["arch.ep"] == 1.0
    assert cols["arch.total_params"] == 1344.0 and cols["hw.flops"] == 989.5e12
    assert all(isinstance(v, float) for v in cols.values())
    assert arch_columns(None, None, 4) == {"arch.tp": 4.0, "arch.ep": 1.0}
    bare = experiment_meta("some-run", [tmp_path / "nothing"])
    assert (bare.model, bare.workload, bare.tp, bare.arch, bare.server) == ("some-run", "", 1, None, None)


def test_experiment_meta_for_a_trace_folder_finds_the_server_config(real_path):
    traces = real_path("blis/otel_step_traces")
    meta = experiment_meta("20260218-150304-codellama-34b-tp2-general", metadata_roots(traces))
    expected = traces.parent / "experiments" / "20260218-150304-codellama-34b-tp2-general"
    assert meta.directory.resolve() == expected.resolve()
    assert meta.server is not None and meta.server.model_id == "codellama/CodeLlama-34b-Instruct-hf"
    assert meta.server.tp == 2 and meta.server.max_num_seqs == 128
    assert meta.arch.name == "CodeLlama-34b-Instruct-hf"
    assert meta.hardware.dense_bf16_flops == pytest.approx(989.5e12)


def test_default_data_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEPML_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    assert metadata_roots(None) == [tmp_path]
    monkeypatch.delenv("STEPML_DATA")
    assert default_data_root().parts[-2:] == ("shared", "data")
    data = tmp_path / "a" / "b" / "c.csv"
    roots = metadata_roots(data)
    assert roots[0] == data.resolve() and roots[1] == data.resolve().parent and roots[-1] == default_data_root()


# -- shipped datasheets ------------------------------------------------------------------------------------

SHEETS = ("h100-sxm", "h100-pcie", "h100-nvl", "h200-sxm", "h200-nvl", "a100-sxm-40gb", "a100-sxm-80gb", "a40", "l40s")


@pytest.mark.parametrize("stem", SHEETS)
def test_every_shipped_datasheet_loads_and_names_its_vendor_sources(stem):
    from features.metadata import HARDWARE_DIR

    path = HARDWARE_DIR / f"{stem}.json"
    sheet = json.loads(path.read_text())
    assert sheet["sources"] and all(s.startswith("https://www.nvidia.com/") or s.startswith("https://resources.nvidia")
                                    or s.startswith("https://images.nvidia.com/") for s in sheet["sources"])
    hw = load_hardware(path)
    assert 1e14 < hw.dense_bf16_flops < 2e15 and 5e11 < hw.hbm_bytes_per_s < 1e13
    assert 1e10 < hw.interconnect_bytes_per_s <= 9e11 and 4e10 <= hw.memory_bytes <= 1.41e11


def test_shipped_datasheet_figures_by_hand():
    from features.metadata import find_hardware

    figures = {stem: load_hardware(find_hardware(stem)) for stem in SHEETS}
    assert (figures["h100-sxm"].dense_bf16_flops, figures["h100-sxm"].hbm_bytes_per_s) == (989.5e12, 3.35e12)
    assert (figures["h200-sxm"].dense_bf16_flops, figures["h200-sxm"].hbm_bytes_per_s) == (989.5e12, 4.8e12)
    assert figures["a100-sxm-80gb"].hbm_bytes_per_s == 2039e9 and figures["a100-sxm-40gb"].hbm_bytes_per_s == 1555e9
    assert figures["a100-sxm-40gb"].dense_bf16_flops == 312e12 and figures["a40"].dense_bf16_flops == 149.7e12
    assert figures["l40s"].dense_bf16_flops == 362.05e12 and figures["l40s"].interconnect_bytes_per_s == 64e9
    assert figures["h100-nvl"].memory_bytes == 94e9 and figures["h100-pcie"].hbm_bytes_per_s == 2e12


def test_shipped_h100_figures_equal_the_real_datasheets(real_path):
    from features.metadata import find_hardware

    for stem in ("h100-sxm", "h100-nvl"):
        assert load_hardware(find_hardware(stem)) == load_hardware(real_path(f"blis/hardware/{stem}.json"))


@pytest.mark.parametrize("name, stem", [("h100", "h100-sxm"), ("H100_SXM5", "h100-sxm"), ("a100-80gb", "a100-sxm-80gb"),
                                        ("A100 SXM4 40GB", "a100-sxm-40gb"), ("h200", "h200-sxm"), ("L40S", "l40s")])
def test_hardware_names_and_aliases(name, stem):
    from features.metadata import find_hardware

    assert find_hardware(name).stem == stem


def test_unknown_and_ambiguous_hardware_names_list_the_datasheets(tmp_path):
    from features.metadata import find_hardware

    with pytest.raises(StepMLError, match=r"'a100' names several datasheets \(a100-sxm-40gb, a100-sxm-80gb\)"):
        find_hardware("a100")
    with pytest.raises(StepMLError, match=r"no hardware datasheet named 'tpu-v5'; known: a100-sxm-40gb, .*l40s"):
        find_hardware("tpu-v5")
    own = _sheet(tmp_path / "mygpu.json", 100, False)
    assert find_hardware(str(own)) == own                         # a datasheet path of the user's
    (tmp_path / "root" / "hardware").mkdir(parents=True)
    beside = _sheet(tmp_path / "root" / "hardware" / "mygpu.json", 100, False)
    assert find_hardware("MyGPU", [tmp_path / "root"]) == beside   # a hardware/ folder beside the data


@pytest.mark.parametrize("path, named", [
    ("/d/aiconfigurator_h100_vllm0.24/moe_perf.parquet", ("h100-sxm", [])),
    ("/d/vidur_h100/Llama-2-7b-hf/mlp.csv", ("h100-sxm", [])),
    ("/d/aiconfigurator_a100_sxm_80gb/moe_perf.parquet", ("a100-sxm-80gb", [])),
    ("/d/h200_nvl/t.csv", ("h200-nvl", [])),
    ("/d/runs_a100/t.csv", (None, ["a100-sxm-40gb", "a100-sxm-80gb"])),
    ("/d/kernels/t.csv", (None, [])),
])
def test_hardware_named_by_a_path(path, named):
    from features.metadata import hardware_in_path

    assert hardware_in_path(path) == named


def test_a_hardware_column_of_a_step_table_picks_the_datasheet(tmp_path, isolated_metadata, steps_table, write_table):
    from features.dataset import load_dataset

    table = steps_table({"a": 6, "b": 6})
    table["hardware"] = ["l40s"] * 6 + ["h200"] * 6
    ds = load_dataset(write_table(tmp_path / "s.parquet", table))
    by_exp = ds.frame.groupby("experiment_id")[["hw.flops", "hw.hbm_bw"]].first()
    assert by_exp.loc["a"].tolist() == [362.05e12, 864e9] and by_exp.loc["b"].tolist() == [989.5e12, 4.8e12]
    table["hardware"] = "tpu"
    with pytest.raises(StepMLError, match=r"no hardware datasheet named 'tpu'"):
        load_dataset(write_table(tmp_path / "t.parquet", table))


def test_datasheet_figures_must_be_positive_numbers(tmp_path):
    for bad in ('"fast"', "-1", "0", "true", "null"):
        text = _sheet(tmp_path / "x.json", 1, False).read_text().replace('"bandwidth_tb_s": 3.35', f'"bandwidth_tb_s": {bad}')
        (tmp_path / "x.json").write_text(text)
        with pytest.raises(StepMLError, match=r"x\.json: not a hardware datasheet"):
            load_hardware(tmp_path / "x.json")
