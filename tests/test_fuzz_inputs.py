"""Bad and odd data never ends in a traceback or in a silently wrong result (issue 14).

Two kinds of tests, run in-process through the command-line entry points
(:func:`conftest.run_main`) or the loaders they call:

- fixed examples: every "Tracebacks seen" and "Silently wrong" case of the
  issue that concerns loading data, column maps, hardware and baselines, each
  ending in one ``error:`` line and exit status 2, or accepted with a
  ``warning:`` on stderr and correct values;
- properties (hypothesis, derandomised so every run checks the same cases):
  random OTLP attribute values, column-map documents, derived-column
  expressions and command lines. Each example either raises
  :class:`StepMLError` (one line) or gives values equal to an oracle computed
  independently here. Any other exception fails the test: that is a traceback
  a user would see.

Results files (hall of fame, artifact, test vectors, export and audit) are
fuzzed in ``test_fuzz_results.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from evaluation import baselines
from features import describe
from features.colmap import TOP_KEYS, UNIT_TO_US, apply_colmap, evaluate_derived, parse_colmap, parse_derived
from features.dataset import load_dataset, read_steps_path
from features.errors import StepMLError
from features.schema import BATCH_SUMMARY_COLUMNS, NON_NEGATIVE_COLUMNS, check_values, coerce_columns

from conftest import (FUZZ_EXAMPLES as EXAMPLES, fuzz_settings, make_steps, one_line_error, otlp_line, run_main,
                      step_span, steps_table, write_table)

FUZZ = fuzz_settings()



@pytest.fixture(autouse=True)
def _no_shared_metadata(isolated_metadata):
    """Generated data never joins the real metadata."""


# -- OTLP step traces -------------------------------------------------------------------------------------

def otlp_folder(root: Path, key: str | None = None, value: object = None, row: int = 1, n: int = 8,
                rows: list[dict] | None = None) -> Path:
    """A folder ``root/exp/traces.json`` of ``n`` steps whose event ``row`` has ``key`` set to the AnyValue ``value``."""
    rows = rows or make_steps(n)
    span = step_span(rows)
    if key is not None:
        attributes = span["events"][row]["attributes"]
        for attribute in attributes:
            if attribute["key"] == key:
                attribute["value"] = value
                break
        else:
            attributes.append({"key": key, "value": value})
    path = root / "exp" / "traces.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(otlp_line([span]) + "\n")
    return root


@pytest.mark.parametrize("key, value, needle", [
    ("batch.decode_tokens", {"intValue": "99999999999999999999"}, "outside the int64 range"),
    ("batch.decode_tokens", {"intValue": 1.5}, "intValue 1.5 is not an integer"),
    ("batch.decode_tokens", {"intValue": "1.5"}, "intValue '1.5' is not an integer"),
    ("batch.decode_tokens", {"intValue": True}, "is a boolean, not an integer"),
    ("batch.decode_tokens", {"boolValue": True}, "holds the boolean True, not a number"),
    ("batch.decode_tokens", {"doubleValue": 1e300}, "beyond the int64 range"),
    ("batch.decode_tokens", {"doubleValue": 2.5}, "must hold integers"),
    ("batch.decode_tokens", {"intValue": "-3"}, "'batch.decode_tokens' has 1 negative value(s), first -3.0"),
    ("kv.usage_gpu_ratio", {"doubleValue": -0.2}, "'kv.usage_gpu_ratio' has 1 outside [0, 1] value(s)"),
    ("kv.usage_gpu_ratio", {"doubleValue": "NaN"}, "'kv.usage_gpu_ratio' has 1 non-finite value(s)"),
    ("batch.decode_tokens", {"stringValue": "three"}, "column 'batch.decode_tokens' is not int"),
    ("batch.decode_tokens", {"doubleValue": [1]}, "doubleValue [1] is not a number"),
    ("batch.decode_tokens", {"boolValue": "yes"}, "boolValue 'yes' is not true or false"),
    ("batch.decode_tokens", {"arrayValue": 3}, "arrayValue has no 'values' list"),
    ("batch.decode_tokens", "29", "is not an OTLP AnyValue object"),
])
def test_otlp_values_are_checked_never_coerced(tmp_path, capsys, key, value, needle):
    folder = otlp_folder(tmp_path, key, value)
    one_line_error(capsys, run_main(describe.main, ["--data", str(folder)]), needle)


def test_every_batch_empty_is_refused(tmp_path, capsys):
    rows = make_steps(8)
    for r in rows:
        r.update({"batch.prefill_tokens": 0, "batch.decode_tokens": 0, "batch.scheduled_tokens": 0})
    folder = otlp_folder(tmp_path, rows=rows)
    one_line_error(capsys, run_main(describe.main, ["--data", str(folder)]), "every batch of experiment 'exp' is empty")


def test_skip_bad_lines_says_how_many(tmp_path, capsys):
    folder = otlp_folder(tmp_path)
    trace = folder / "exp" / "traces.json"
    trace.write_text(trace.read_text() + "{not json\n\n[1, 2]\n")
    assert run_main(describe.main, ["--data", str(folder), "--json"]) == 2
    assert "use --skip-bad-lines" in capsys.readouterr().err
    assert run_main(describe.main, ["--data", str(folder), "--skip-bad-lines", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"warning: {trace}: skipped 2 malformed line(s) of 3 (--skip-bad-lines)" in captured.err
    assert json.loads(captured.out)["rows"] == 7


def test_step_table_rows_without_an_experiment_are_refused(tmp_path, capsys):
    table = steps_table({"a": 6, "b": 6})
    table.loc[3, "experiment_id"] = None
    path = write_table(tmp_path / "s.csv", table)
    one_line_error(capsys, run_main(describe.main, ["--data", str(path)]),
                   "column 'experiment_id' has 1 missing values (first at row 3)")


def _set(column: str, value: object):
    def change(table: pd.DataFrame) -> pd.DataFrame:
        table = table.astype({column: object})
        table.loc[2, column] = value
        return table.astype({column: type(value)})
    return change


@pytest.mark.parametrize("change, needle", [
    (_set("batch.prefill_tokens", 1e300), "'batch.prefill_tokens' row 2 has 1e+300, beyond the int64 range"),
    (_set("batch.prefill_tokens", -100), "'batch.prefill_tokens' has 1 negative value(s)"),
    (lambda t: t.assign(**{"batch.decode_tokens": t.index % 2 == 0}), "'batch.decode_tokens' holds booleans"),
    (_set("kv.usage_gpu_ratio", 1.5), "'kv.usage_gpu_ratio' has 1 outside [0, 1] value(s)"),
    (_set("step.id", float("inf")), "'step.id' must hold integers"),
    (lambda t: t.assign(**{"queue.waiting_depth": "deep"}), "'queue.waiting_depth' is not int"),
])
def test_step_table_values_are_checked(tmp_path, capsys, change, needle):
    path = write_table(tmp_path / "s.parquet", change(steps_table({"a": 6, "b": 6})))
    one_line_error(capsys, run_main(describe.main, ["--data", str(path)]), needle)


def test_a_target_of_any_numeric_column_and_unknown_ones(tmp_path, capsys):
    path = write_table(tmp_path / "s.csv", steps_table({"a": 8, "b": 8}).assign(my_time=7.0))
    assert run_main(describe.main, ["--data", str(path), "--target", "my_time", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target_median"] == 7.0
    line = one_line_error(capsys, run_main(describe.main, ["--data", str(path), "--target", "latency"]),
                          "unknown target 'latency'; valid: cycle, duration, or a numeric column:")
    assert "my_time" in line


# -- OTLP attribute values, property-based ---------------------------------------------------------------

INT64 = 2 ** 63
_clean = st.integers(0, 10 ** 6)
any_value = st.one_of(
    st.builds(lambda v: {"intValue": v}, _clean), st.builds(lambda v: {"intValue": str(v)}, _clean),
    st.builds(lambda v: {"doubleValue": float(v)}, _clean),
    st.builds(lambda v: {"intValue": v}, st.integers(-(2 ** 70), 2 ** 70)),
    st.builds(lambda v: {"intValue": str(v)}, st.integers(-(2 ** 70), 2 ** 70)),
    st.builds(lambda v: {"intValue": v}, st.one_of(st.floats(allow_nan=True), st.booleans(), st.text(max_size=8),
                                                   st.none())),
    st.builds(lambda v: {"doubleValue": v}, st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                                      st.integers(-(2 ** 70), 2 ** 70), st.booleans(),
                                                      st.sampled_from(["NaN", "Infinity", "1e3", "x", ""]))),
    st.builds(lambda v: {"boolValue": v}, st.one_of(st.booleans(), st.integers(0, 2), st.text(max_size=3))),
    st.builds(lambda v: {"stringValue": v}, st.one_of(st.text(max_size=8), st.sampled_from(["12", "-1", "1e400"]))),
    st.builds(lambda v: {"arrayValue": v}, st.one_of(st.none(), st.integers(), st.just({"values": [{"intValue": 1}]}))),
    st.one_of(st.just({}), st.integers(), st.text(max_size=5), st.none()),
)


def _intended(value: object) -> float | None:
    """The number an AnyValue clearly states (None when it states none)."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (kind, raw), = value.items()
    if isinstance(raw, bool) or kind == "boolValue":
        return None
    if kind == "intValue":
        if isinstance(raw, int) or (isinstance(raw, str) and raw.lstrip("-").isdigit()):
            return float(int(raw))
        if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
            return raw
        return None
    if kind in ("doubleValue", "stringValue") and isinstance(raw, (int, float, str)):
        try:
            return float(raw)
        except (ValueError, OverflowError):
            return None
    return None


@FUZZ
@given(key=st.sampled_from(["batch.decode_tokens", "batch.prefill_tokens", "queue.waiting_depth",
                            "kv.usage_gpu_ratio", "step.ts_end_ns", "kv.blocks_total_gpu"]), value=any_value)
def test_property_otlp_values_are_kept_exactly_or_refused(tmp_path_factory, key, value):
    folder = otlp_folder(tmp_path_factory.mktemp("otlp"), key, value, row=2)
    try:
        frame = coerce_columns(read_steps_path(folder), "t")
        check_values(frame, "t")
    except StepMLError as exc:
        event("refused")
        assert "\n" not in str(exc)
        clean = isinstance(value, dict) and isinstance(value.get("intValue"), int) and \
            not isinstance(value.get("intValue"), bool) and 0 <= value["intValue"] < 2 ** 53 and len(value) == 1
        assert not (clean and key != "kv.usage_gpu_ratio"), f"a valid count was refused: {exc}"
        return
    event("accepted")
    got = float(frame[key].iloc[2])
    want = _intended(value)
    assert want is not None, f"{value!r} was read as {got}"
    assert got == want, (value, got)
    if key in NON_NEGATIVE_COLUMNS:
        assert got >= 0
    if BATCH_SUMMARY_COLUMNS[key] == "int":
        assert got == int(got) and abs(got) < INT64


# -- column maps, property-based -------------------------------------------------------------------------

TABLE = pd.DataFrame({"tokens": [1, 2, 4, 8, 16, 32], "hidden": [4096, 4096, 8192, 8192, 4096, 8192],
                      "dtype": ["bf16", "bf16", "fp8", "bf16", "bf16", "bf16"],
                      "ms": [0.5, 0.25, 0.125, 2.0, 4.0, 8.0], "us": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
BASE_MAP = {"name": "fuzz", "group_columns": ["dtype"], "experiment": "{dtype}",
            "target": {"column": "ms", "unit": "ms"},
            "features": {"batch.scheduled_tokens": "tokens", "arch.hidden_size": {"column": "hidden", "scale": 2}},
            "derived": {"shape": "{hidden}x{tokens}", "work": "tokens * hidden"},
            "filters": {"dtype": ["bf16", "fp8"]}, "constants": {"arch.num_layers": 1}}

toml_value = st.recursive(
    st.one_of(st.text(max_size=12), st.integers(-5, 10 ** 6), st.floats(allow_nan=True, allow_infinity=True),
              st.booleans(), st.sampled_from(["tokens", "hidden", "ms", "us", "dtype", "{tokens}", "tokens*2",
                                              "batch.scheduled_tokens", "arch.num_layers", "h100", "a100"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["column", "columns", "unit", "scale", "x",
                                                             "batch.prefill_tokens", "hw.flops", "tokens"]),
                                            inner, max_size=3)),
    max_leaves=6)
paths = st.lists(st.sampled_from(list(TOP_KEYS) + ["colum", "unit", "scale", "column", "tokens",
                                                   "batch.decode_tokens", "arch.tp", "hw.hbm_bw", "kind"]),
                 min_size=1, max_size=2)


def _mutate(doc: dict, path: list[str], value: object, delete: bool) -> dict:
    out = json.loads(json.dumps(doc))
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


@FUZZ
@given(mutations=st.lists(st.tuples(paths, toml_value, st.booleans()), max_size=3))
def test_property_column_maps_are_applied_exactly_or_refused(mutations):
    doc = BASE_MAP
    for path, value, delete in mutations:
        doc = _mutate(doc, path, value, delete)
    try:
        cmap = parse_colmap(doc, "fuzz.toml")
        out = apply_colmap(TABLE, cmap, "t.csv")
    except StepMLError as exc:
        event("refused")
        assert "\n" not in str(exc)
        return
    event("accepted")
    assert set(doc) <= set(TOP_KEYS)                                         # no key silently ignored
    if all(c in TABLE.columns for c in cmap.filters):
        keep = np.ones(len(TABLE), dtype=bool)
        for column, allowed in cmap.filters.items():
            keep &= TABLE[column].isin(allowed).to_numpy()
        rows = TABLE.loc[keep].reset_index(drop=True)
        for canonical, column in cmap.features.items():
            if column in rows.columns:
                expected = pd.to_numeric(rows[column]).to_numpy(float) * cmap.units.get(canonical, 1.0)
                np.testing.assert_array_equal(out[canonical].to_numpy(float), expected)
        expected = sum(pd.to_numeric(rows[c]).to_numpy(float) for c in cmap.target) * UNIT_TO_US[cmap.target_unit]
        np.testing.assert_array_equal(out["target.value_us"].to_numpy(float), expected)
    for name, value in cmap.constants.items():
        assert (out[name] == value).all()


# -- derived-column expressions, property-based ---------------------------------------------------------

COLUMNS = {"a": np.array([1.0, 2.0, 0.5, 7.0]), "b": np.array([3.0, 0.0, -2.0, 1e3]), "c d": np.array([4.0, 1.0, 9.0, 2.0])}
_FUNCS = {"max": np.maximum, "min": np.minimum, "abs": np.abs, "sqrt": np.sqrt, "log": np.log, "exp": np.exp}


def _leaf():
    return st.one_of(st.sampled_from([("col", "a"), ("col", "b"), ("col", "c d")]),
                     st.builds(lambda v: ("num", v), st.sampled_from([0.0, 1.0, 2.0, 0.5, 3.25, 10.0, 1e3])))


trees = st.recursive(_leaf(), lambda inner: st.one_of(
    st.tuples(st.sampled_from(["+", "-", "*", "/"]), inner, inner),
    st.tuples(st.sampled_from(["max", "min"]), inner, inner),
    st.tuples(st.sampled_from(["abs", "sqrt", "log", "exp", "neg"]), inner),
    st.tuples(st.just("**"), inner, st.sampled_from([2, 3, -1, 0.5]))), max_leaves=8)


def _render(node) -> str:
    kind = node[0]
    if kind == "col":
        return node[1] if node[1].isidentifier() else f"Symbol('{node[1]}')"
    if kind == "num":
        return repr(node[1])
    if kind in "+-*/":
        return f"({_render(node[1])} {kind} {_render(node[2])})"
    if kind == "**":
        return f"({_render(node[1])}) ** {node[2]!r}"
    if kind == "neg":
        return f"-({_render(node[1])})"
    return f"{kind}({', '.join(_render(a) for a in node[1:])})"


def _value(node) -> tuple[np.ndarray, float]:
    """numpy value of a tree and the largest magnitude seen on the way (for the rounding tolerance)."""
    with np.errstate(all="ignore"):
        kind = node[0]
        if kind == "col":
            v = COLUMNS[node[1]]
            return v, float(np.max(np.abs(v)))
        if kind == "num":
            return np.full(4, node[1]), abs(node[1])
        if kind == "**":
            base, m = _value(node[1])
            v = np.power(base, float(node[2]))
        elif kind in ("neg", "abs", "sqrt", "log", "exp"):
            arg, m = _value(node[1])
            v = -arg if kind == "neg" else _FUNCS[kind](arg)
        else:
            (x, mx), (y, my) = _value(node[1]), _value(node[2])
            m = max(mx, my)
            v = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}.get(kind, _FUNCS.get(kind))(x, y)
        finite = np.abs(v[np.isfinite(v)])
        return v, max(m, float(finite.max()) if finite.size else 0.0)


@FUZZ
@given(tree=trees)
def test_property_derived_expressions_match_numpy_or_are_refused(tree):
    text = _render(tree)
    expected, magnitude = _value(tree)
    table = pd.DataFrame(COLUMNS)
    try:
        got = evaluate_derived(parse_derived(text, table.columns), table, "t", "derived")
    except StepMLError as exc:
        event("refused")
        assert "\n" not in str(exc)
        # refused only when the value is not a finite number somewhere (or too large an exponent for the parser)
        assert not np.isfinite(expected).all() or "cannot parse" in str(exc) or "not finite" in str(exc), (text, exc)
        return
    event("accepted")
    assert np.isfinite(got).all()
    ok = np.isfinite(expected)            # sympy may cancel a removable singularity (a*b/b): compare the rest
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-9, atol=1e-9 * max(magnitude, 1.0))


PAYLOAD_PIECES = ["__import__('os').system('touch {m}')", "open('{m}','w')", "exec('x')", "a.__class__",
                  "lambda: 1", "[a][0]", "a if b else c", "f'{a}'", "a; b", "a\nb", "`a`", "$a", "a @ b", "a // b",
                  "a % b", "a < b", "not a", "a and b", "(a, b)", "{a: b}", "Symbol('x; y')", "Float('nan')",
                  "9**9**9", "a" * 300, "(" * 200 + "a" + ")" * 200]


@FUZZ
@given(pieces=st.lists(st.one_of(st.sampled_from(PAYLOAD_PIECES), st.text(max_size=6),
                                 st.sampled_from(["a", "b", "+", "*", "(", ")", ",", "max", "1e308", "1e-320"])),
                       min_size=1, max_size=5))
def test_property_expression_text_never_runs_code(tmp_path_factory, pieces):
    marker = tmp_path_factory.mktemp("payload") / "pwned"
    text = "".join(pieces).replace("{m}", str(marker))
    table = pd.DataFrame(COLUMNS)
    try:
        values = evaluate_derived(parse_derived(text, table.columns), table, "t", "derived")
    except StepMLError as exc:
        assert "\n" not in str(exc)
    else:
        assert np.isfinite(values).all() and values.shape == (4,)
    assert not marker.exists()


# -- column maps, hardware and several files through the CLI ------------------------------------------------

KERNELS = pd.DataFrame({"tokens": np.arange(1, 9) * 16, "batch": [1, 2, 1, 2, 1, 2, 1, 2],
                        "kv_len": np.arange(8) * 10 + 5, "ms": np.linspace(0.1, 0.8, 8), "gpu": "h100"})


@pytest.fixture
def kernels(tmp_path) -> Path:
    return write_table(tmp_path / "kernels.csv", KERNELS)


@pytest.mark.parametrize("body, needle", [
    ('target = "ms"\n', "[target] must be a table"),
    ('features = ["tokens"]\n[target]\ncolumn = "ms"\n', "[features] must be a table"),
    ('[target\ncolumn = "ms"\n', "malformed TOML"),
    ('[target]\ncolumn = "ms"\n[derived]\ntokens2 = ["tokens"]\n', "[derived] 'tokens2' must be a non-empty string"),
    ('group_columns = "gpu"\n[target]\ncolumn = "ms"\n', "group_columns must be a list of strings"),
    ('[target]\ncolumn = "ms"\n[features]\n"batch.tokens" = "tokens"\n', "'batch.tokens' is not a canonical column"),
    ('[target]\ncolumn = "ms"\nunits = "ms"\n', "unknown [target] key(s) 'units' (did you mean unit"),
    ('[target]\ncolumn = "ms"\n[derived]\n"kv.tokens_in_use" = "batch * kv_lenn"\n', "names unknown column 'kv_lenn'"),
    ('[target]\ncolumn = "ms"\n[derived]\nx = "tokens / (batch - 1)"\n', "is not a finite number at 4 row(s)"),
    ('hardware = "tpu"\n[target]\ncolumn = "ms"\n', "no hardware datasheet named 'tpu'"),
    ('[target]\ncolumn = "latency"\n', "names unknown column(s): latency"),
    ('[target]\ncolumn = "ms"\n[constants]\n"hw.hbm_bw" = 3.35e12\n', "hardware figures come from a datasheet"),
])
def test_column_map_errors_through_the_cli(tmp_path, capsys, kernels, body, needle):
    path = tmp_path / "m.toml"
    path.write_text(body)
    one_line_error(capsys, run_main(describe.main, ["--data", str(kernels), "--colmap", str(path)]), needle)


def test_a_user_map_with_an_expression_and_a_hardware_column(tmp_path, capsys, kernels):
    path = tmp_path / "m.toml"
    path.write_text('experiment = "all"\n[target]\ncolumn = "ms"\nunit = "ms"\n'
                    '[features]\n"batch.scheduled_tokens" = "tokens"\n"batch.num_decode_reqs" = "batch"\n'
                    '[derived]\nhardware = "{gpu}"\n"kv.tokens_in_use" = "batch * kv_len"\n')
    from features.dataset import load_dataset

    ds = load_dataset(kernels, colmap=path)
    np.testing.assert_array_equal(ds.frame["kv.tokens_in_use"], KERNELS["batch"] * KERNELS["kv_len"])
    assert set(ds.frame["hw.hbm_bw"]) == {3.35e12} and set(ds.frame["hardware"]) == {"h100-sxm"}
    assert ds.y.tolist() == pytest.approx(list(KERNELS["ms"] * 1000.0))
    assert run_main(baselines.main, ["--data", str(kernels), "--colmap", str(path), "--baselines", "naive,gbt"]) == 0
    out = capsys.readouterr().out
    assert "gbt" in out and "naive" in out


def test_repeated_data_glob_and_empty_values(tmp_path, capsys):
    paths = [write_table(tmp_path / f"s{k}.csv", steps_table({f"e{k}": 8})) for k in range(3)]
    assert run_main(describe.main, ["--data", str(paths[0]), "--data", str(paths[1]), "--data", str(paths[2]),
                                    "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert sorted(rep["experiments"]) == ["e0", "e1", "e2"] and rep["rows"] == 21
    assert run_main(describe.main, ["--data", str(tmp_path / "s*.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 21
    one_line_error(capsys, run_main(describe.main, ["--data", str(tmp_path / "nothing*.csv")]), "no files match")
    assert run_main(describe.main, ["--data", ""]) == 2
    assert "empty" in capsys.readouterr().err


# -- command lines, property-based -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_steps(tmp_path_factory) -> Path:
    return write_table(tmp_path_factory.mktemp("cli") / "s.csv", steps_table({"a": 10, "b": 10, "c": 10}))


@settings(FUZZ, max_examples=(EXAMPLES // 10) or 25)
@given(split=st.one_of(st.sampled_from(["temporal", "random", "kfold:2", "kfold:3", "lomo", "logo:experiment_id"]),
                       st.sampled_from(["kfold", "kfold:9", "kfold:x", "kfold:2:model", "lowo", "logo:", "logo:nope",
                                        "bogus", ""]), st.text(max_size=6)),
       target=st.one_of(st.none(), st.none(), st.sampled_from(["cycle", "duration", "my", "step.duration_us",
                                                               "batch.prefill_tokens", "experiment_id",
                                                               "target.cycle_gap"])),
       seed=st.one_of(st.integers(0, 9), st.integers(-3, 2 ** 40)), max_gap=st.one_of(st.integers(1, 30),
                                                                                     st.integers(-2, 30)))
def test_property_baselines_command_lines(small_steps, capsys, split, target, seed, max_gap):
    argv = ["--data", str(small_steps), "--baselines", "naive,blackbox", "--split", split, "--seed", str(seed),
            "--max-gap", str(max_gap), "--json"] + (["--target", target] if target else [])
    code = run_main(baselines.main, argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    event(f"exit {code}")
    if code == 0:
        out = json.loads(captured.out)
        assert out["rows"] and all(r["n"] > 0 and math.isfinite(r["mape"]) for r in out["rows"])
        assert seed >= 0 and max_gap >= 1
    else:
        assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured.err


def test_expressions_sympy_rewrites_stay_evaluable():
    """Regressions found by the fuzzer: sympy writes Abs(exp(a)) as exp(re(a)) for complex symbols, exp(1) as E."""
    table = pd.DataFrame(COLUMNS)
    for text, expected in (("abs(exp(a))", np.exp(COLUMNS["a"])), ("exp(1) * a", math.e * COLUMNS["a"]), ("sqrt(a ** 2)", COLUMNS["a"]),
                           ("log(exp(b / 1000))", COLUMNS["b"] / 1000)):
        np.testing.assert_allclose(evaluate_derived(parse_derived(text, table.columns), table, "t", "x"), expected,
                                   rtol=1e-12)
    with pytest.raises(StepMLError, match=r"brackets nested deeper than 50"):
        parse_derived("(" * 300 + "a" + ")" * 300, table.columns)


@pytest.mark.parametrize("argv, needle", [
    (["--out", "{file}"], "--out {file} is an existing file, not a folder"),
    (["--out", "{file}/sub"], "is a file, not a folder"),
    (["--out", "{dir}", "--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_demo_output_problems(tmp_path, capsys, argv, needle):
    from features import demo

    (tmp_path / "file").write_text("keep")
    fill = {"file": str(tmp_path / "file"), "dir": str(tmp_path / "d")}
    one_line_error(capsys, run_main(demo.main, [a.format(**fill) for a in argv]), needle.format(**fill))
    assert (tmp_path / "file").read_text() == "keep" and not (tmp_path / "d").exists()


CELL_TEXT = st.one_of(st.integers(0, 10 ** 6).map(str), st.sampled_from(
    ["", "True", "false", "1e300", "-5", "0.5", " 7 ", "7.0", "nan", "inf", "-0", "0x10", "1,000", "٣", "1e3",
     "9223372036854775808", "NULL", "None", "\"3\""]), st.text(max_size=5))


@settings(FUZZ, max_examples=(EXAMPLES // 20) or 25)
@given(column=st.sampled_from(["batch.prefill_tokens", "batch.decode_tokens", "queue.running_depth",
                               "kv.usage_gpu_ratio", "kv.blocks_total_gpu", "batch.num_decode_reqs"]),
       row=st.integers(0, 6), text=CELL_TEXT)
def test_property_a_step_table_cell_is_read_exactly_or_refused(tmp_path_factory, column, row, text):
    table = steps_table({"a": 8, "b": 8}).astype(str)
    table.loc[row, column] = text
    path = tmp_path_factory.mktemp("cell") / "s.csv"
    path.write_text(table.to_csv(index=False))
    try:
        ds = load_dataset(path)
    except StepMLError as exc:
        event("refused")
        assert "\n" not in str(exc)
        return
    event("accepted")
    step = int(table.loc[row, "step.id"])
    got = ds.frame.loc[(ds.frame["experiment_id"] == "a") & (ds.frame["step.id"] == step), column]
    assert len(got) == 1
    want = float(text)                       # anything accepted must be the number the cell says
    assert got.iloc[0] == want and math.isfinite(want) and want >= 0


def test_a_relative_column_map_path_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("m.toml").write_text('[target]\ncolumn = "ms"\n')
    parser = __import__("argparse").ArgumentParser()
    describe.add_data_arguments(parser)
    assert parser.parse_args(["--colmap", "m.toml"]).colmap == str(tmp_path / "m.toml")
    assert parser.parse_args(["--colmap", "moe_perf"]).colmap == "moe_perf"
