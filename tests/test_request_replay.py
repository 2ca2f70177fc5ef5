"""Request-log replay: a per-request table plus a server description (evaluation.request_replay).

Every expected number of the hand-checked cases follows from a constant (or a
stated) step time; the real-data test checks that a span folder and the same
requests written as a CSV give the same prediction, and the one the span replay
gave before it became the table replay.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy
import yaml

import evaluation.replay_cli as replay_cli
from evaluation.predictors import FormulaPredictor
from evaluation.request_replay import replay_request_file, replay_request_trace, replay_requests
from evaluation.server_spec import load_server_file
from features.cli import run
from features.errors import StepMLError
from features.request_log import load_request_map, parse_request_map, read_request_log

ROOT = Path(__file__).resolve().parent.parent
TINY = {"_name_or_path": "tiny", "hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000, "torch_dtype": "bfloat16",
        "max_position_embeddings": 2048}
MAP = """
name = "tiny"
id = "rid"
group = "tenant"
[arrival]
column = "t"
unit = "s"
[tokens]
input = "inp"
output = "out"
[measured]
unit = "ms"
per = "token"
ttft = "ttft_ms"
e2e = "e2e_ms"
itl = "itl_ms"
"""


def law(text: str, name: str = "law") -> FormulaPredictor:
    """A formula predictor over catalogue features (µs)."""
    expr = sympy.sympify(text)
    return FormulaPredictor(expr, tuple(str(s) for s in expr.free_symbols), name)


def tiny_setup(root: Path, rows: list[dict] | None = None, *, server: dict | None = None, map_text: str = MAP):
    """A log of three lone requests (0.1 s apart, 20 tokens in, 3 out), its map and a tiny server."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny").mkdir(exist_ok=True)
    (root / "tiny" / "config.json").write_text(json.dumps(TINY))
    rows = rows if rows is not None else [
        {"rid": k, "tenant": "a" if k < 2 else "b", "t": 1000.0 + 0.1 * (k + 1), "inp": 20, "out": 3,
         "ttft_ms": 12.0, "e2e_ms": 30.0, "itl_ms": 10.0} for k in range(3)]
    log = root / "tiny_log.csv"
    pd.DataFrame(rows).to_csv(log, index=False)
    (root / "map.toml").write_text(map_text)
    (root / "server.yaml").write_text(yaml.safe_dump(server or {
        "model": "tiny/config.json", "hardware": "h100-sxm", "max_num_seqs": 8, "max_num_batched_tokens": 256}))
    return log, root / "map.toml", root / "server.yaml"


def cli(argv, capsys, predictor=None, monkeypatch=None):
    """Run the replay CLI in-process; returns (exit status, stdout, stderr)."""
    if predictor is not None:
        monkeypatch.setattr(replay_cli, "load_predictor", lambda *a: predictor)
    with pytest.raises(SystemExit) as stop:
        run(replay_cli.main, argv, prog="evaluation.replay")
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


# -- hand-checked replays -------------------------------------------------------------------------

def test_three_lone_requests_are_hand_checkable(tmp_path, isolated_metadata):
    log_path, map_path, server_path = tiny_setup(tmp_path)
    log = read_request_log(log_path, map_path)
    server = load_server_file(server_path)
    res = replay_requests(log, server, law("10000"), capacity=False)
    assert res.kind == "request log" and res.per == "token" and res.experiment_id == "tiny_log"
    # each request runs alone: prefill + first token in one 10 ms step, then two decode steps
    assert res.requests["ttft_s"].to_numpy() == pytest.approx([0.010] * 3)
    assert res.requests["e2e_s"].to_numpy() == pytest.approx([0.030] * 3)
    s = res.predicted["summary"]
    assert s.time_per_output_token.mean == pytest.approx(0.010) and s.inter_token_latency.mean == pytest.approx(0.010)
    assert list(res.predicted) == ["a", "b", "summary"] and res.predicted["a"].count == 2
    errors = res.errors("summary")
    assert errors["ttft_err"] == pytest.approx(100 * (10 - 12) / 12)
    assert errors["e2e_err"] == pytest.approx(0.0, abs=1e-9) and errors["itl_err"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(errors["tpot_err"])                    # not in the log
    # the same log read per streamed line (inference-perf): 8 lines from 10 to 30 ms
    lines = read_request_log(log_path, parse_request_map({**_toml(MAP), "measured": {
        **_toml(MAP)["measured"], "per": "line"}}, map_path))
    s = replay_requests(lines, server, law("10000"), capacity=False).predicted["summary"]
    assert s.time_per_output_token.mean == pytest.approx(0.020 / 7)


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_cached_tokens_skip_their_prefill(tmp_path, isolated_metadata):
    """A request whose log reports 64 cached prompt tokens prefills only the other 36 (step: 1 ms + 0.1 ms/token)."""
    rows = [{"rid": 0, "tenant": "a", "t": 0.0, "inp": 100, "out": 2, "cached": 64, "ttft_ms": 4.6, "e2e_ms": 5.7,
             "itl_ms": 1.1},
            {"rid": 1, "tenant": "a", "t": 1.0, "inp": 100, "out": 2, "cached": 0, "ttft_ms": 11.0, "e2e_ms": 12.1,
             "itl_ms": 1.1}]
    text = MAP.replace('output = "out"', 'output = "out"\ncached = "cached"')
    log_path, map_path, server_path = tiny_setup(tmp_path, rows, map_text=text)
    res = replay_request_file(log_path, server_path, law("1000 + 100*prefill_tokens"), colmap=map_path,
                              capacity=False)
    assert res.requests["ttft_s"].to_numpy() == pytest.approx([0.0046, 0.0110])
    assert res.requests["prefix_hit_tokens"].to_numpy().tolist() == [64, 0]
    log, server = read_request_log(log_path, map_path), load_server_file(server_path)
    off = replace(server, enable_prefix_caching=False)
    res = replay_requests(log, off, law("1000 + 100*prefill_tokens"), capacity=False)
    assert res.requests["ttft_s"].to_numpy() == pytest.approx([0.0110, 0.0110])
    assert any("prefix caching is off" in n for n in res.notes)


def test_units_formats_and_order_do_not_change_the_prediction(tmp_path, isolated_metadata, capsys):
    """Seconds or milliseconds or ISO dates, CSV or parquet or JSON lines, sorted or not: one prediction."""
    rng = np.random.default_rng(0)
    n = 40
    t = np.round(np.sort(rng.uniform(0, 4, n)), 3)
    rows = pd.DataFrame({"rid": np.arange(n), "tenant": rng.choice(["a", "b"], n), "t": 1_700_000_000 + t,
                         "inp": rng.integers(10, 200, n), "out": rng.integers(1, 30, n), "ttft_ms": 20.0,
                         "e2e_ms": 200.0, "itl_ms": np.where(rng.random(n) < 0.5, 8.0, 9.0)})
    rows.loc[rows["out"] == 1, "itl_ms"] = np.nan          # no gap in a one-token output: allowed
    log_path, map_path, server_path = tiny_setup(tmp_path, rows.to_dict("records"))
    server = load_server_file(server_path)
    pred = law("2000 + 30*prefill_tokens + 50*decode_tokens")
    base = replay_requests(read_request_log(log_path, map_path), server, pred, capacity=False)
    variants = {}
    ms = rows.assign(t=(rows["t"] - 1_700_000_000) * 1e3)
    ms.to_parquet(tmp_path / "ms.parquet")
    variants["ms"] = (tmp_path / "ms.parquet", MAP.replace('unit = "s"', 'unit = "ms"'))
    iso = rows.assign(t=pd.to_datetime(rows["t"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    iso.to_json(tmp_path / "iso.jsonl", orient="records", lines=True)
    variants["iso"] = (tmp_path / "iso.jsonl", MAP.replace('unit = "s"', 'unit = "datetime"'))
    rows.sample(frac=1.0, random_state=1).to_csv(tmp_path / "shuffled.csv", index=False)
    variants["shuffled"] = (tmp_path / "shuffled.csv", MAP)
    for name, (path, text) in variants.items():
        rmap = parse_request_map(_toml(text), name)
        res = replay_requests(read_request_log(path, rmap), server, pred, capacity=False)
        for window in ("a", "b", "summary"):
            for metric in ("request_latency", "time_to_first_token", "inter_token_latency"):
                assert getattr(res.predicted[window], metric).mean == pytest.approx(
                    getattr(base.predicted[window], metric).mean, abs=2e-6), (name, window, metric)
        assert res.measured["summary"].inter_token_latency.count == int((rows["out"] > 1).sum())
    assert "out of arrival order" in capsys.readouterr().err


def test_vllm_bench_detailed_json_is_read_with_the_shipped_map(tmp_path, isolated_metadata, capsys, monkeypatch):
    """``vllm bench serve --save-detailed``: per-request lists, pooled ITLs, failed requests left out."""
    _, _, server_path = tiny_setup(tmp_path)
    n = 6
    doc = {"date": "20260101-000000", "backend": "vllm", "model_id": "tiny", "request_rate": 2.0, "completed": 5,
           "failed": 1, "duration": 3.0,
           "start_times": [100.0 + 0.5 * k for k in range(n)], "input_lens": [20] * n,
           "output_lens": [3, 3, 3, 0, 4, 3], "ttfts": [0.012, 0.011, 0.012, 0.0, 0.012, 0.012],
           "itls": [[0.010, 0.010], [0.010, 0.011], [0.010, 0.010], [], [0.010, 0.010, 0.010], [0.010, 0.010]],
           "latencies": [0.032, 0.032, 0.032, 0.0, 0.042, 0.032],
           "errors": ["", "", "", "Bad Request", "", ""], "generated_texts": ["x"] * n,
           "mean_ttft_ms": 11.8}
    bench = tmp_path / "vllm-2.0qps-tiny-20260101-000000.json"
    bench.write_text(json.dumps(doc))
    status, out, err = cli(["--predictor", "law", "--requests", str(bench), "--server", str(server_path), "--json"],
                           capsys, law("10000"), monkeypatch)
    assert status == 0, err
    entry = json.loads(out)["experiments"]["vllm-2.0qps-tiny-20260101-000000"]
    assert entry["requests"] == 5 and "1 failed request" in err
    meas = entry["measured"]["summary"]
    assert meas["inter_token_latency"]["count"] == 11             # pooled: every gap of every served request
    assert meas["inter_token_latency"]["mean"] == pytest.approx((0.010 * 10 + 0.011) / 11)
    assert entry["predicted"]["summary"]["inter_token_latency"]["count"] == 11
    assert entry["e2e_err"] == pytest.approx(100 * abs(0.032 - (0.032 * 4 + 0.042) / 5) / ((0.032 * 4 + 0.042) / 5),
                                             rel=1e-6)
    assert entry["per"] == "token" and entry["server"]["settings"]["max_num_seqs"] == 8


def test_span_trace_replays_through_requests_without_a_server_file(tmp_path, isolated_metadata, capsys, monkeypatch,
                                                                   request_span, write_request_trace):
    folder = tmp_path / "spans"
    spans = [request_span(f"r{k}", 1_700_000_000_000_000_000 + k * 10 ** 8, ttft=0.01, e2e=0.03, prompt=20,
                          completion=3) for k in range(4)]
    write_request_trace(folder / "traces.json", spans)
    (tmp_path / "model_configs" / "tiny").mkdir(parents=True)
    (tmp_path / "model_configs" / "tiny" / "config.json").write_text(json.dumps(TINY))
    (folder / "exp-config.yaml").write_text(yaml.safe_dump({"model": "org/tiny", "tensor_parallelism": 1,
                                                             "max_model_len": 256, "max_num_batched_tokens": 256,
                                                             "max_num_seqs": 8}))
    status, out, err = cli(["--predictor", "law", "--requests", str(folder), "--json"], capsys, law("10000"),
                           monkeypatch)
    assert status == 0, err
    entry = json.loads(out)["experiments"]["spans"]
    assert entry["e2e_err"] == pytest.approx(0.0, abs=1e-6) and entry["ttft_err"] == pytest.approx(0.0, abs=1e-6)
    assert entry["server"]["sources"]["max_num_seqs"] == "exp-config.yaml"
    same = replay_request_trace(folder, law("10000"), capacity=False)
    assert same.predicted["summary"].request_latency.mean == pytest.approx(0.030)


# -- the server description ----------------------------------------------------------------------

def test_missing_settings_take_vllms_defaults_and_are_printed(tmp_path, isolated_metadata, capsys, monkeypatch):
    log_path, map_path, _ = tiny_setup(tmp_path)
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("model: tiny/config.json\n")
    server = load_server_file(minimal)
    assert (server.hardware, server.tensor_parallel_size, server.max_model_len) == ("h100-sxm", 1, 2048)
    assert (server.max_num_seqs, server.max_num_batched_tokens) == (1024, 8192)       # an 80 GB H100
    assert server.sources["max_model_len"] == "the model config's max_position_embeddings"
    small = tmp_path / "a40.yaml"
    small.write_text("model: tiny\nhardware: a40\nmax-num-batched-tokens: 128\nasync_scheduling: false\n")
    server = load_server_file(small)
    assert (server.max_num_seqs, server.max_num_batched_tokens, server.async_scheduling) == (128, 128, False)
    status, out, err = cli(["--predictor", "law", "--requests", str(log_path), "--colmap", str(map_path),
                            "--server", str(small)], capsys, law("10000"), monkeypatch)
    assert status == 0, err
    assert "sync scheduling" in out                            # the server file's async_scheduling: false
    assert "not in the server description, so: " in out and "max_num_seqs 128 (vLLM default" in out
    assert "gpu_memory_utilization 0.9 (vLLM default)" in out


@pytest.mark.parametrize("text, message", [
    ("model: tiny\nmax_num_seq: 8\n", "unknown setting 'max_num_seq' (did you mean max_num_seqs"),
    ("model: tiny\nmax_num_seqs: 0\n", "max_num_seqs must be >= 1"),
    ("model: tiny\nmax_num_seqs: 8.5\n", "whole number"),
    ("model: tiny\nenable_prefix_caching: yes please\n", "true or false"),
    ("model: tiny\ngpu_memory_utilization: 1.5\n", "in (0, 1]"),
    ("max_num_seqs: 8\n", "no model"),
    ("model: no-such-model\n", "no model config for 'no-such-model'"),
    ("model: ./missing/config.json\n", "model config not found"),
    ("model: t\n", "names several configs"),
    ("model: tiny\nhardware: a100\n", "names several datasheets"),
    ("model: tiny\nenable_chunked_prefill: false\nmax_num_batched_tokens: 64\nmax_model_len: 128\n",
     "without chunked prefill"),
    ("- a list\n", "expected a mapping"),
    ("model: huge\n", "no GPU memory is left for the KV cache of huge"),
])
def test_bad_server_files(tmp_path, isolated_metadata, text, message):
    tiny_setup(tmp_path)
    (tmp_path / "model_configs" / "tiny-a").mkdir(parents=True)
    (tmp_path / "model_configs" / "tiny-a" / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "model_configs" / "tiny-b").mkdir(parents=True)
    (tmp_path / "model_configs" / "tiny-b" / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "config.json").write_text(json.dumps({**TINY, "hidden_size": 16384, "intermediate_size": 65536,
                                                               "num_hidden_layers": 200}))
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(StepMLError, match=re.escape(message)):
        load_server_file(path)


def test_model_names_are_found_in_the_shared_and_blis_configs(data_root):
    from evaluation.server_spec import find_model_config_path
    from features.metadata import default_blis_root, metadata_roots

    roots = metadata_roots(None)
    found = find_model_config_path("meta-llama/Llama-2-7b-hf", roots)
    assert found.parent.parent == data_root / "blis" / "model_configs"
    if not (default_blis_root() / "src" / "model_configs").is_dir():
        pytest.skip("the BLIS snapshot is not beside the data")
    assert find_model_config_path("Qwen/Qwen3-14B", roots).parent.name == "qwen3-14b"
    with pytest.raises(StepMLError, match="names several configs"):
        find_model_config_path("qwen3", roots)


# -- bad logs --------------------------------------------------------------------------------------

def _rows(**change):
    rows = [{"rid": k, "tenant": "a", "t": float(k), "inp": 20, "out": 3, "ttft_ms": 12.0, "e2e_ms": 30.0,
             "itl_ms": 10.0} for k in range(3)]
    for key, value in change.items():
        rows[1][key] = value
    return rows


@pytest.mark.parametrize("rows, map_text, message", [
    (_rows(inp=-5), MAP, "input tokens ('inp') must be whole numbers >= 1; row 1 is -5"),
    (_rows(out=0), MAP, "output tokens ('out') must be whole numbers >= 1"),
    (_rows(inp=2.5), MAP, "row 1 is 2.5"),
    (_rows(ttft_ms=float("nan")), MAP, "column 'ttft_ms' (measured ttft) has 1 missing"),
    (_rows(e2e_ms=-3.0), MAP, "measured e2e ('e2e_ms') is negative"),
    (_rows(t="soon"), MAP, "column 't' (arrival) has 1 non-numeric value(s), first 'soon'"),
    (_rows(rid=0), MAP, "request id '0' appears 2 times"),
    (_rows(rid=0, t=0.0), MAP.replace('id = "rid"\n', ""), "rows 0 and 1 are equal in every column"),
    (_rows(inp=5000), MAP, "exceed max_model_len 2048"),
    (_rows(), MAP.replace('ttft = "ttft_ms"', 'ttft = "ttft"'), "names unknown column(s): ttft (did you mean"),
    (_rows(), MAP.replace('per = "token"\n', ""), "per is required with itl or tpot"),
    (_rows(), MAP.replace('unit = "ms"\nper', 'per'), "[measured] e2e needs a unit"),
    (_rows(), MAP.replace("[tokens]", "[tokenz]"), "unknown key(s) 'tokenz'"),
    (_rows(), MAP + '[target]\ncolumn = "x"\n', "this is a step column map"),
    (_rows(), MAP.replace('name = "tiny"', 'name = "tiny"\nfailed = "out"'), "every request failed"),
])
def test_bad_logs_are_one_line_and_exit_2(tmp_path, isolated_metadata, capsys, monkeypatch, rows, map_text,
                                          message):
    log_path, map_path, server_path = tiny_setup(tmp_path, rows, map_text=map_text)
    status, out, err = cli(["--predictor", "law", "--requests", str(log_path), "--colmap", str(map_path),
                            "--server", str(server_path)], capsys, law("10000"), monkeypatch)
    lines = err.strip().splitlines()
    assert status == 2 and out == "", err
    assert len(lines) == 1 and lines[0].startswith("evaluation.replay: error:") and message in lines[0], lines


@pytest.mark.parametrize("extra, message", [
    (["--server", "{server}"], "give --requests FILE"),
    (["--requests", "{tmp}/nope.csv", "--server", "{server}"], "data not found"),
    (["--requests", "{log}"], "no --server FILE.yaml"),
    (["--requests", "{tmp}/server.yaml", "--server", "{server}"], "unsupported request log"),
    (["--requests", "{log}", "--server", "{server}"], "which column holds what? give --colmap"),
    (["--requests", "{log}", "--server", "{server}", "--colmap", "nope"], "unknown request map 'nope'"),
    (["--requests", "{log}", "--server", "{tmp}/none.yaml", "--colmap", "{map}"], "server file not found"),
])
def test_cli_misuse_is_one_line(tmp_path, isolated_metadata, capsys, monkeypatch, extra, message):
    log_path, map_path, server_path = tiny_setup(tmp_path)
    argv = ["--predictor", "law"] + [a.format(tmp=tmp_path, log=log_path, map=map_path, server=server_path)
                                     for a in extra]
    status, _, err = cli(argv, capsys, law("10000"), monkeypatch)
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_shipped_request_maps_parse():
    assert load_request_map("vllm_bench").measured["itl"] == ("itls", "s")
    assert load_request_map("otlp_spans").per == ""


# -- real data: the span replay and the table replay are one ----------------------------------------

#: Predicted means (E2E s, TTFT s) of the span replay before it became the table replay (commit 6b04e7c,
#: sync scheduling), for the formula ``3000 + 1.2 rl_bound + 2 rl_kv_read`` µs.
SPAN_REFERENCE = {"jan20-codellama-prefill-1": (19.06417801330519, 18.221781664073543)}


def test_span_folder_and_its_csv_give_the_prediction_of_the_span_replay(real_path, tmp_path, capsys, monkeypatch):
    name = "jan20-codellama-prefill-1"
    folder = real_path(f"blis/request_traces/{name}")
    from features.otlp import read_request_spans

    spans = read_request_spans(folder / "traces.json")
    csv = tmp_path / f"{name}.csv"
    spans[["request_id", "arrival_s", "prompt_tokens", "completion_tokens", "ttft_s", "e2e_s"]].to_csv(csv, index=False)
    (tmp_path / "spans.toml").write_text('id = "request_id"\n[arrival]\ncolumn = "arrival_s"\nunit = "s"\n'
                                         '[tokens]\ninput = "prompt_tokens"\noutput = "completion_tokens"\n'
                                         '[measured]\nunit = "s"\nttft = "ttft_s"\ne2e = "e2e_s"\n')
    config = yaml.safe_load((folder / "exp-config.yaml").read_text())
    (tmp_path / "server.yaml").write_text(yaml.safe_dump({
        "model": config["model"], "hardware": "h100-sxm", "tensor_parallel_size": config["tensor_parallelism"],
        "max_num_seqs": config["max_num_seqs"], "max_num_batched_tokens": config["max_num_batched_tokens"],
        "max_model_len": config["max_model_len"]}))
    status, out, err = cli(["--predictor", "law", "--requests", str(csv), "--colmap", str(tmp_path / "spans.toml"),
                            "--server", str(tmp_path / "server.yaml"), "--experiments", str(folder),
                            "--scheduling", "sync", "--json"], capsys,
                           law("3000 + 1.2*rl_bound + 2*rl_kv_read"), monkeypatch)
    assert status == 0, err
    entries = json.loads(out)["experiments"]
    e2e, ttft = SPAN_REFERENCE[name]
    for entry in (entries[name], entries[folder.name]):
        pred = entry["predicted"]["summary"]
        assert pred["request_latency"]["mean"] == pytest.approx(e2e, rel=1e-3)
        assert pred["time_to_first_token"]["mean"] == pytest.approx(ttft, rel=1e-3)
        assert entry["measured"]["summary"]["request_latency"]["mean"] == pytest.approx(spans["e2e_s"].mean())
    assert entries[name]["predicted"] == entries[folder.name]["predicted"]


# -- the README's worked example ----------------------------------------------------------------------

def readme_blocks() -> dict[str, str]:
    """The request-log example of the README: its TOML map, YAML server file and command."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Request logs"):]
    section = section[:min(section.index("\n## "), section.index("\n### ", 1))]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    out = {}
    for lang, body in blocks:
        out.setdefault(lang, body)
    return out


def test_readme_request_log_example_runs_end_to_end(tmp_path, isolated_metadata, capsys, monkeypatch):
    """The README's map, server file and command on the generated log reproduce the law that made it."""
    import features.demo_requests as demo
    from features.demo_experiments import law_expression

    monkeypatch.setattr(demo, "DURATION_S", 40.0)
    demo.write_demo_request_log(tmp_path / "demo_log")
    blocks = readme_blocks()
    (tmp_path / "demo_log" / "tenants.toml").write_text(blocks["toml"])
    (tmp_path / "demo_log" / "server.yaml").write_text(blocks["yaml"])
    command = next(line.strip() for line in blocks["sh"].splitlines() if "evaluation.replay" in line)
    argv = command.split("python -m evaluation.replay", 1)[1].split()
    argv = [str(tmp_path / a) if a.startswith("demo_log/") else a for a in argv]
    predictor = FormulaPredictor(law_expression(), tuple(str(s) for s in law_expression().free_symbols), "law")
    argv[argv.index("--predictor") + 1] = "law"
    status, out, err = cli(argv + ["--json"], capsys, predictor, monkeypatch)
    assert status == 0, err
    entry = json.loads(out)["experiments"]["demo_log"]
    assert set(entry["predicted"]) == {"chat", "code", "summary"}
    for key in ("e2e_err", "ttft_err", "itl_err", "tpot_err"):
        assert entry[key] < 3.0, (key, entry[key])            # the log's only difference: 2 % step noise
    assert "max_model_len" in " ".join(entry["server"]["defaults"])


def test_mutated_logs_end_in_a_result_or_one_line(tmp_path, isolated_metadata, capsys, monkeypatch):
    """Random damage to a log's cells (text, booleans, negatives, blanks, huge values, lists) never shows a
    traceback: the replay either runs (exit 0) or says what is wrong in one line (exit 2)."""
    rng = np.random.default_rng(7)
    junk = ["", "x", True, -1, 0, 1e300, float("nan"), float("inf"), "[1, 2]", 2.5, "2026-01-01", -0.0]
    base = _rows()
    outcomes = {0: 0, 2: 0}
    for case in range(40):
        rows = [dict(r) for r in base]
        for _ in range(int(rng.integers(1, 4))):
            row, column = int(rng.integers(0, len(rows))), str(rng.choice(list(rows[0])))
            rows[row][column] = junk[int(rng.integers(0, len(junk)))]
        log_path, map_path, server_path = tiny_setup(tmp_path / f"c{case}", rows)
        status, _, err = cli(["--predictor", "law", "--requests", str(log_path), "--colmap", str(map_path),
                              "--server", str(server_path)], capsys, law("10000"), monkeypatch)
        assert status in (0, 2), err
        if status == 2:
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        outcomes[status] += 1
    assert outcomes[0] and outcomes[2]                        # both kinds of case were generated
