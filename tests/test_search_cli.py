"""discovery.search and discovery.review as a user runs them (small budgets, demo data)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from discovery import review, search

ROOT = Path(__file__).resolve().parents[1]
from conftest import SMALL_SEARCH as SMALL, run_main as _run


@pytest.fixture(scope="module")
def run_dir(linear_run):
    return linear_run


def test_run_directory_has_pysr_style_hall_of_fame(run_dir):
    hof = pd.read_csv(run_dir / "hall_of_fame.csv")
    assert list(hof.columns[:10]) == ["Complexity", "Loss", "Equation", "score", "val_mape", "test_mape", "mspe",
                                      "n_constants", "sympy", "engine"]
    assert hof["front"].any()
    assert (hof["engine"] == "deap").all()
    front = hof[hof["front"]].sort_values("Complexity")
    assert front["val_mape"].is_monotonic_decreasing
    info = json.loads((run_dir / "run.json").read_text())
    for key in ("space", "data", "data_hash", "target", "split", "seed", "settings", "packages", "wall_s", "generations"):
        assert key in info
    assert info["synthetic"] is True and info["space"] == "linear" and info["seed"] == 3
    assert list(run_dir.glob("*.npz")), "splits are saved beside the run"


def test_linear_space_finds_the_blackbox_shape(run_dir):
    hof = pd.read_csv(run_dir / "hall_of_fame.csv")
    best = hof.loc[hof["val_mape"].idxmin()]
    assert "prefill_tokens" in best["Equation"] and "decode_tokens" in best["Equation"]


def test_same_seed_gives_identical_hall_of_fame(run_dir, tmp_path):
    again = tmp_path / "b"
    assert _run(search.main, ["--space", "linear", "--seed", "3", "--run-dir", str(again)] + SMALL) == 0
    assert (again / "hall_of_fame.csv").read_bytes() == (run_dir / "hall_of_fame.csv").read_bytes()


def test_existing_run_is_never_overwritten(run_dir, capsys):
    before = (run_dir / "hall_of_fame.csv").read_bytes()
    assert _run(search.main, ["--space", "linear", "--run-dir", str(run_dir)] + SMALL) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "hall_of_fame.csv").read_bytes() == before


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    assert _run(search.main, ["--space", "linear", "--resume", "--run-dir", str(tmp_path / "none")] + SMALL) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_review_marks_selections_and_writes_files(run_dir, capsys):
    assert _run(review.main, [str(run_dir)]) == 0
    out = capsys.readouterr().out
    for mark in ("best", "accuracy", "knee"):
        assert mark in out
    assert (run_dir / "pareto.png").stat().st_size > 1000
    assert (run_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (run_dir / "report.md").read_text()
    assert "SYNTHETIC" in text and "| row |" in text


def test_review_of_a_non_run_is_an_error(tmp_path, capsys):
    assert _run(review.main, [str(tmp_path)]) == 2
    assert "hall_of_fame.csv" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--space", "nope"], "valid: dense, moe, roofline, physics, kernel, linear"),
    (["--space", "linear", "--engine", "nope"], "unknown engine 'nope'; valid: deap"),
    (["--space", "linear", "--data", "/no/such/file.parquet"], "data not found"),
    (["--space", "linear", "--split", "bogus"], "unknown split 'bogus'"),
    (["--space", "linear", "--early-stop", "-1"], "--early-stop must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "discovery.search", *argv, "--run-dir", str(tmp_path / "r"), *SMALL],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "r" / "hall_of_fame.csv").exists()


def test_resume_continues_a_run_to_the_same_front(tmp_path):
    """A run stopped after 2 generations and resumed to 4 ends where an uninterrupted 4-generation run does."""
    base = ["--space", "roofline", "--seed", "7", "--population", "24", "--islands", "2", "--budget", "120",
            "--quiet"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _run(search.main, base + ["--generations", "4", "--run-dir", str(straight)]) == 0
    assert _run(search.main, base + ["--generations", "2", "--run-dir", str(stopped)]) == 0
    assert (stopped / "checkpoint.json").exists()
    assert _run(search.main, base + ["--generations", "4", "--run-dir", str(stopped), "--resume"]) == 0
    assert (stopped / "hall_of_fame.csv").read_bytes() == (straight / "hall_of_fame.csv").read_bytes()


def test_a_two_engine_run_checkpoints_both_engines(tmp_path):
    import json

    path = tmp_path / "two"
    argv = ["--space", "linear", "--engine", "deap,operon", "--generations", "2", "--population", "16",
            "--islands", "1", "--budget", "20", "--quiet", "--run-dir", str(path)]
    assert _run(search.main, argv) == 0
    state = json.loads((path / "checkpoint.json").read_text())
    assert set(state) == {"deap", "operon"}
    assert set(pd.read_csv(path / "hall_of_fame.csv")["engine"]) <= {"deap", "operon"}


def test_reloading_a_run_reads_the_split_it_saved(run_dir, tmp_path):
    import numpy as np

    from discovery.formula import saved_split
    from features.errors import StepMLError
    from features.splits import Split, load_splits, save_splits

    info = json.loads((run_dir / "run.json").read_text())
    copy = tmp_path / "run"
    copy.mkdir()
    saved = load_splits(run_dir / info["split_file"])[0]
    n = len(saved.train) + len(saved.val) + len(saved.test)
    with pytest.raises(StepMLError, match="no saved split indices"):
        saved_split(copy, info, n)
    # a different saved split is what a reload uses: it is read, never recomputed
    odd = Split(saved.spec, saved.fold, saved.train[::2], saved.val, saved.test, saved.data_hash)
    save_splits([odd], copy)
    np.testing.assert_array_equal(saved_split(copy, info, n).train, saved.train[::2])
    with pytest.raises(StepMLError, match="no fold 'x'"):
        saved_split(copy, dict(info, fold="x"), n)
    with pytest.raises(StepMLError, match="no saved split indices"):
        saved_split(copy, dict(info, data_hash="0" * 16), n)
    with pytest.raises(StepMLError, match="indexes row"):
        saved_split(copy, info, 10)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be an integer"),
    (["--budget", "nan"], "--budget must be a positive number"),
    (["--population", "1"], "--population must be >= 2"),
    (["--scheduler", "garbage"], "expected a dask scheduler address"),
    (["--split", "bogus"], "unknown split 'bogus'"),
    (["--fold", "x"], "--fold applies to leave-one-out splits"),
    (["--engine", "deap,deap"], "names an engine twice"),
])
def test_bad_arguments_fail_before_anything_is_loaded_or_created(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default run folder would be results/<id>/ here
    assert _run(search.main, ["--space", "linear", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "results").exists()


def test_a_run_dir_that_cannot_be_a_folder_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for run_dir, message in ((blocker, "exists and is not a folder"), (blocker / "sub", "is a file, not a folder")):
        assert _run(search.main, ["--space", "linear", "--run-dir", str(run_dir), *SMALL]) == 2
        assert message in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_an_error_after_the_run_folder_exists_removes_it(tmp_path, monkeypatch, capsys, steps_table, write_table,
                                                       isolated_metadata):
    from discovery import pipeline

    def broken(*args, **kwargs):
        raise pipeline.StepMLError("engine failed")

    monkeypatch.setattr(pipeline, "search_problem", broken)
    data = write_table(tmp_path / "steps.parquet", steps_table({"a": 40, "b": 40}))
    assert _run(search.main, ["--space", "linear", "--data", str(data), "--run-dir", str(tmp_path / "r"), *SMALL]) == 2
    assert "engine failed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
