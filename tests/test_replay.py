"""Workloads from inference-perf profiles, the replay, and its CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy
import yaml

from evaluation.predictors import FormulaPredictor

from evaluation.replay import (ReplayResult, calibrate_overheads, estimate_kv_blocks, load_predictor, main,
                               replay_experiment, with_seed_spread)
from evaluation.workloads import (LoadStage, experiment_profile, parse_profile, read_profile,
                                  requests_from_profile, requests_from_table, stage_arrivals, to_workload)
from features.errors import StepMLError

ROOT = Path(__file__).resolve().parent.parent
STEP_US = 10_000.0          # constant step time of the hand-checked replays: 10 ms


class Constant:
    """A predictor returning the same step time for every step."""

    def __init__(self, us: float = STEP_US) -> None:
        self.us = us
        self.name = f"const{us:g}"
        self.calls = 0

    def predict(self, columns):
        self.calls += 1
        assert "batch.prefill_tokens" in columns and "experiment_id" in columns
        return np.array([self.us])


def profile_dict(stages=((1.0, 1.0),), *, groups=2, per_group=3, system=10, question=10, output=3,
                 keys=("num_groups", "num_prompts_per_group"), multi_turn=False) -> dict:
    return {"api": {"streaming": True, "type": "completion"},
            "data": {"type": "shared_prefix",
                     "shared_prefix": {keys[0]: groups, keys[1]: per_group, "system_prompt_len": system,
                                       "question_len": question, "output_len": output,
                                       "enable_multi_turn_chat": multi_turn}},
            "load": {"type": "constant", "stages": [{"rate": r, "duration": d} for r, d in stages]},
            "server": {"ignore_eos": True}}


def make_experiment(root: Path, name: str = "exp", *, profile: dict | None = None, results: dict | None = None,
                    config: dict | None = None) -> Path:
    exp = root / name
    exp.mkdir(parents=True)
    (exp / "exp-config.yaml").write_text(yaml.safe_dump(config or {
        "model": "tiny/model", "tensor_parallelism": 1, "max_model_len": 256,
        "max_num_batched_tokens": 256, "max_num_seqs": 8}))
    (exp / "profile.yaml").write_text(json.dumps(profile or profile_dict()))
    for fname, report in (results or {}).items():
        (exp / "results").mkdir(exist_ok=True)
        (exp / "results" / fname).write_text(json.dumps(report))
    return exp


def report(e2e: float, ttft: float, tpot: float, *, count: int = 1, prompt_len: float = 20.0,
           rps: float = 1.0) -> dict:
    block = lambda v: {"mean": v, "median": v, "p90": v, "p99": v, "min": v, "max": v}  # noqa: E731
    return {"load_summary": {"count": count},
            "successes": {"count": count,
                          "latency": {"request_latency": block(e2e), "time_to_first_token": block(ttft),
                                      "time_per_output_token": block(tpot), "inter_token_latency": block(tpot),
                                      "normalized_time_per_output_token": block(e2e / 3)},
                          "throughput": {"requests_per_sec": rps, "input_tokens_per_sec": 1.0,
                                         "output_tokens_per_sec": 1.0},
                          "prompt_len": {"mean": prompt_len}},
            "failures": {"count": 0}}


# -- profiles and workloads --------------------------------------------------------------------

def test_profile_requests_counts_lengths_groups_and_determinism():
    prof = parse_profile(profile_dict(((2.0, 5.0), (4.0, 2.5)), groups=2, per_group=3, system=32, question=20,
                                      output=7))
    a = requests_from_profile(prof, seed=3)
    b = requests_from_profile(prof, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["stage"].value_counts().sort_index().tolist() == [10, 10]       # int(rate * duration)
    assert (a["input_tokens"] == 52).all() and (a["output_tokens"] == 7).all()
    # request j of a stage gets prompt j mod 6; prompts are whole-prompt prefix groups
    for _, st in a.groupby("stage"):
        assert st["prompt_id"].tolist() == [j % 6 for j in range(10)]
    assert (a["prefix_group"] == a["prompt_id"]).all() and (a["prefix_len"] == 52).all()
    # each system prompt owns per_group of the 6 prompts
    sys_of = a.drop_duplicates("prompt_id").set_index("prompt_id")["system_prompt_id"]
    assert sorted(sys_of.value_counts().tolist()) == [3, 3]
    # normalized constant timer: the last request of a stage at exactly its duration
    last = a.groupby("stage")["stage_time_s"].max().tolist()
    assert last == pytest.approx([5.0, 2.5])
    assert (a.groupby("stage")["stage_time_s"].min() > 0).all()
    assert a["arrival_s"].is_monotonic_increasing
    c = requests_from_profile(prof, seed=4)
    assert not np.allclose(a["stage_time_s"], c["stage_time_s"])
    system = requests_from_profile(prof, seed=3, prefix_mode="system", input_offset=2)
    assert (system["prefix_group"] == system["system_prompt_id"]).all() and (system["prefix_len"] == 32).all()
    assert (system["input_tokens"] == 54).all()
    wl = to_workload(a)
    assert len(wl) == 20 and wl.prefix_len.max() == 52


def test_arrival_modes():
    rng = np.random.default_rng(0)
    st = LoadStage(10.0, 3.0)
    assert stage_arrivals(st, rng, "uniform") == pytest.approx(np.arange(1, 31) / 10.0)
    norm = stage_arrivals(st, rng, "normalized")
    assert norm.size == 30 and norm[-1] == pytest.approx(3.0) and np.all(np.diff(norm) > 0)
    pois = stage_arrivals(st, rng, "poisson")
    assert pois.size > 0 and pois.max() <= 3.0
    with pytest.raises(StepMLError, match="arrival mode"):
        stage_arrivals(st, rng, "bursty")


def test_profile_aliases_override_and_multi_turn(tmp_path):
    prof = parse_profile(profile_dict(keys=("num_unique_system_prompts", "num_users_per_system_prompt"),
                                      groups=9, per_group=5, multi_turn=True))
    assert (prof.data.num_groups, prof.data.num_prompts_per_group, prof.data.multi_turn) == (9, 5, True)
    exp = make_experiment(tmp_path, profile=profile_dict(keys=("num_unique_system_prompts",
                                                               "num_users_per_system_prompt"),
                                                         groups=9, per_group=5, multi_turn=True))
    assert read_profile(exp / "profile.yaml").data.num_groups == 9
    (exp / "results").mkdir()
    (exp / "results" / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"type": "shared_prefix", "shared_prefix": {"num_groups": 10, "num_prompts_per_group": 10,
                                                              "system_prompt_len": 10, "question_len": 10,
                                                              "output_len": 3}}}))
    ran = experiment_profile(exp)
    assert (ran.data.num_groups, ran.data.num_prompts_per_group, ran.data.multi_turn) == (10, 10, False)
    assert any("overrides" in n for n in ran.notes)
    # multi-turn: 2 users, the input grows by question + output per round
    turns = requests_from_profile(parse_profile(profile_dict(((4.0, 1.0),), groups=1, per_group=2,
                                                             multi_turn=True)), seed=0)
    assert turns["round"].tolist() == [0, 0, 1, 1]
    assert turns["input_tokens"].tolist() == [20, 20, 33, 33]
    assert turns["prefix_len"].tolist() == [10, 10, 23, 23]


@pytest.mark.parametrize("mutate, match", [
    (lambda p: p["data"].update(type="random"), "not supported"),
    (lambda p: p["load"].update(stages=[]), "non-empty"),
    (lambda p: p["load"]["stages"][0].update(rate=-1), "rate > 0"),
    (lambda p: p["data"]["shared_prefix"].update(output_len=0), "output_len"),
    (lambda p: p["load"].update(type="trace_replay"), "not supported"),
])
def test_bad_profiles(mutate, match):
    prof = profile_dict()
    mutate(prof)
    with pytest.raises(StepMLError, match=match):
        parse_profile(prof)


def test_requests_from_table_aliases_and_errors():
    table = pd.DataFrame({"arrival_s": [105.0, 100.0, 101.5], "prompt_tokens": [30, 10, 20],
                          "completion_tokens": [3, 1, 2]})
    reqs = requests_from_table(table)
    assert reqs["arrival_s"].tolist() == [0.0, 1.5, 5.0]
    assert reqs["input_tokens"].tolist() == [10, 20, 30]
    assert reqs["output_tokens"].tolist() == [1, 2, 3]
    assert (reqs["prefix_group"] == -1).all()
    with pytest.raises(StepMLError, match="missing column output_tokens"):
        requests_from_table(table.drop(columns="completion_tokens"))
    with pytest.raises(StepMLError, match=">= 1"):
        requests_from_table(table.assign(prompt_tokens=[0, 1, 2]))


def test_generated_counts_match_every_published_stage(real_path):
    root = real_path("blis/experiments")
    for exp in sorted(p for p in root.iterdir() if (p / "profile.yaml").is_file()):
        counts = requests_from_profile(experiment_profile(exp), seed=0)["stage"].value_counts().to_dict()
        for stage, n in counts.items():
            report_path = exp / "results" / f"stage_{stage}_lifecycle_metrics.json"
            assert json.loads(report_path.read_text())["load_summary"]["count"] == n, (exp.name, stage)


def test_requests_from_real_request_spans(real_path):
    from features.otlp import read_request_spans

    spans = read_request_spans(real_path("blis/request_traces/jan21-llama7b-train-1/traces.json"))
    reqs = requests_from_table(spans, source="jan21")
    assert len(reqs) == len(spans) and reqs["arrival_s"].iloc[0] == 0.0
    assert reqs["input_tokens"].sum() == spans["prompt_tokens"].sum()


# -- replay ---------------------------------------------------------------------------------------

def test_replay_constant_step_is_hand_checkable(tmp_path, isolated_metadata):
    # uniform arrivals at 0.1, 0.2, 0.3 s of one stage; each request (20 tokens in, 3 out) runs alone:
    # prefill + first token in one 10 ms step, then two decode steps
    exp = make_experiment(tmp_path, profile=profile_dict(((10.0, 0.3),)))
    pred = Constant()
    res = replay_experiment(exp, pred, arrivals="uniform", capacity=False)
    assert isinstance(res, ReplayResult)
    assert res.num_steps == 9 and pred.calls == 9
    assert res.load is None and not res.saturated and res.status == "ok"
    req = res.requests
    assert req["ttft_s"].to_numpy() == pytest.approx([0.010] * 3)
    assert req["e2e_s"].to_numpy() == pytest.approx([0.030] * 3)
    s = res.predicted["stage_0"]
    assert s.count == 3
    assert s.time_to_first_token.mean == pytest.approx(0.010)
    assert s.request_latency.mean == pytest.approx(0.030)
    # 3 tokens -> 8 lines from 10 ms to 30 ms: TPOT = 20 ms / 7
    assert s.time_per_output_token.mean == pytest.approx(0.020 / 7)
    assert s.inter_token_latency.mean == pytest.approx(0.020 / 7)
    assert s.inter_token_latency.p90 == pytest.approx(0.010)
    assert res.kv_source.startswith("unlimited") and res.measured == {}
    # client overheads add up: queue 5 ms + step 10 ms + post 2 ms; end 1 ms after the last line
    res2 = replay_experiment(exp, Constant(), 0, 0.005, 0.002, end_overhead_s=0.001, arrivals="uniform")
    assert res2.requests["ttft_s"].to_numpy() == pytest.approx([0.017] * 3)
    assert res2.requests["e2e_s"].to_numpy() == pytest.approx([0.038] * 3)


def test_replay_stages_never_overlap_and_compare_with_results(tmp_path, isolated_metadata):
    # stage 0 and 1 each send one request at exactly their duration; measured: E2E 25 ms, TTFT 10 ms
    results = {"stage_0_lifecycle_metrics.json": report(0.025, 0.010, 0.020 / 7),
               "stage_1_lifecycle_metrics.json": report(0.030, 0.008, 0.020 / 7),
               "summary_lifecycle_metrics.json": report(0.025, 0.010, 0.020 / 7, count=2, prompt_len=22.4)}
    exp = make_experiment(tmp_path, profile=profile_dict(((1.0, 1.0), (1.0, 1.0))), results=results)
    res = replay_experiment(exp, Constant())
    assert res.input_offset == 2                               # 22.4 measured vs 20 nominal
    assert (res.requests["input_tokens"] == 22).all()
    assert list(res.predicted) == ["stage_0", "stage_1", "summary"]
    assert set(res.measured) == {"stage_0", "stage_1", "summary"}
    errs = res.errors()
    assert errs["e2e_err"] == pytest.approx(20.0)             # 30 ms vs 25 ms
    assert errs["ttft_err"] == pytest.approx(0.0, abs=1e-6)
    assert res.errors("stage_1")["ttft_err"] == pytest.approx(25.0)
    # stage 1 starts 1 s (interval) after stage 0 drained, plus the 1 s warm-up and its 1 s offset
    start = res.requests["start_s"].to_numpy()
    end = res.requests["end_s"].to_numpy()
    assert start[1] - end[0] == pytest.approx(3.0)
    out = res.to_json_dict()
    assert out["e2e_err"] == pytest.approx(20.0) and out["window"] == "summary"
    assert out["predicted"]["summary"]["count"] == 2
    # one stage only: no whole-run comparison
    only = replay_experiment(exp, Constant(), stages=[1])
    assert set(only.measured) == {"stage_1"} and set(only.predicted) == {"stage_1", "summary"}
    cal = calibrate_overheads(exp, Constant())
    assert cal["queue_overhead_s"] == pytest.approx(0.0, abs=1e-6)
    assert cal["end_overhead_s"] == 0.0          # 25 - 10 - 7 * 20/7 ms = -5 ms: clipped at 0
    with pytest.raises(StepMLError, match="stage"):
        replay_experiment(exp, Constant(), stages=[5])


def test_replay_rejects_bad_predictions_and_inputs(tmp_path, isolated_metadata):
    exp = make_experiment(tmp_path)
    with pytest.raises(StepMLError, match="must be finite and > 0"):
        replay_experiment(exp, Constant(-1.0))

    class Broken:
        name = "broken"

        def predict(self, columns):
            raise KeyError("boom")

    with pytest.raises(StepMLError, match="broken failed"):
        replay_experiment(exp, Broken())
    with pytest.raises(StepMLError, match="not found"):
        replay_experiment(tmp_path / "nowhere", Constant())
    with pytest.raises(StepMLError, match=">= 0"):
        replay_experiment(exp, Constant(), queue_overhead_s=-1.0)


def test_kv_estimate_reproduces_the_measured_pools(real_path):
    from features.metadata import experiment_meta

    root = real_path("blis")
    for exp, blocks in (("20260217-202857-llama-2-70b-tp4-general", 31356),
                        ("20260218-150304-codellama-34b-tp2-general", 26602)):
        meta = experiment_meta(exp, [root.parent])
        assert abs(estimate_kv_blocks(meta) - blocks) <= 2


def test_real_stage_replays(real_path):
    exp = real_path("blis/experiments/20260217-203421-llama-2-70b-hf-tp4-codegen")
    res = replay_experiment(exp, Constant(19_000.0), stages=[0])
    assert res.kv_blocks == 31356 and "step data" in res.kv_source
    assert res.predicted["stage_0"].count == res.measured["stage_0"].count == 3000
    assert res.input_offset == 27
    errs = res.errors("stage_0")
    assert all(np.isfinite(v) for v in errs.values())
    assert abs(errs["e2e_err"]) < 25 and abs(errs["throughput_err"]) < 1
    # repeated prompts hit the prefix cache whole: ~15 prompt tokens computed per request
    hit = res.requests["prefix_hit_tokens"].to_numpy()
    assert np.median(hit) >= 560


# -- predictors and CLI ---------------------------------------------------------------------------

def write_run(run_dir: Path, formula: str = "10000.0*tp") -> Path:
    run_dir.mkdir(parents=True)
    pd.DataFrame({"Complexity": [1, 3], "Loss": [0.5, 0.4], "Equation": [formula, f"{formula} + 0"],
                  "val_mape": [5.0, 4.0], "front": [True, True]}).to_csv(run_dir / "hall_of_fame.csv", index=False)
    return run_dir


def test_run_dir_predictor(tmp_path):
    pred = load_predictor(str(write_run(tmp_path / "run")) + ":0")
    assert pred.predict({"arch.tp": np.array([2.0])}).tolist() == [20000.0]
    assert pred.name == "run:0"
    const = load_predictor(str(write_run(tmp_path / "const", "12000.0")))       # default row: best
    assert const.predict({"batch.prefill_tokens": np.array([3.0])}).tolist() == [12000.0]
    with pytest.raises(StepMLError, match="front has rows"):
        load_predictor(str(tmp_path / "run") + ":7")


def test_cli_json_on_a_tiny_experiment(tmp_path, isolated_metadata, capsys):
    results = {"stage_0_lifecycle_metrics.json": report(0.025, 0.010, 0.020 / 7),
               "summary_lifecycle_metrics.json": report(0.025, 0.010, 0.020 / 7, prompt_len=20.0)}
    exp = make_experiment(tmp_path, profile=profile_dict(((1.0, 1.0),)), results=results)
    run = write_run(tmp_path / "run")
    assert main(["--predictor", str(run), "--experiments", str(exp), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    entry = out["experiments"]["exp"]
    assert set(entry) >= {"e2e_err", "ttft_err", "itl_err", "tpot_err", "throughput_err", "predicted", "measured"}
    assert entry["e2e_err"] == pytest.approx(20.0) and entry["ttft_err"] == pytest.approx(0.0, abs=1e-6)
    assert main(["--predictor", str(run), "--experiments", str(exp)]) == 0
    text = capsys.readouterr().out
    assert "stage_0" in text and "E2E" in text and "+20.0" in text


@pytest.mark.parametrize("args, message", [
    (["--predictor", "{tmp}/model.json", "--experiments", "{exp}"], "artifact not found"),
    (["--predictor", "baseline:nope", "--experiments", "{exp}"], "unknown baseline"),
    (["--predictor", "{tmp}/no_run", "--experiments", "{exp}"], "predictor not found"),
    (["--predictor", "{run}", "--experiments", "{tmp}/no_exp"], "experiment directory not found"),
    (["--predictor", "{run}", "--experiments", "{exp}", "--queue-overhead-s", "-1"], ">= 0"),
    (["--predictor", "{tmp}", "--experiments", "{exp}"], "no hall_of_fame.csv"),
])
def test_cli_errors_exit_2(tmp_path, args, message):
    exp = make_experiment(tmp_path)
    run = write_run(tmp_path / "run")
    argv = [a.format(exp=exp, tmp=tmp_path, run=run) for a in args]
    proc = subprocess.run([sys.executable, "-m", "evaluation.replay", *argv], cwd=ROOT, capture_output=True,
                          text=True, env={"STEPML_DATA": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluation.replay: error:") and message in lines[0]


def test_review_adds_replay_columns_and_an_e2e_selection(tmp_path, capsys, monkeypatch):
    """discovery.review --experiments replays every front member; `e2e` marks the lowest E2E error."""
    from discovery import review

    monkeypatch.setenv("STEPML_DATA", str(tmp_path / "empty"))
    results = {"stage_0_lifecycle_metrics.json": report(0.025, 0.010, 0.020 / 7),
               "summary_lifecycle_metrics.json": report(0.025, 0.010, 0.020 / 7, prompt_len=20.0)}
    exp = make_experiment(tmp_path, profile=profile_dict(((1.0, 1.0),)), results=results)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pd.DataFrame({"Complexity": [1, 3], "Loss": [0.5, 0.4], "Equation": ["1000.0", "3000.0 + 0.0*tp"],
                  "val_mape": [5.0, 4.0], "front": [True, True]}).to_csv(run_dir / "hall_of_fame.csv", index=False)
    (run_dir / "run.json").write_text(json.dumps({"space": "linear", "data": "test"}))
    with pytest.raises(SystemExit) as exc:
        from features.cli import run as run_cli

        run_cli(review.main, [str(run_dir), "--experiments", str(exp)], prog="test")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "e2e%" in out and "ttft%" in out and "itl%" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    e2e = {k: float(v[6]) for k, v in rows.items()}
    assert all(np.isfinite(list(e2e.values())))
    best = min(e2e, key=e2e.get)
    assert "e2e" in " ".join(rows[best][9:])
    assert "e2e_err %" in (run_dir / "report.md").read_text()


def test_request_trace_folder_is_replayed_from_its_spans(data_root):
    """A folder of llm_request spans replays its own arrivals and token counts (server-side latencies)."""
    from evaluation.replay import is_request_trace, replay_request_trace

    folder = data_root / "blis" / "request_traces" / "jan21-llama7b-train-1"
    if not folder.is_dir():
        pytest.skip(f"request traces not found at {folder}")
    assert is_request_trace(folder) and not is_request_trace(data_root / "blis" / "experiments")
    constant = FormulaPredictor(sympy.Float(20000.0), (), "constant")
    result = replay_request_trace(folder, constant, capacity=False)
    pred, meas = result.predicted["summary"], result.measured["summary"]
    assert result.kind == "request log" and meas.count == pred.count == len(result.requests) == 282
    # every request waits at least one 20 ms step for its first token and one step per output token
    assert pred.time_to_first_token.min >= 0.02 - 1e-9 and pred.request_latency.mean > pred.time_to_first_token.mean
    entry = result.to_json_dict()
    assert 0 <= entry["e2e_err"] < 1000 and entry["itl_err"] is None          # the spans measured no ITL


# -- client timeout, rejection, capacity, explanation check -----------------------------------------

def lifecycle_json(summary) -> dict:
    """An inference-perf lifecycle report written from a replayed window (the 'measurement' of a test)."""
    block = lambda m: {"mean": m.mean, "median": m.median, "p90": m.p90, "p99": m.p99,  # noqa: E731
                       "min": m.min, "max": m.max}
    lat = {name: block(summary.metric(name)) for name in ("request_latency", "time_to_first_token",
                                                         "time_per_output_token", "inter_token_latency",
                                                         "normalized_time_per_output_token")}
    return {"successes": {"count": summary.count, "latency": lat,
                          "throughput": {"requests_per_sec": summary.requests_per_sec},
                          "prompt_len": {"mean": 20.0}},
            "failures": {"count": summary.failures, "request_latency": block(summary.failure_latency)}}


def queue_experiment(tmp_path, *, timeout=0.35, rate=10.0, duration=0.3, output=20, results=None, name="exp"):
    """One slot, uniform arrivals every 1/rate s, requests of 20 + ``output`` tokens, a client timeout."""
    exp = make_experiment(tmp_path, name, profile=profile_dict(((rate, duration),), output=output), results=results,
                          config={"model": "tiny/model", "tensor_parallelism": 1, "max_model_len": 256,
                                  "max_num_batched_tokens": 256, "max_num_seqs": 1})
    (exp / "results").mkdir(exist_ok=True)
    (exp / "results" / "config.yaml").write_text(yaml.safe_dump({"load": {
        "request_timeout": timeout, "num_workers": 2, "worker_max_concurrency": 100}}))
    return exp


def test_client_timeout_fails_late_requests_at_their_deadline(tmp_path, isolated_metadata):
    # 10 ms steps, 20 tokens: a request holds the only slot for 200 ms; sent at 0.1, 0.2, 0.3 s they
    # end at 0.3, 0.5 and 0.7 s (E2E 0.2, 0.3, 0.4 s); with a 0.35 s timeout the third fails at 0.65 s
    exp = queue_experiment(tmp_path)
    res = replay_experiment(exp, Constant(), arrivals="uniform")
    assert res.client.timeout_s == 0.35 and not res.client.ceil_to_second and res.client.max_in_flight == 200
    assert res.requests["outcome"].tolist() == ["ok", "ok", "timeout"]
    s = res.predicted["stage_0"]
    assert (s.count, s.failures) == (2, 1) and s.failure_fraction == pytest.approx(1 / 3)
    assert s.request_latency.mean == pytest.approx(0.25)
    assert s.failure_latency.mean == pytest.approx(0.35)
    # the server dropped it at the first step after the deadline: 0.65 s is a step boundary here
    assert res.num_steps == 20 + 20 + 15
    # without a timeout every request is served
    served = replay_experiment(exp, Constant(), arrivals="uniform", client=None)
    assert served.predicted["stage_0"].failures == 0 and served.predicted["stage_0"].request_latency.max == \
        pytest.approx(0.4)
    out = res.to_json_dict()
    assert out["failures"] == {"measured": None, "predicted": pytest.approx(1 / 3)}
    assert out["client_timeout_s"] == 0.35 and out["status"] == "ok"


def test_default_timeout_is_aiohttps_300_s_rounded_up_to_a_whole_second(tmp_path):
    from evaluation.replay_setup import client_limits

    exp = queue_experiment(tmp_path, timeout=None)
    limits = client_limits(exp)
    assert limits.timeout_s == 300.0 and limits.ceil_to_second
    assert client_limits(tmp_path / "nowhere").timeout_s == 300.0      # no config.yaml: inference-perf defaults
    (exp / "results" / "config.yaml").write_text("load: {request_timeout: -3}")
    with pytest.raises(StepMLError, match="request_timeout must be > 0"):
        client_limits(exp)
    # the loop-clock phases are uniform draws made after every other draw of the seed
    prof = parse_profile(profile_dict(((10.0, 100.0),)))
    reqs = requests_from_profile(prof, seed=4)
    phase = reqs["loop_phase_s"].to_numpy()
    assert phase.min() >= 0 and phase.max() < 1 and abs(phase.mean() - 0.5) < 0.05


def test_prompts_beyond_max_model_len_are_rejected_at_once(tmp_path, isolated_metadata):
    # multi-turn inputs grow by question + output per round: 20, 130, 240 tokens; 240 + 100 > 256
    prof = profile_dict(((10.0, 0.3),), groups=1, per_group=1, output=100, multi_turn=True)
    exp = make_experiment(tmp_path, profile=prof)
    res = replay_experiment(exp, Constant(), arrivals="uniform", capacity=False)
    assert res.requests["outcome"].tolist() == ["ok", "ok", "rejected"]
    assert res.predicted["summary"].failures == 1 and res.predicted["summary"].failure_latency.max == 0.0
    too_long = make_experiment(tmp_path, "long", profile=profile_dict(output=250))
    with pytest.raises(StepMLError, match="every request exceeds max_model_len"):
        replay_experiment(too_long, Constant())


def test_capacity_is_hand_checkable_and_marks_saturation(tmp_path, isolated_metadata):
    from evaluation.capacity import experiment_load

    # 8 slots, 20 tokens in (one prefill step), 3 out: a wave of 8 requests every 3 steps of 10 ms
    exp = make_experiment(tmp_path, profile=profile_dict(((1.0, 1.0), (300.0, 0.1))))
    load = experiment_load(exp, Constant())
    assert load.capacity.requests_per_s == pytest.approx(8 / 0.030)
    assert load.capacity.output_tokens_per_s == pytest.approx(3 * 8 / 0.030)
    assert load.capacity.concurrency == pytest.approx(8) and load.capacity.step_time_s == pytest.approx(0.010)
    assert [s.saturated for s in load.stages] == [False, True] and load.saturated
    assert load.stages[1].utilization == pytest.approx(300 / (8 / 0.030))
    res = replay_experiment(exp, Constant())
    assert res.saturated and any("saturated" in n for n in res.notes)
    assert res.to_json_dict()["load"]["capacity"]["requests_per_s"] == pytest.approx(8 / 0.030)


def test_pace_check_explains_a_saturated_run_and_flags_an_unexplained_one(tmp_path, isolated_metadata):
    from evaluation.saturation import pace_check

    # the "measurement": the same experiment served with 20 ms steps (0.4 s per request, 10 req/s offered)
    truth_exp = queue_experiment(tmp_path, timeout=1.0, duration=1.0, name="truth")
    truth = replay_experiment(truth_exp, Constant(20_000.0), arrivals="uniform", capacity=False)
    assert truth.predicted["summary"].failures > 0
    report_json = lifecycle_json(truth.predicted["summary"])
    exp = queue_experiment(tmp_path, timeout=1.0, duration=1.0, name="exp",
                           results={"summary_lifecycle_metrics.json": report_json,
                                    "stage_0_lifecycle_metrics.json": report_json})
    res = replay_experiment(exp, Constant(10_000.0), arrivals="uniform")
    assert res.saturated and res.status == "explained"
    check = res.check
    assert check.scale == pytest.approx(2.0, rel=1e-3) and check.step_time_error_pct == pytest.approx(-50, abs=0.1)
    assert check.failures_replayed == pytest.approx(check.failures_measured)
    assert abs(check.e2e_err) < 1e-6 and check.replays == 2
    # a measurement the model cannot produce: the same latencies with nearly every request failed
    bad = dict(report_json, failures=dict(report_json["failures"], count=1000))
    odd = queue_experiment(tmp_path, timeout=1.0, duration=1.0, name="odd",
                           results={"summary_lifecycle_metrics.json": bad, "stage_0_lifecycle_metrics.json": bad})
    res = replay_experiment(odd, Constant(10_000.0), arrivals="uniform")
    assert res.status == "unexplained" and "failures" in res.check.reason
    out = res.to_json_dict()
    assert out["e2e_err"] is None and out["failures"]["predicted"] is None and "predicted" not in out
    assert out["simulated"]["summary"]["failures"] == res.predicted["summary"].failures == 1   # the 10 ms replay
    again = pace_check(odd, Constant(10_000.0), replay_experiment(odd, Constant(10_000.0), arrivals="uniform",
                                                                  explain=False), arrivals="uniform")
    assert again == res.check


REASONING = ("20260217-170634-llama-2-7b-tp1-reasoning", "20260218-065057-llama-2-70b-hf-tp4-reasoning",
             "20260218-135247-mixtral-8x7b-v0-1-tp2-reasoning", "20260218-160939-codellama-34b-tp2-reasoning")


def test_reasoning_failures_are_the_clients_300_s_timeout(real_path):
    from evaluation.latency_metrics import read_lifecycle_report
    from evaluation.replay_setup import client_limits

    for exp in REASONING:
        folder = real_path(f"blis/experiments/{exp}")
        limits = client_limits(folder)
        assert limits.timeout_s == 300.0 and limits.ceil_to_second and limits.max_in_flight == 22_400
        summary = read_lifecycle_report(folder / "results" / "summary_lifecycle_metrics.json")
        assert summary.failures > 0
        # every failure ends within [300, 301] s of its send (aiohttp rounds the deadline up to a second)
        assert 300.0 <= summary.failure_latency.min and summary.failure_latency.max <= 301.01   # + handling
        assert summary.request_latency.max <= 301.01


def test_capacity_at_the_measured_pace_matches_the_measured_decode_time(real_path):
    from evaluation.capacity import experiment_load
    from evaluation.latency_metrics import read_lifecycle_report
    from evaluation.predictors import ScaledPredictor

    folder = real_path("blis/experiments/20260218-065057-llama-2-70b-hf-tp4-reasoning")
    meas = read_lifecycle_report(folder / "results" / "summary_lifecycle_metrics.json")
    # a constant step equal to the measured decode pace (2 TPOT ~ 29.5 ms): 128 slots free up every
    # 1,448 decode steps plus the prefill, i.e. 128 / (E2E - TTFT) of the successes
    pace_us = 2e6 * meas.time_per_output_token.mean
    load = experiment_load(folder, ScaledPredictor(Constant(1.0), pace_us))
    implied = 128 / (meas.request_latency.mean - meas.time_to_first_token.mean)
    assert load.capacity.requests_per_s == pytest.approx(implied, rel=0.03)
    assert load.saturated and load.stages[0].offered_requests_per_s == 4.0


def test_seeds_report_the_spread_of_the_errors_over_workload_draws(tmp_path, capsys):
    from features.demo_experiments import law_expression, write_demo_experiments
    from features import catalog

    write_demo_experiments(tmp_path)
    exp = next(p for p in sorted((tmp_path / "blis" / "experiments").iterdir()) if "dense-8b-tp1-chat" in p.name)
    law = FormulaPredictor(law_expression(), tuple(catalog.registry()))
    first = replay_experiment(exp, law, 4, async_scheduling=True)
    spread = with_seed_spread(first, exp, law, 3, async_scheduling=True).seed_spread()
    assert spread["seeds"] == [4, 5, 6]
    assert spread["ttft_err"][0] == pytest.approx(first.errors()["ttft_err"])       # the headline draw is the first
    assert spread["ttft_err"][1] == pytest.approx(replay_experiment(exp, law, 5, async_scheduling=True)
                                                  .errors()["ttft_err"])
    assert len(set(spread["e2e_err"])) == 3                                        # three different draws
    assert spread["min"]["e2e_err"] <= spread["mean"]["e2e_err"] <= spread["max"]["e2e_err"]
    assert first.seed_spread() is None and first.to_json_dict()["seed_spread"] is None
    run = tmp_path / "law.json"
    used = sorted(str(s) for s in law_expression().free_symbols)
    run.write_text(json.dumps({"schema": "stepml-artifact/1", "name": "law",
                               "expression": {"srepr": sympy.srepr(law_expression())},
                               "features": [{"name": f, "definition_srepr":
                                             sympy.srepr(catalog.get_feature(f).sympy_expr())} for f in used]}))
    assert main(["--predictor", str(run), "--experiments", str(exp), "--seed", "4", "--seeds", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["experiments"][exp.name]
    assert doc["seed_spread"]["seeds"] == [4, 5, 6]
    assert doc["seed_spread"]["ttft_err"] == pytest.approx(spread["ttft_err"])
    assert main(["--predictor", str(run), "--experiments", str(exp), "--seeds", "2"]) == 0
    assert "over 2 workload seeds (0-1), error mean [min, max]: E2E" in capsys.readouterr().out
