"""Go export, part 4: ``stepml_test.go``, the invariants and test vectors of a BLIS StepML model.

:func:`go_test_source` writes a Go test file for BLIS's package ``sim/latency``
beside the generated ``stepml.go``. It holds the configurations of the
models the formula was fitted on (``sim.ModelHardwareConfig`` literals with the
canonical columns the project computed for them), request batches with the
Python reference step time of each, and one test per invariant of the audit
(:mod:`discovery.audit`):

``TestStepMLInvM1AtLeastOneMicrosecond``  StepTimeUs >= 1 µs on every test batch, the empty batch
                                          included; StepTime >= 1; the overheads >= 0
``TestStepMLInvM2Deterministic``          same inputs, bit-identical outputs; same configuration, same columns
``TestStepMLInvM3NoSideEffects``          StepTime leaves every request of the batch unchanged
``TestStepMLInvM4UnderOneMillisecond``    StepTime of a batch of 128 requests takes < 1 ms (a loose
                                          bound: the performance target lives in the benchmark)
``TestStepMLInvM5Monotone``               more prefill tokens, more decode requests or longer contexts
                                          never give a shorter step, on a grid over the server's limits
``TestStepMLInvM6MatchesPython``          the columns and every test vector within 1e-9 relative of
                                          the Python reference (so the validation error the audit
                                          measured in Python holds for the Go model)
``TestStepMLFactory``                     ``NewLatencyModel`` with backend "stepml" returns the model
``BenchmarkStepMLStepTime128``            ns per StepTime at batch 128 (benchmarks/blis_go_bench.py)

The batches are given per request as ``{ProgressIndex, NumNewTokens, len(InputTokens)}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from features.errors import StepMLError

__all__ = ["GoTestConfig", "go_test_source"]


@dataclass(frozen=True)
class GoTestConfig:
    """One model the Go tests construct the StepML model for.

    Attributes
    ----------
    name : str
        A label (model, TP, hardware).
    literal : str
        A Go ``sim.ModelHardwareConfig`` literal
        (:func:`discovery.printers.blis_columns.config_literal`).
    columns : sequence of float
        The expected value of each of the model's constant columns (``stepMLColumns`` order).
    want_us : sequence of float
        The Python reference ``StepTimeUs`` of each test batch.
    """

    name: str
    literal: str
    columns: Sequence[float]
    want_us: Sequence[float]


def _floats(values: Sequence[float]) -> str:
    return "[]float64{" + ", ".join(repr(float(v)) for v in values) + "}"


def _batch(batch: Sequence[Sequence[int]]) -> str:
    return "{" + ", ".join("{" + ", ".join(str(int(x)) for x in req) + "}" for req in batch) + "}"


def _data_lines(configs: Sequence[GoTestConfig], batches: Sequence[Sequence[Sequence[int]]],
                limits: tuple[int, int, int]) -> list[str]:
    seqs, tokens, model_len = limits
    lines = ["// stepMLTestConfigs: the models the formula was fitted on, their columns as the project",
             "// computed them, and the Python reference StepTimeUs of every stepMLTestBatches entry.",
             "var stepMLTestConfigs = []struct {", "\tname string", "\thw   sim.ModelHardwareConfig",
             "\tcols []float64", "\twant []float64", "}{"]
    for c in configs:
        lines.append(f'\t{{name: "{c.name}", hw: {c.literal}, cols: {_floats(c.columns)}, want: {_floats(c.want_us)}}},')
    lines += ["}", "", "// stepMLTestBatches: per request {ProgressIndex, NumNewTokens, len(InputTokens)}.",
              "var stepMLTestBatches = [][][3]int64{"]
    lines += [f"\t{_batch(b)}," for b in batches]
    lines += ["}", "", "// The server's limits the monotonicity grid spans.", "const (",
              f"\tstepMLMaxNumSeqs   = {int(seqs)}", f"\tstepMLMaxBatched   = {int(tokens)}",
              f"\tstepMLMaxModelLen  = {int(model_len)}", "\tstepMLRelTolerance = 1e-9", ")"]
    return lines


_HELPERS = """\
func stepMLBatch(spec [][3]int64) []*sim.Request {
	batch := make([]*sim.Request, len(spec))
	for i, s := range spec {
		batch[i] = &sim.Request{ProgressIndex: s[0], NumNewTokens: int(s[1]),
			InputTokens: make([]sim.TokenID, s[2]), OutputTokens: make([]sim.TokenID, 1)}
	}
	return batch
}

func stepMLGridBatch(p, d, c int64) []*sim.Request {
	return stepMLBatch(stepMLGrid(p, d, c))
}

func stepMLClose(got, want float64) bool {
	return got == want || math.Abs(got-want) <= stepMLRelTolerance*math.Max(math.Abs(got), math.Abs(want))
}

func stepMLModel(t testing.TB, k int) *StepMLModel {
	m, err := NewStepMLModel(stepMLTestConfigs[k].hw)
	if err != nil {
		t.Fatalf("%s: %v", stepMLTestConfigs[k].name, err)
	}
	return m
}
"""

_TESTS = """\
func TestStepMLInvM1AtLeastOneMicrosecond(t *testing.T) {
	for k, cfg := range stepMLTestConfigs {
		m := stepMLModel(t, k)
		for b, spec := range stepMLTestBatches {
			if us := m.StepTimeUs(stepMLBatch(spec)); !(us >= 1) {
				t.Errorf("%s: batch %d (%d requests): StepTimeUs = %v < 1 µs", cfg.name, b, len(spec), us)
			}
			if ticks := m.StepTime(stepMLBatch(spec)); ticks < 1 {
				t.Errorf("%s: batch %d: StepTime = %d < 1", cfg.name, b, ticks)
			}
		}
		if m.QueueingTime(&sim.Request{}) < 0 || m.OutputTokenProcessingTime() < 0 || m.PostDecodeFixedOverhead() < 0 {
			t.Errorf("%s: a request-level overhead is negative", cfg.name)
		}
	}
}

func TestStepMLInvM2Deterministic(t *testing.T) {
	for k, cfg := range stepMLTestConfigs {
		a, b := stepMLModel(t, k), stepMLModel(t, k)
		for i := range a.cols {
			if a.cols[i] != b.cols[i] {
				t.Errorf("%s: column %s differs between two constructions", cfg.name, stepMLColumns[i].name)
			}
		}
		for n, spec := range stepMLTestBatches {
			x, y := a.StepTimeUs(stepMLBatch(spec)), a.StepTimeUs(stepMLBatch(spec))
			if x != y || x != b.StepTimeUs(stepMLBatch(spec)) || a.StepTime(stepMLBatch(spec)) != b.StepTime(stepMLBatch(spec)) {
				t.Errorf("%s: batch %d: %v then %v", cfg.name, n, x, y)
			}
		}
	}
}

func TestStepMLInvM3NoSideEffects(t *testing.T) {
	for k, cfg := range stepMLTestConfigs {
		m := stepMLModel(t, k)
		for n, spec := range stepMLTestBatches {
			batch := stepMLBatch(spec)
			m.StepTime(batch)
			m.StepTimeUs(batch)
			for i, r := range batch {
				if r.ProgressIndex != spec[i][0] || int64(r.NumNewTokens) != spec[i][1] ||
					int64(len(r.InputTokens)) != spec[i][2] || len(r.OutputTokens) != 1 {
					t.Errorf("%s: batch %d: StepTime changed request %d", cfg.name, n, i)
				}
			}
		}
	}
}

func TestStepMLInvM4UnderOneMillisecond(t *testing.T) {
	m := stepMLModel(t, 0)
	batch := stepMLGridBatch(64, 127, 1024) // 128 requests
	const calls = 2000
	start := time.Now()
	for i := 0; i < calls; i++ {
		m.StepTime(batch)
	}
	if per := time.Since(start) / calls; per >= time.Millisecond {
		t.Errorf("StepTime at batch 128 takes %v per call (>= 1 ms)", per)
	}
}

// stepMLGrid: one prefill chunk of p tokens (if p > 0) and d decodes at context c.
func stepMLGrid(p, d, c int64) [][3]int64 {
	var spec [][3]int64
	if p > 0 {
		spec = append(spec, [3]int64{0, p, p + 1})
	}
	for i := int64(0); i < d; i++ {
		spec = append(spec, [3]int64{c, 1, c})
	}
	return spec
}

// stepMLMoreDecodes adds max(1, d/4) decodes whose KV length is at least the batch's mean
// (as evaluation/probes.py perturbs the decode axis: KV per request does not drop).
func stepMLMoreDecodes(spec [][3]int64) [][3]int64 {
	var kv, d int64
	for _, s := range spec {
		kv += s[0] + s[1]
		if s[0] >= s[2] {
			d++
		}
	}
	c := int64(511)
	if len(spec) > 0 {
		c = (kv+int64(len(spec))-1)/int64(len(spec)) - 1
	}
	out := append([][3]int64{}, spec...)
	for i := int64(0); i < max(1, d/4); i++ {
		out = append(out, [3]int64{c, 1, c})
	}
	return out
}

func TestStepMLInvM5Monotone(t *testing.T) {
	for k, cfg := range stepMLTestConfigs {
		m := stepMLModel(t, k)
		at := func(spec [][3]int64) float64 { return m.StepTimeUs(stepMLBatch(spec)) }
		for _, d := range []int64{0, 1, 4, 16, 64, stepMLMaxNumSeqs - 1} {
			for _, c := range []int64{16, 256, 1024, stepMLMaxModelLen - 1} {
				for _, p := range []int64{0, 16, 128, 512, stepMLMaxBatched / 2} {
					if p+d == 0 || p+d > stepMLMaxBatched {
						continue
					}
					base := at(stepMLGrid(p, d, c))
					more := map[string]float64{
						"prefill": at(stepMLGrid(p+max(16, p/4), d, c)),
						"decode":  at(stepMLMoreDecodes(stepMLGrid(p, d, c))),
						"kv":      at(stepMLGrid(p, d, c+c/4+16)),
					}
					for axis, v := range more {
						if v < base-stepMLRelTolerance*math.Abs(base) {
							t.Errorf("%s: more %s gives a shorter step: %v < %v (prefill %d, decodes %d, context %d)",
								cfg.name, axis, v, base, p, d, c)
						}
					}
				}
			}
		}
	}
}

func TestStepMLInvM6MatchesPython(t *testing.T) {
	for k, cfg := range stepMLTestConfigs {
		m := stepMLModel(t, k)
		for i, want := range cfg.cols {
			if !stepMLClose(m.cols[i], want) {
				t.Errorf("%s: column %s = %v, Python %v", cfg.name, stepMLColumns[i].name, m.cols[i], want)
			}
		}
		for b, spec := range stepMLTestBatches {
			if got := m.StepTimeUs(stepMLBatch(spec)); !stepMLClose(got, cfg.want[b]) {
				t.Errorf("%s: batch %d: StepTimeUs = %.17g, Python %.17g", cfg.name, b, got, cfg.want[b])
			}
		}
	}
}

func TestStepMLFactory(t *testing.T) {
	if !sim.IsValidLatencyBackend("stepml") {
		t.Fatalf("backend stepml is not valid; valid: %v", sim.ValidLatencyBackendNames())
	}
	hw := stepMLTestConfigs[0].hw
	hw.Backend = "stepml"
	lm, err := NewLatencyModel(sim.LatencyCoeffs{AlphaCoeffs: []float64{0, 0, 0}}, hw)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := lm.(*StepMLModel); !ok {
		t.Fatalf("NewLatencyModel(backend stepml) returned %T", lm)
	}
}

func BenchmarkStepMLStepTime128(b *testing.B) {
	m := stepMLModel(b, 0)
	batch := stepMLGridBatch(64, 127, 1024) // 128 requests, features included
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.StepTime(batch)
	}
}
"""


def go_test_source(configs: Sequence[GoTestConfig], batches: Sequence[Sequence[Sequence[int]]],
                   limits: tuple[int, int, int], package: str = "latency") -> str:
    """The Go test file (see the module docstring).

    Parameters
    ----------
    configs : sequence of GoTestConfig
        At least one model.
    batches : sequence
        Test batches, each a sequence of ``(ProgressIndex, NumNewTokens, len(InputTokens))``.
    limits : (int, int, int)
        ``max_num_seqs``, ``max_num_batched_tokens``, ``max_model_len`` of the monotonicity grid.
    package : str
        The package of ``stepml.go``.
    """
    if not configs:
        raise StepMLError("the Go tests need at least one model configuration")
    for c in configs:
        if len(c.want_us) != len(batches):
            raise StepMLError(f"{c.name}: {len(c.want_us)} reference values for {len(batches)} batches")
    header = ["// Code generated by StepML Discovery (discovery/printers/go_tests.py). DO NOT EDIT.", "",
              f"package {package}", "", "import (", '\t"math"', '\t"testing"', '\t"time"', "",
              '\t"github.com/inference-sim/inference-sim/sim"', ")", ""]
    return "\n".join(header + _data_lines(configs, batches, limits)) + "\n\n" + _HELPERS + "\n" + _TESTS
