"""The Go side of an export: ``stepml.go`` for BLIS, its parity check, its tests and the BLIS overlay.

Used by :mod:`discovery.export` for a run's front member, and on its own for
an existing artifact (``python -m discovery.export ARTIFACT.json --blis DIR``,
e.g. one written by ``discovery.calibrate`` with request-level overheads).

* :func:`go_refusal` — why BLIS cannot evaluate a formula (one line), or None:
  a feature that is not simulator-available, a column neither the batch nor
  ``sim.ModelHardwareConfig`` provides, or a training model whose columns
  BLIS's configuration would give differently;
* :func:`go_sources` — the model file, the Go test file and the check inputs:
  one configuration per training model (:func:`model_columns`), random request
  batches plus the empty batch (:func:`go_batches`) and the Python reference
  step time of each (:func:`reference_us`, the artifact predictor before its floor);
* :func:`write_go` — ``stepml.go`` plus its parity check against a stub of
  BLIS's ``sim`` package; :func:`write_blis` — the overlay folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sympy

from features import catalog
from features.errors import StepMLError

__all__ = ["GoSources", "TestModels", "go_refusal", "model_columns", "data_models", "experiment_models", "go_batches", "reference_us", "go_sources", "write_go",
           "write_blis", "export_artifact_to_blis", "constants_comment"]

#: At most this many training models get a test configuration.
MAX_TEST_CONFIGS = 6


@dataclass(frozen=True)
class GoSources:
    """Everything the Go side writes or checks for one formula."""

    model: str
    tests: str
    configs: tuple[str, ...]
    labels: tuple[str, ...]
    batches: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    expected: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class TestModels:
    """The model configurations the Go tests check, and the server limits of their batches.

    ``models`` maps a label (``"<model> tp<N>"``) to the canonical constant
    columns (``arch.*``, ``hw.*``) of one model/TP/hardware; ``limits`` is
    ``(max_num_seqs, max_num_batched_tokens, max_model_len)``.
    """

    models: Mapping[str, Mapping[str, float]]
    limits: tuple[int, int, int] = (128, 2048, 4096)


def model_columns(dataset) -> dict[str, dict[str, float]]:
    """Label → canonical constant columns of each distinct model/TP/hardware of the data."""
    frame = dataset.frame
    cols = [c for c in frame.columns if c.startswith(("arch.", "hw."))]
    if not cols:
        return {}
    key = "model" if "model" in frame.columns else "experiment_id" if "experiment_id" in frame.columns else None
    out: dict[str, dict[str, float]] = {}
    for _, group in (frame.groupby(key, sort=True) if key else [("data", frame)]):
        for values in group[cols].drop_duplicates().itertuples(index=False):
            row = {c: float(v) for c, v in zip(cols, values)}
            label = f"{group[key].iloc[0] if key else 'data'} tp{int(row.get('arch.tp', 1))}"
            if label in out:
                label = f"{label} #{len(out)}"
            out[label] = row
    return out


def data_models(dataset) -> TestModels:
    """The models of a step dataset (the training data of a searched formula)."""
    limits = (128, 2048, 4096)
    for meta in (getattr(dataset, "experiments", None) or {}).values():
        if getattr(meta, "server", None) is not None:
            limits = (meta.server.max_num_seqs, meta.server.max_num_batched_tokens, meta.server.max_model_len)
            break
    return TestModels(model_columns(dataset), limits)


def experiment_models(experiments: Sequence[str], data_root: str | Path | None = None) -> TestModels:
    """The models of inference-perf experiments (ids or folders), e.g. those a formula was calibrated on.

    Each experiment's architecture, hardware and TP come from its metadata (HF
    ``config.json``, hardware datasheet, ``exp-config.yaml``).
    """
    from evaluation.replay_setup import experiment_metadata, resolve_experiment, roots_for
    from features.metadata import arch_columns

    models: dict[str, dict[str, float]] = {}
    limits = (128, 2048, 4096)
    for name in experiments:
        exp_dir = resolve_experiment(str(name))
        meta = experiment_metadata(exp_dir, roots_for(exp_dir, Path(data_root) if data_root else None))
        if meta.arch is None or meta.hardware is None:
            raise StepMLError(f"{exp_dir.name}: no model config or hardware datasheet for {meta.model}")
        models.setdefault(f"{meta.model} tp{int(meta.tp)}", dict(arch_columns(meta.arch, meta.hardware, meta.tp)))
        if meta.server is not None:
            limits = (meta.server.max_num_seqs, meta.server.max_num_batched_tokens, meta.server.max_model_len)
    return TestModels(models, limits)


def go_refusal(defs: Mapping[str, sympy.Expr], models: TestModels | None = None) -> str | None:
    """Why BLIS cannot evaluate these feature definitions (one line), or None."""
    from discovery.printers.blis_columns import blis_refusal, check_reproducible, constant_columns

    for name in defs:
        feature = catalog.get_feature(name)
        if feature.availability != "simulator":
            return (f"feature '{name}' is {feature.availability}-only; only simulator-available features can be "
                    "exported to Go")
    reason = blis_refusal(defs)
    if reason or models is None:
        return reason
    used = constant_columns({s.name for d in defs.values() for s in d.free_symbols})
    missing = [c for c in used for m in models.models.values() if c not in m]
    if missing:
        return f"the data lacks column {missing[0]}, which the formula needs"
    try:
        check_reproducible(dict(models.models), used)
    except StepMLError as exc:
        return str(exc)
    return None


def go_batches(n: int = 24, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The empty batch and ``n`` random batches ``(ProgressIndex, NumNewTokens, len(InputTokens))``."""
    rng = np.random.default_rng(seed)
    batches = [(np.zeros(0), np.zeros(0), np.zeros(0))]
    for _ in range(n):
        size = int(rng.integers(1, 64))
        prompt = rng.integers(16, 2048, size).astype(float)
        prefill = rng.random(size) < 0.2
        ctx = np.where(prefill, rng.integers(0, 8, size) * 16.0, prompt + rng.integers(0, 300, size))
        ctx = np.minimum(ctx, np.where(prefill, prompt - 1, ctx))
        new = np.where(prefill, np.minimum(prompt - ctx, rng.integers(1, 512, size)), 1.0)
        batches.append((ctx, new, prompt))
    return batches


def reference_us(expr: sympy.Expr, defs: Mapping[str, sympy.Expr], batches: Sequence[tuple],
                 canonical: Mapping[str, float]) -> list[float]:
    """The formula's step time (µs, before the 1 µs floor) of each batch for one model's constant columns."""
    from discovery.formula import ArtifactPredictor
    from features.aggregates import batch_aggregates

    predictor = ArtifactPredictor(expr, dict(defs))
    out = []
    for ctx, new, prompt in batches:
        cols = {k: np.array([v]) for k, v in batch_aggregates(ctx, new, prompt).items()}
        cols.update({k: np.array([v]) for k, v in canonical.items()})
        out.append(float(predictor.raw(cols)[0]))
    return out


def go_sources(expr: sympy.Expr, defs: Mapping[str, sympy.Expr], targets: TestModels, comment: str,
               overheads=None) -> GoSources:
    """The Go model and test sources of a formula, with the check inputs (see the module docstring)."""
    from discovery.printers.blis_columns import COLUMNS, config_literal, constant_columns
    from discovery.printers.go_source import go_source
    from discovery.printers.go_tests import GoTestConfig, go_test_source

    used = {str(s) for s in expr.free_symbols}
    defs = {f: d for f, d in defs.items() if f in used}
    model = go_source(expr, defs, comment, overheads)
    columns = constant_columns({s.name for d in defs.values() for s in d.free_symbols})
    models = dict(targets.models)
    if not models:
        if columns:
            raise StepMLError(f"the formula reads {', '.join(columns)} but its data has no model metadata to "
                              "test the Go model with")
        models = {"(no model metadata)": {}}
    batches = go_batches()
    specs = [[tuple(int(x) for x in r) for r in zip(*b)] for b in batches]
    tests, labels, literals, expected = [], [], [], []
    for label, canonical in list(models.items())[:MAX_TEST_CONFIGS]:
        full = {c.name: canonical.get(c.name, 1.0) for c in COLUMNS if c.definition is not None}
        full.update(canonical)
        literal = config_literal(full) if canonical else 'sim.ModelHardwareConfig{TP: 1, DP: 1, Backend: "stepml"}'
        want = reference_us(expr, defs, batches, canonical)
        tests.append(GoTestConfig(label, literal, [canonical[c] for c in columns], want))
        labels.append(label)
        literals.append(literal)
        expected.append(tuple(want))
    test_source = go_test_source(tests, specs, targets.limits)
    return GoSources(model, test_source, tuple(literals), tuple(labels), tuple(batches), tuple(expected))


def write_go(out_dir: Path, sources: GoSources, write: Callable[[Path, str], None]):
    """Write ``stepml.go`` and check it against the Python reference (a :class:`CheckResult`)."""
    from discovery.printers.checks import go_parity

    write(out_dir / "stepml.go", sources.model)
    return go_parity(out_dir / "stepml.go", sources.configs, sources.batches, sources.expected)


def write_blis(blis_dir: Path, sources: GoSources, name: str) -> Path:
    """Write the BLIS overlay folder (:func:`discovery.printers.blis.write_overlay`)."""
    from discovery.printers.blis import write_overlay

    return write_overlay(Path(blis_dir), sources.model, sources.tests, name)


def artifact_models(doc: Mapping[str, Any], artifact: Path) -> TestModels:
    """The models an artifact was fitted on, for its Go tests.

    A calibrated artifact's experiments cover every model its constants were fitted
    to (its step data, when it has some, holds a subset of them): they are used when
    their folders are at hand; otherwise the models of the artifact's step data.
    """
    from discovery.formula import run_data

    calibrated = (doc.get("calibration") or {}).get("experiments") if isinstance(doc.get("calibration"), dict) else None
    if calibrated:
        try:
            return experiment_models([str(e) for e in calibrated])
        except StepMLError:
            if not doc.get("split"):
                raise
    folder = artifact if artifact.is_dir() else artifact.parent
    return data_models(run_data(doc, folder)[0])             # the demo data for a synthetic run's artifact


def export_artifact_to_blis(artifact: Path, blis_dir: Path, echo: Callable[[str], Any] = print,
                            overheads=None) -> Path:
    """The BLIS overlay of an existing artifact (its formula, definitions and overheads).

    ``overheads`` (an :class:`~discovery.printers.go_source.Overheads`) replaces
    the artifact's own, e.g. ones calibrated by ``evaluation.blis --calibrate-on``.
    """
    from discovery.formula import artifact_overheads, load_artifact
    from discovery.printers.blis import blis_home, patched_files

    doc, predictor = load_artifact(artifact)
    patched_files(blis_home() / "src")                       # a snapshot that cannot be patched fails first
    reason = go_refusal(predictor.definitions)               # before loading any data
    if reason:
        raise StepMLError(reason)
    targets = artifact_models(doc, Path(artifact))
    reason = go_refusal(predictor.definitions, targets)
    if reason:
        raise StepMLError(reason)
    overheads = overheads or artifact_overheads(doc, artifact)
    label = str(doc.get("data") or "") or ", ".join(doc.get("calibration", {}).get("experiments", []))
    comment = constants_comment(label, doc.get("baked_columns") or {})
    sources = go_sources(predictor.expr, predictor.definitions, targets, comment, overheads)
    out = write_blis(blis_dir, sources, str(doc.get("name", "artifact")))
    report_overheads(overheads, echo)
    echo(f"wrote BLIS overlay {out}/ (build: ../shared/blis/build.sh OUT {out}; run: blis run --latency-model stepml)")
    return out


def constants_comment(data_label: str, baked: Mapping[str, float]) -> str:
    """The header note of ``stepml.go``: the data it was fitted on and the constants baked in."""
    text = f"fitted on {data_label}"
    if baked:
        text += "\nbaked in: " + ", ".join(f"{k}={float(v):.10g}" for k, v in baked.items())
    return text


def report_overheads(overheads, echo: Callable[[str], Any]) -> None:
    """One line on the request-level overheads the Go model returns."""
    echo(f"  overheads: QueueingTime {overheads.queueing_us:g} µs, OutputTokenProcessingTime "
         f"{overheads.output_token_us:g} µs, PostDecodeFixedOverhead {overheads.post_decode_us:g} µs"
         + (f" ({', '.join(overheads.absent)} absent from the artifact: 0)" if overheads.absent else ""))
