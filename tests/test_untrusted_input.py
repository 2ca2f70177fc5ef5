"""Files other people wrote never run code: hall of fame, artifact, PySR table, checkpoint, formula.py, names.

Each test plants a payload that would create a marker file if it ran, feeds
it to the command a user would run, and asserts a one-line refusal (exit 2)
or a verdict, and that the marker was never created.
"""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sympy

from discovery import audit, export, review, search
from discovery.rundir import HofRow, hof_csv, write_hof
from features.errors import StepMLError
from search_spaces.expressions import parse_expression
from search_spaces.operators import parse_formula

from conftest import SMALL_SEARCH
from conftest import run_main as _run

ROOT = Path(__file__).resolve().parents[1]


def _payloads(marker: Path) -> list[str]:
    m = str(marker)
    return [
        f"__import__('os').system('touch {m}')",
        f"Symbol('x') + __import__('os').system('touch {m}')",
        f"Float(__import__('os').system('touch {m}'))",
        f"(lambda: __import__('os').system('touch {m}'))()",
        f"().__class__.__base__.__subclasses__()",
        f"open('{m}', 'w').write('x')",
        f"Symbol('x); system(\"touch {m}\"); (')",
        f"exec(\"import os; os.system('touch {m}')\")",
        "batch_size[0]",
        "9**9**9**9",
        "Pow(Integer(10), Integer(100000000))",
        "x if 1 else 2",
    ]


@pytest.mark.parametrize("k", range(12))
def test_the_parser_refuses_code_and_never_runs_it(k, tmp_path):
    marker = tmp_path / "pwned"
    text = _payloads(marker)[k]
    with pytest.raises(StepMLError) as exc:
        parse_formula(text, ["batch_size"], indexed=False)
    assert "\n" not in str(exc.value)
    assert not marker.exists()


def test_srepr_and_infix_round_trip_exactly():
    x, y = sympy.symbols("batch_size kv_tokens")
    expr = (768.0 * sympy.sqrt(sympy.Abs(x)) + 13830 - sympy.Max(x, y, 3) / y + sympy.log(1 + sympy.Abs(x))
            + x ** -2 + sympy.Rational(1, 3) + sympy.Float(1e300) * y)
    assert parse_formula(sympy.srepr(expr), ["batch_size", "kv_tokens"]) == expr
    assert parse_formula("max(x0, 2.5)^2 - neg(x1)", ["batch_size", "kv_tokens"]) == sympy.Max(x, 2.5) ** 2 + y


def test_symbol_names_are_dotted_identifiers_only():
    assert parse_expression("Symbol('batch.prefill_tokens') * 2", sympy.Symbol) == 2 * sympy.Symbol(
        "batch.prefill_tokens")
    for bad in ("Symbol('a b')", "Symbol('1x')", "Symbol('a..b')", "Symbol('x;y')"):
        with pytest.raises(StepMLError):
            parse_expression(bad, sympy.Symbol)


def _planted_run(linear_run: Path, tmp_path: Path, sympy_cell: str, equation: str = "1.0 + batch_size") -> Path:
    path = tmp_path / "planted"
    shutil.copytree(linear_run, path)
    write_hof(path, [HofRow(3, 0.1, equation, 0.0, 10.0, 10.0, 0.0, 1, sympy_cell, "deap", True, "planted")])
    return path


@pytest.mark.parametrize("column", ["sympy", "Equation"])
def test_a_planted_hall_of_fame_is_refused_by_review_and_export(column, linear_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[0]
    cell = payload if column == "sympy" else ""
    path = _planted_run(linear_run, tmp_path, cell, payload if column == "Equation" else "x")
    assert _run(export.main, [str(path), "--out", str(tmp_path / "x")]) == 2
    assert "cannot parse" in capsys.readouterr().err
    exp = sorted((ROOT / "tests").glob("*"))[0]  # any path; the formula is parsed before replaying
    proc = subprocess.run([sys.executable, "-m", "discovery.review", str(path), "--experiments", str(exp)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "cannot parse" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "x" / "artifact.json").exists()


def test_a_planted_pysr_table_is_refused_on_import(tmp_path, capsys):
    marker = tmp_path / "pwned"
    table = tmp_path / "hall_of_fame.csv"
    pd.DataFrame({"Complexity": [1], "Loss": [0.1], "Equation": [_payloads(marker)[0]]}).to_csv(table, index=False)
    argv = ["--space", "linear", "--import-pysr", str(table), "--run-dir", str(tmp_path / "r"), "--quiet"]
    assert _run(search.main, argv) == 2
    assert "cannot parse" in capsys.readouterr().err
    assert not marker.exists()


def test_a_planted_artifact_is_refused_by_audit_and_replay(linear_run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _run(export.main, [str(linear_run), "--out", str(out), "--name", "ok"]) == 0
    marker = tmp_path / "pwned"
    doc = json.loads((out / "artifact.json").read_text())
    for key in ("expression", "definition"):
        bad = json.loads(json.dumps(doc))
        if key == "expression":
            bad["expression"]["srepr"] = _payloads(marker)[0]
        else:
            bad["features"][0]["definition_srepr"] = _payloads(marker)[1]
        (out / "artifact.json").write_text(json.dumps(bad))
        capsys.readouterr()
        assert _run(audit.main, [str(out)]) == 2
        assert "cannot parse" in capsys.readouterr().err
    assert not marker.exists()


def test_audit_never_runs_an_edited_formula_py(linear_run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _run(export.main, [str(linear_run), "--out", str(out), "--name", "ok"]) == 0
    marker = tmp_path / "pwned"
    source = (out / "formula.py").read_text()
    (out / "formula.py").write_text(source + f"\n__import__('pathlib').Path({str(marker)!r}).touch()\n")
    capsys.readouterr()
    assert _run(audit.main, [str(out), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["invariants"]["INV-M-3"]["pass"] is False
    assert "not run" in result["invariants"]["INV-M-3"]["detail"]
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_checkpoint_is_never_loaded(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "checkpoint.pkl").write_bytes(pickle.dumps({"deap": _Payload(str(marker))}))
    argv = ["--space", "linear", "--run-dir", str(run_dir), "--resume"] + SMALL_SEARCH
    assert _run(search.main, argv) == 2
    assert "pickle" in capsys.readouterr().err
    assert not marker.exists()
    assert _run(search.main, ["--space", "linear", "--run-dir", str(run_dir)] + SMALL_SEARCH) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["[1, 2]", "{\"deap\": [1]}", "not json", "{\"deap\": {\"version\": 1}}"])
def test_a_malformed_checkpoint_is_one_line(content, linear_run, tmp_path, capsys):
    run_dir = tmp_path / "r"
    shutil.copytree(linear_run, run_dir)
    (run_dir / "checkpoint.json").write_text(content)
    argv = ["--space", "linear", "--seed", "3", "--run-dir", str(run_dir), "--resume"] + SMALL_SEARCH
    assert _run(search.main, argv) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err or "resume state" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", "x y"])
def test_export_names_are_one_path_component(name, linear_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_parent = tmp_path / "exported"
    assert _run(export.main, [str(linear_run), "--name", name]) == 2
    assert "--name" in capsys.readouterr().err
    assert not out_parent.exists()


def test_three_argument_max_exports_agree_and_never_write_their_inputs(linear_run, tmp_path):
    """The export bug: numpy.maximum(a, b, c) takes c as its output array."""
    path = tmp_path / "max3"
    shutil.copytree(linear_run, path)
    expr = sympy.sympify("12.0*Max(prefill_tokens, decode_tokens, 25.0) + 9000.0 + 3.0*prefill_tokens/decode_tokens")
    write_hof(path, [HofRow(9, 0.1, str(expr), 0.0, 10.0, 10.0, 0.0, 3, sympy.srepr(expr), "deap", True, "hand")])
    out = tmp_path / "out"
    assert _run(export.main, [str(path), "--out", str(out), "--round", "0"]) == 0
    import importlib.util

    spec = importlib.util.spec_from_file_location("max3_formula", out / "formula.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vectors = pd.read_csv(out / "test_vectors.csv")
    feats = [c for c in vectors.columns if c != "expected_us"]
    columns = {k: vectors[k].to_numpy(dtype=float).copy() for k in feats}
    columns["decode_tokens"][:3] = 0.0  # protected division, as in the search
    before = {k: v.copy() for k, v in columns.items()}
    one = np.array([module.predict(**{k: float(columns[k][i]) for k in feats}) for i in range(len(vectors))])
    many = module.predict_array(columns)
    np.testing.assert_allclose(many, one, rtol=1e-12)
    for k in feats:
        np.testing.assert_array_equal(columns[k], before[k])
    from search_spaces.numeric import lambdify_formula

    doc = json.loads((out / "artifact.json").read_text())
    exported = parse_formula(doc["expression"]["srepr"], feats)
    np.testing.assert_allclose(lambdify_formula(exported, feats)(columns), one, rtol=1e-12)


def test_hof_csv_quotes_cells_so_a_formula_cannot_add_columns():
    row = HofRow(1, 0.1, 'a,"b"\nc', 0.0, 1.0, 1.0, 0.0, 0, "Integer(1)", "deap", True, "p")
    table = pd.read_csv(__import__("io").StringIO(hof_csv([row])))
    assert table.loc[0, "Equation"] == 'a,"b"\nc' and len(table) == 1
