"""Results files a user or somebody else wrote never end in a traceback or a silently wrong result (issue 14).

Hall of fame, ``run.json``, ``artifact.json``, ``test_vectors.csv``, output
folders of ``export`` and ``audit``: fixed examples from the issue run
through the command-line entry points in-process, and properties (hypothesis,
derandomised) on the readers. Cases owned by other modules that still fail are
``xfail(strict=True)`` with the owner as reason: they start passing (and
must lose the mark) when fixed.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy
from hypothesis import given
from hypothesis import strategies as st

from discovery import audit, export, review
from discovery.audit import check_artifact, read_test_vectors
from discovery.rundir import HofRow, hof_csv, read_hof, write_hof
from features.errors import StepMLError

from conftest import fuzz_settings, one_line_error, run_main

FUZZ = fuzz_settings()



def planted(linear_run: Path, tmp_path: Path, expr: str, name: str = "planted") -> Path:
    """A copy of the shared demo run whose only front row is ``expr`` (sympy text, written as srepr)."""
    path = tmp_path / name
    shutil.copytree(linear_run, path)
    parsed = sympy.sympify(expr)  # our own literal formula text, not a file's
    write_hof(path, [HofRow(3, 0.1, str(parsed), 0.0, 10.0, 10.0, 0.0, 1, sympy.srepr(parsed), "deap", True, "x")])
    return path


@pytest.fixture(scope="module")
def exported(linear_run, tmp_path_factory) -> Path:
    """One export of the shared demo run (best row)."""
    out = tmp_path_factory.mktemp("exports") / "ok"
    assert run_main(export.main, [str(linear_run), "--out", str(out), "--name", "ok"]) == 0
    return out


# -- hall of fame and run.json ----------------------------------------------------------------------------

def test_a_truncated_hall_of_fame_is_neither_reviewed_nor_exported(linear_run, tmp_path, capsys):
    run = tmp_path / "cut"
    shutil.copytree(linear_run, run)
    text = (run / "hall_of_fame.csv").read_text()
    (run / "hall_of_fame.csv").write_text(text[: len(text) - 40])                 # cut mid-row
    one_line_error(capsys, run_main(review.main, [str(run)]), "truncated")
    one_line_error(capsys, run_main(export.main, [str(run), "--out", str(tmp_path / "x")]), "truncated")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cell, value, needle", [
    ("Complexity", "abc", "Complexity of row 1 is 'abc', not a whole number >= 0"),
    ("Complexity", "-2", "not a whole number >= 0"),
    ("Complexity", "2.5", "not a whole number >= 0"),
    ("Loss", "low", "Loss of row 1 is 'low', not a number"),
    ("Loss", "", "Loss of row 1 is '', not a number"),
    ("val_mape", "1,5", "val_mape of row 1 is '1,5', not a number"),
    ("front", "maybe", "front of row 1 is 'maybe', not true/false"),
])
def test_hall_of_fame_cells_that_are_not_numbers(tmp_path, capsys, cell, value, needle):
    row = HofRow(3, 0.1, "1 + batch_size", 0.0, 10.0, 10.0, 0.0, 1, "Integer(1)", "deap", True, "x")
    table = pd.read_csv(__import__("io").StringIO(hof_csv([row])), dtype=str, keep_default_na=False)
    table.loc[0, cell] = value
    (tmp_path / "run").mkdir()
    table.to_csv(tmp_path / "run" / "hall_of_fame.csv", index=False)
    with pytest.raises(StepMLError) as info:
        read_hof(tmp_path / "run")
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["[1, 2]", "\"text\"", "{\"a\": 1", ""])
def test_run_json_that_is_not_an_object(linear_run, tmp_path, capsys, content):
    run = tmp_path / "r"
    shutil.copytree(linear_run, run)
    (run / "run.json").write_text(content)
    one_line_error(capsys, run_main(export.main, [str(run), "--out", str(tmp_path / "x")]), "run.json")


def _hof_rows(data) -> list[HofRow]:
    n = data.draw(st.integers(1, 4))
    return [HofRow(data.draw(st.integers(1, 40)), data.draw(st.floats(0, 10)), f"{k} + batch_size",
                   0.0, data.draw(st.floats(0, 100)), 1.0, 0.0, 1, f"Add(Integer({k}), Symbol('batch_size'))",
                   "deap", data.draw(st.booleans()), "p") for k in range(n)]


@FUZZ
@given(data=st.data())
def test_property_hall_of_fame_is_read_exactly_or_refused(tmp_path_factory, data):
    rows = _hof_rows(data)
    text = hof_csv(rows)
    kind = data.draw(st.sampled_from(["cut", "cell", "bytes", "none"]))
    if kind == "cut":
        text = text[: data.draw(st.integers(0, len(text)))]
    elif kind == "cell":
        lines = text.splitlines()
        k = data.draw(st.integers(1, len(lines) - 1))
        cells = lines[k].split(",")
        i = data.draw(st.integers(0, min(len(cells), 8) - 1))
        cells[i] = data.draw(st.text(alphabet="0123456789.-eEinfatrux ,\"", max_size=6))
        lines[k] = ",".join(cells)
        text = "\n".join(lines) + "\n"
    elif kind == "bytes":
        pos = data.draw(st.integers(0, len(text) - 1))
        text = text[:pos] + data.draw(st.text(max_size=3)) + text[pos + 1:]
    run = tmp_path_factory.mktemp("hof")
    (run / "hall_of_fame.csv").write_text(text, encoding="utf-8", errors="replace")
    try:
        table = read_hof(run)
    except StepMLError as exc:
        assert "\n" not in str(exc)
        return
    assert text.endswith("\n")
    assert (table["Complexity"] >= 0).all() and table["Complexity"].dtype == np.int64
    assert table["Loss"].dtype == float
    if kind == "cut":                       # accepted only when cut right after a complete row: a prefix
        kept = len(table)
        assert 1 <= kept <= len(rows)
        assert table["Complexity"].tolist() == [r.complexity for r in rows[:kept]]
        assert table["Loss"].tolist() == [r.loss for r in rows[:kept]]


# -- export ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, needle", [
    ("decode_tokens - prefill_tokens", "zero or negative"),
    ("-decode_tokens", "zero or negative"),
    ("exp(prefill_tokens)", "not a finite number"),
])
def test_export_refuses_a_formula_that_predicts_no_positive_time(linear_run, tmp_path, capsys, expr, needle):
    run = planted(linear_run, tmp_path, expr)
    out = tmp_path / "out"
    one_line_error(capsys, run_main(export.main, [str(run), "--out", str(out)]), needle, "not exported")
    assert not out.exists()


def test_export_output_folder_problems(linear_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("keep")
    one_line_error(capsys, run_main(export.main, [str(linear_run), "--out", str(tmp_path / "file")]),
                   "is an existing file, not a folder")
    one_line_error(capsys, run_main(export.main, [str(linear_run), "--out", str(tmp_path / "file" / "x")]),
                   "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "keep"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if "locked" in str(p) else real_access(p, mode))
    (tmp_path / "locked").mkdir()
    one_line_error(capsys, run_main(export.main, [str(linear_run), "--out", str(tmp_path / "locked" / "x")]),
                   "is not writable")
    assert list((tmp_path / "locked").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the os.access test covers it")
def test_export_into_a_really_read_only_folder(linear_run, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        one_line_error(capsys, run_main(export.main, [str(linear_run), "--out", str(locked / "x")]), "not writable")
    finally:
        locked.chmod(0o755)


def test_a_write_that_fails_midway_is_one_line(linear_run, tmp_path, capsys, monkeypatch):
    """A disk that fills up or a folder that turns read-only during the export: one line, exit 2."""
    import features.io

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "formula.py"))

    monkeypatch.setattr(features.io.os, "open", refuse)
    one_line_error(capsys, run_main(export.main, [str(linear_run), "--out", str(tmp_path / "out")]),
                   "Permission denied", "formula.py")


# -- audit inputs ----------------------------------------------------------------------------------------

def _edit(exported: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(exported, folder)
    doc = json.loads((folder / "artifact.json").read_text())
    change(doc)
    (folder / "artifact.json").write_text(json.dumps(doc))
    return folder


def _set(key, value):
    def change(doc):
        doc[key] = value
    return change


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.pop("metrics"), "artifact lacks 'metrics'"),
    (_set("metrics", "good"), "field 'metrics' must be an object with numeric val_mape"),
    (_set("metrics", {"val_mape": "1%", "test_mape": 2}), "field 'metrics' must be"),
    (_set("constants", ["a"]), "field 'constants' must be a list of numbers"),
    (_set("seed", "x"), "field 'seed' must be an integer or null"),
    (_set("max_gap", 0), "field 'max_gap' must be an integer >= 1"),
    (_set("complexity", True), "field 'complexity' must be an integer"),
    (lambda d: d["expression"].pop("latex"), "'expression.latex' must be a string"),
    (lambda d: d["features"][0].update(unit=3), "field 'unit' must be a string"),
    (lambda d: d.pop("expression"), "'expression' must be an object"),
    (lambda d: d.update(features="prefill_tokens"), "'features' must be a list"),
])
def test_audit_refuses_an_artifact_with_missing_or_garbage_fields(exported, tmp_path, capsys, change, needle):
    folder = _edit(exported, tmp_path, change)
    one_line_error(capsys, run_main(audit.main, [str(folder)]), needle)
    assert not (folder / "AUDIT.md").exists()


def test_audit_refuses_an_artifact_that_is_a_list(exported, tmp_path, capsys):
    folder = tmp_path / "edited"
    shutil.copytree(exported, folder)
    (folder / "artifact.json").write_text("[1, 2]")
    one_line_error(capsys, run_main(audit.main, [str(folder)]), "not a StepML artifact")


@pytest.mark.parametrize("content, needle", [
    ("", "cannot read"),
    ("a,b\n1,2\n", "missing column(s)"),
    (None, "no test vectors"),
    ("\x00\x01garbage\n\"unclosed", "test_vectors.csv"),
    ("nan-row", "not a finite number"),
])
def test_audit_refuses_corrupt_or_empty_test_vectors(exported, tmp_path, capsys, content, needle):
    folder = tmp_path / "edited"
    shutil.copytree(exported, folder)
    vectors = folder / "test_vectors.csv"
    if content is None:
        vectors.write_text(vectors.read_text().splitlines()[0] + "\n")
    elif content == "nan-row":
        lines = vectors.read_text().splitlines()
        lines[1] = ",".join(["nan"] * len(lines[1].split(",")))
        vectors.write_text("\n".join(lines) + "\n")
    else:
        vectors.write_text(content)
    one_line_error(capsys, run_main(audit.main, [str(folder)]), needle)


def test_audit_of_a_read_only_export_folder(exported, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    shutil.copytree(exported, folder)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(folder) else real_access(p, mode))
    one_line_error(capsys, run_main(audit.main, [str(folder)]), "export folder", "is not writable")
    assert not (folder / "AUDIT.md").exists()


@pytest.mark.parametrize("text", ["", "a,b", "Complexity\n", "x" * 50 + "\n1,2,3\n", "\"a\nb\n", "1,2\n3\n"])
def test_broken_test_vectors_are_refused(tmp_path, text):
    path = tmp_path / "test_vectors.csv"
    path.write_text(text)
    with pytest.raises(StepMLError):
        read_test_vectors(path, ["prefill_tokens"])


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 20), st.floats(),
                                     st.text(max_size=6)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=5)


@FUZZ
@given(data=st.data())
def test_property_artifact_fields_are_checked_before_use(exported, data):
    """Every artifact the checks accept can be reported (``audit_md``) without an exception."""
    from discovery.formula import artifact_formula

    doc = json.loads((exported / "artifact.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(doc) + ["metrics.val_mape", "expression.latex", "features.0.unit",
                                                       "rounding.significant_figures", "checks.c"]))
        value = data.draw(json_values)
        node, parts = doc, key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            elif isinstance(node, dict):
                node = node.get(part)
        if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
            node[int(parts[-1])] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
    try:
        artifact_formula(doc, "a.json")
        check_artifact(doc, "a.json")
    except StepMLError as exc:
        assert "\n" not in str(exc)
        return
    inv = {"INV-M-1": {"pass": True, "value": 1.0, "detail": "d"}}
    comp = {"overall": {"formula": {"val": {"mape": 1.0, "mspe": 0.0, "ci": None},
                                    "test": {"mape": 1.0, "mspe": 0.0, "ci": [0.5, 1.5]}}},
            "groups": {}, "wilcoxon_p": {}, "notes": []}
    beyond = {"grid_points": 1, "beyond_training_range": 0, "training_ranges": {}, "prediction_min_us": 1.0,
              "prediction_max_us": 2.0, "prediction_max_beyond_us": None, "training_target_range_us": [1.0, 2.0]}
    assert audit.audit_md(doc, inv, comp, beyond, []).startswith("# Audit")


# -- the README's sequence and file modes --------------------------------------------------------------------

def test_the_readme_export_then_audit_with_relative_default_paths(linear_run, tmp_path, monkeypatch, capsys):
    """``python -m discovery.export`` then ``python -m discovery.audit`` from the project folder, no arguments."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(linear_run, Path("results") / "20260101-000000-linear-seed3")
    old = os.umask(0o022)
    try:
        assert run_main(export.main, []) == 0
        folder = Path("exported") / "20260101-000000-linear-seed3-best"
        assert (folder / "artifact.json").is_file()
        capsys.readouterr()
        code = run_main(audit.main, ["--json"])
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    assert "formula.py failed to run" not in captured.err and "Traceback" not in captured.err
    result = json.loads(captured.out)
    assert result["invariants"]["INV-M-3"]["value"]["created_files"] == []      # formula.py ran, from a temp folder
    assert (folder / "AUDIT.md").is_file()
    for file in folder.iterdir():                                               # readable by others, as open() makes
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


# -- cases owned by other modules (strict xfail: they pass when fixed) ------------------------------------------

@pytest.mark.parametrize("deep", ["batch_size" + "**batch_size" * 3000, "(" * 200 + "batch_size" + ")" * 200 + "x"],
                         ids=["power-chain", "brackets"])
def test_a_deeply_nested_hall_of_fame_formula_is_one_line(linear_run, tmp_path, capsys, deep):
    run = tmp_path / "deep"
    shutil.copytree(linear_run, run)
    write_hof(run, [HofRow(3, 0.1, deep, 0.0, 10.0, 10.0, 0.0, 1, deep, "deap", True, "x")])
    one_line_error(capsys, run_main(export.main, [str(run), "--out", str(tmp_path / "x")]), "cannot parse")


def _tiny_experiment(root: Path, results: bool = True) -> Path:
    import yaml

    exp = root / "exp"
    exp.mkdir(parents=True)
    (exp / "exp-config.yaml").write_text(yaml.safe_dump({"model": "tiny/model", "tensor_parallelism": 1,
                                                         "max_model_len": 256, "max_num_batched_tokens": 256,
                                                         "max_num_seqs": 8}))
    profile = {"api": {"streaming": True}, "data": {"type": "shared_prefix", "shared_prefix": {
        "num_groups": 2, "num_prompts_per_group": 3, "system_prompt_len": 10, "question_len": 10, "output_len": 3}},
        "load": {"type": "constant", "stages": [{"rate": 1.0, "duration": 1.0}]}}
    (exp / "profile.yaml").write_text(json.dumps(profile))
    return exp


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--seeds", "0")])
def test_replay_with_a_bad_seed_is_one_line(flag, value, exported, tmp_path, capsys, isolated_metadata):
    from evaluation import replay

    exp = _tiny_experiment(tmp_path)
    one_line_error(capsys, run_main(replay.main, ["--predictor", str(exported / "artifact.json"),
                                                  "--experiments", str(exp), flag, value]), f"{flag} must be >= ")


def test_replay_of_an_experiment_without_results_says_so(exported, real_path, tmp_path, capsys):
    """No results/: a prediction, with notes saying nothing was measured and why requests are rejected."""
    from evaluation import replay

    source = next(real_path("blis/experiments").glob("*llama-2-70b-tp4-general"))
    exp = tmp_path / source.name
    shutil.copytree(source, exp, ignore=shutil.ignore_patterns("results"))
    code = run_main(replay.main, ["--predictor", str(exported / "artifact.json"), "--experiments", str(exp),
                                  "--json"])
    out = capsys.readouterr()
    assert code == 0 and "input_tokens" not in out.err, out.err
    notes = json.loads(out.out)["experiments"][source.name]["notes"]
    assert any("no results/" in n for n in notes)
    assert any("exceed max_model_len" in n and "rejected" in n for n in notes)


def test_a_request_trace_whose_token_count_is_text(tmp_path, capsys, request_span, write_request_trace):
    from features.otlp import read_request_spans

    spans = [request_span(f"r{k}", 1_700_000_000_000_000_000 + k * 10 ** 8, ttft=0.02, e2e=0.1, prompt=20,
                          completion=4) for k in range(4)]
    spans[2]["attributes"] = [a if a["key"] != "gen_ai.usage.prompt_tokens" else
                              {"key": a["key"], "value": {"stringValue": "twenty"}} for a in spans[2]["attributes"]]
    trace = write_request_trace(tmp_path / "t" / "traces.json", spans)
    with pytest.raises(StepMLError, match=r"llm_request span #3 has prompt_tokens 'twenty', not a whole number"):
        read_request_spans(trace)
    spans[2]["attributes"] = [a if a["key"] != "gen_ai.usage.prompt_tokens" else
                              {"key": a["key"], "value": {"doubleValue": 20.5}} for a in spans[2]["attributes"]]
    with pytest.raises(StepMLError, match=r"prompt_tokens 20\.5, not a whole number"):
        read_request_spans(write_request_trace(tmp_path / "u" / "traces.json", spans))


def test_audit_reports_on_a_formula_that_is_infinite_or_nan_somewhere(tmp_path):
    """A hand-edited artifact may predict inf or NaN on part of the data: plots and ranges still come out."""
    from features.dataset import load_dataset
    from features.splits import temporal_split

    dataset = load_dataset(None)
    split = temporal_split(dataset.frame)

    class Broken:
        name = "broken"

        def predict(self, columns):
            n = len(columns["batch.prefill_tokens"])
            out = np.full(n, 15000.0)
            out[::7], out[3::7] = np.inf, np.nan
            return out

    from features.io import json_safe

    assert audit.plots(tmp_path, Broken(), dataset, split) == ["residuals.png", "residuals_batch.png"]
    assert (tmp_path / "residuals.png").stat().st_size > 1000
    beyond = json_safe(audit.outside_range(Broken(), dataset, split))
    assert json.loads(json.dumps(beyond))["prediction_max_us"] is None          # inf/NaN reported as unknown
