"""``python -m features.describe`` run as a subprocess on data written here.

Every case is started at once (module fixture) so the suite pays for one Python
start-up, not one per case. ``$STEPML_DATA`` points at an empty folder so the
tmp data is never joined with real metadata.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROG = "features.describe"
MS = 1_000_000

BAD_MAP = """
name = "bad"
[target]
column = "latency_ms"
unit = "ms"
[features]
"batch.scheduled_tokens" = "tokens"
"arch.hidden_size" = "hidden_units"
"""


def _cases(tmp: Path, make_steps, write_otlp, write_table) -> dict[str, list[str]]:
    runs = tmp / "runs"
    write_otlp(runs / "expA" / "traces.json", make_steps(6, cycle_ns=20 * MS))
    write_otlp(runs / "expB" / "traces.json.gz", make_steps(5, cycle_ns=12 * MS, id_step=[1, 2, 1, 1]))
    bad = write_otlp(tmp / "bad" / "traces.json", make_steps(6), per_line=2, insert_lines={3: '{"resourceSpans": '})
    latin = write_otlp(tmp / "latin" / "traces.json", make_steps(4), per_line=2)
    latin.write_bytes(latin.read_bytes() + b"caf\xe9\n")
    (tmp / "corrupt.json.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    table = pd.DataFrame(make_steps(5))
    table.insert(0, "experiment_id", "tbl")
    csv = write_table(tmp / "steps.csv", table)
    dup = table.copy()
    dup.loc[4, "step.id"] = 1
    dup_csv = write_table(tmp / "dup.csv", dup)
    kernels = tmp / "kernels.csv"
    pd.DataFrame({"tokens": [1, 2, 4], "hidden": [8, 8, 8], "latency_ms": [0.1, 0.2, 0.4]}).to_csv(kernels, index=False)
    (tmp / "bad.toml").write_text(BAD_MAP)
    subprocess_cases = {
        "json": ["--data", str(runs), "--json"],
        "missing": ["--data", str(tmp / "absent.parquet")],
        "malformed": ["--data", str(bad)],
        "skip": ["--data", str(bad), "--skip-bad-lines", "--json"],
        "unknown_target": ["--data", str(csv), "--target", "latency"],
        "duplicate": ["--data", str(dup_csv)],
        "colmap_column": ["--data", str(kernels), "--colmap", str(tmp / "bad.toml")],
    }
    in_process_cases = {
        "text": ["--data", str(runs)],
        "duration": ["--data", str(csv), "--target", "duration", "--json"],
        "not_utf8": ["--data", str(latin)],
        "corrupt_gz": ["--data", str(tmp / "corrupt.json.gz")],
        "colmap_name": ["--data", str(kernels), "--colmap", "no_such_map"],
        "bad_max_gap": ["--data", str(csv), "--max-gap", "0"],
    }
    return subprocess_cases, in_process_cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory, make_steps, write_otlp, write_table):
    return _cases(tmp_path_factory.mktemp("describe_cli"), make_steps, write_otlp, write_table)


@pytest.fixture(scope="module")
def results(cases, tmp_path_factory):
    """The subprocess cases, all started at once: name → (exit status, stdout, stderr)."""
    empty = tmp_path_factory.mktemp("no_shared_data")
    env = {**os.environ, "STEPML_DATA": str(empty), "PYTHONDONTWRITEBYTECODE": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", PROG, *args], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in cases[0].items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[name] = (proc.returncode, stdout, stderr)
    return out


@pytest.fixture
def run_in_process(cases, capsys, isolated_metadata):
    """Run ``features.describe`` through :func:`features.cli.run` in this process (cheaper than a subprocess)."""
    from features.cli import run
    from features.describe import main

    def call(name):
        with pytest.raises(SystemExit) as info:
            run(main, cases[1][name], prog=PROG)
        captured = capsys.readouterr()
        return info.value.code, captured.out, captured.err
    return call


def _ok(results, name):
    code, stdout, stderr = results[name]
    assert code == 0, f"{name}: exit {code}, stderr: {stderr}"
    assert "Traceback" not in stderr
    return stdout


def test_json_report_has_the_documented_keys(results):
    rep = json.loads(_ok(results, "json"))
    assert {"rows", "target", "experiments", "features", "excluded"} <= set(rep)
    assert rep["target"] == "target.cycle_us"
    assert rep["rows"] == 5 + 4                               # the last step of each experiment has no cycle
    assert set(rep["experiments"]) == {"expA", "expB"}
    a, b = rep["experiments"]["expA"], rep["experiments"]["expB"]
    assert (a["rows"], a["target_median"], a["target_mean"]) == (5, 20_000.0, 20_000.0)
    assert (b["rows"], b["target_median"], b["target_mean"]) == (4, 12_000.0, 12_000.0)
    assert sum(e["rows"] for e in rep["experiments"].values()) == rep["rows"]
    assert set(rep["excluded"]) == {"step.ts_start_ns", "step.ts_end_ns", "step.duration_us",
                                    "batch.num_finished", "batch.num_preempted"}
    names = {f["name"] for f in rep["features"]}
    assert {"batch_size", "kv_per_req", "num_finished", "rl_weight_load"} <= names
    for feature in rep["features"]:
        assert {"name", "unit", "availability"} <= set(feature)
        assert feature["availability"] in ("simulator", "trace", "leaky")
    by_name = {f["name"]: f for f in rep["features"]}
    assert by_name["num_finished"]["availability"] == "leaky"
    assert by_name["batch_size"]["unit"] == "requests"
    assert rep["synthetic"] is False


def test_text_report(run_in_process):
    code, stdout, stderr = run_in_process("text")
    assert code == 0 and stderr == ""
    assert "expA" in stdout and "expB" in stdout and "target.cycle_us" in stdout
    assert "batch.num_finished" in stdout                     # listed among the excluded columns
    assert "SYNTHETIC" not in stdout


def test_duration_target_on_a_csv_table(run_in_process):
    code, stdout, stderr = run_in_process("duration")
    assert code == 0, stderr
    rep = json.loads(stdout)
    assert rep["target"] == "target.duration_us" and rep["rows"] == 5
    assert rep["experiments"]["tbl"]["target_median"] == 400.0


def test_skip_bad_lines_flag(results):
    rep = json.loads(_ok(results, "skip"))
    assert rep["rows"] == 5             # the bad line is skipped: 6 steps, the last has no cycle time


def _assert_one_line_error(case, code, stdout, stderr, fragment):
    assert code == 2, f"{case}: exit {code}, stderr: {stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{PROG}: error: ")
    assert fragment in lines[0]
    assert stdout == ""


@pytest.mark.parametrize("case, fragment", [
    ("missing", "data not found"),
    ("malformed", "traces.json:3: malformed JSON line"),
    ("unknown_target", "unknown target 'latency'; valid: cycle, duration"),
    ("duplicate", "duplicate step id 1 in experiment tbl"),
    ("colmap_column", "names unknown column(s): hidden_units"),
])
def test_bad_input_is_one_line_with_status_2(results, case, fragment):
    _assert_one_line_error(case, *results[case], fragment)


@pytest.mark.parametrize("case, fragment", [
    ("not_utf8", "traces.json:3: malformed JSON line"),
    ("corrupt_gz", "corrupt.json.gz: cannot read"),
    ("colmap_name", "unknown column map 'no_such_map'"),
    ("bad_max_gap", "max gap must be >= 1, got 0"),
])
def test_more_bad_input_in_process(run_in_process, case, fragment):
    _assert_one_line_error(case, *run_in_process(case), fragment)
