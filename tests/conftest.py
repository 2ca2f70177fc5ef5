"""Shared fixtures: the real data root (or a skip), and writers for small step traces and tables.

The writers build data the tests control completely, so every expected number in
the tests can be worked out by hand:

- :func:`make_steps` returns BATCH_SUMMARY rows with a constant cycle time;
- :func:`write_otlp` writes them as an OTLP-JSON step trace (one JSON object per
  line, ``resourceSpans → scopeSpans → spans → events``), plain or gzip;
- :func:`write_request_trace` writes ``llm_request`` spans;
- :func:`write_table` writes a step table as parquet or CSV.

They are exposed as fixtures (``make_steps``, ``write_otlp``, ...) returning the function.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import pytest

from features.metadata import default_data_root
from features.schema import BATCH_SUMMARY_COLUMNS

#: Resolved once at import, before any test changes ``$STEPML_DATA``.
REAL_DATA_ROOT = default_data_root()


# -- real data ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder, or skip the test with the reason."""
    if not REAL_DATA_ROOT.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA_ROOT}; set STEPML_DATA to the shared data folder")
    return REAL_DATA_ROOT


@pytest.fixture
def real_path(data_root):
    """``real_path("blis/...")``: that real file or folder, or skip the test when it is absent."""
    def find(relative: str) -> Path:
        path = data_root / relative
        if not path.exists():
            pytest.skip(f"real data not found at {path}; set STEPML_DATA to the shared data folder")
        return path
    return find


@pytest.fixture
def isolated_metadata(tmp_path_factory, monkeypatch) -> Path:
    """Point ``$STEPML_DATA`` at an empty folder so tmp data never joins real metadata."""
    empty = tmp_path_factory.mktemp("no_shared_data")
    monkeypatch.setenv("STEPML_DATA", str(empty))
    return empty


# -- synthetic steps --------------------------------------------------------------------------

def make_steps(n: int, *, start_id: int = 0, id_step: int | Sequence[int] = 1, cycle_ns: int = 20_000_000,
               t0_ns: int = 1_700_000_000_000_000_000) -> list[dict[str, Any]]:
    """``n`` BATCH_SUMMARY rows with step ids ``start_id + k*id_step`` and a constant cycle time.

    ``id_step`` may be a sequence of ``n - 1`` id gaps. Timestamps advance by
    ``cycle_ns`` per step id, so the cycle time of every row but the last is
    ``cycle_ns / 1000`` µs. Other columns vary with the row index ``k``:
    ``num_prefill_reqs = k % 2``, ``num_decode_reqs = 3``, ``prefill_tokens = 100 * (k % 2)``,
    ``decode_tokens = 3``, ``kv.usage_gpu_ratio = 0.01 * (k + 1)``, ``kv.blocks_total_gpu = 1000``.
    """
    gaps = [id_step] * max(n - 1, 0) if isinstance(id_step, int) else list(id_step)
    assert len(gaps) == max(n - 1, 0), "id_step sequence needs n - 1 gaps"
    rows, step_id = [], start_id
    for k in range(n):
        if k:
            step_id += gaps[k - 1]
        ts = t0_ns + (step_id - start_id) * cycle_ns
        prefill_reqs = k % 2
        prefill_tokens = 100 * prefill_reqs
        used = 10 * (k + 1)
        rows.append({
            "step.id": step_id,
            "step.ts_start_ns": ts,
            "step.ts_end_ns": ts + 400_000,
            "step.duration_us": 400,
            "queue.running_depth": 3 + prefill_reqs,
            "queue.waiting_depth": k % 3,
            "batch.num_prefill_reqs": prefill_reqs,
            "batch.num_decode_reqs": 3,
            "batch.scheduled_tokens": prefill_tokens + 3,
            "batch.prefill_tokens": prefill_tokens,
            "batch.decode_tokens": 3,
            "batch.num_finished": int(k % 4 == 3),
            "batch.num_preempted": 0,
            "kv.usage_gpu_ratio": used / 1000,
            "kv.blocks_total_gpu": 1000,
            "kv.blocks_free_gpu": 1000 - used,
        })
    return rows


def _attribute(key: str, value: Any, k: int) -> dict[str, Any]:
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, str):
        return {"key": key, "value": {"stringValue": value}}
    # OTLP-JSON exporters write int64 as a string; some write a number: use both.
    return {"key": key, "value": {"intValue": str(value) if k % 2 == 0 else int(value)}}


def step_event(row: dict[str, Any], k: int = 0, name: str = "step.BATCH_SUMMARY") -> dict[str, Any]:
    """One span event holding ``row`` as attributes (``k`` alternates the intValue encoding)."""
    attributes = []
    for i, (key, value) in enumerate(row.items()):
        if key in BATCH_SUMMARY_COLUMNS and BATCH_SUMMARY_COLUMNS[key] == "float":
            value = float(value)
        attributes.append(_attribute(key, value, k + i))
    return {"timeUnixNano": str(row.get("step.ts_end_ns", 0)), "name": name, "attributes": attributes}


def otlp_line(spans: list[dict[str, Any]]) -> str:
    """One OTLP-JSON export line holding ``spans``."""
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "vllm"}}]},
        "scopeSpans": [{"scope": {"name": "vllm.scheduler"}, "spans": spans}],
    }]})


def step_span(rows: Iterable[dict[str, Any]], first_k: int = 0, name: str = "scheduler_step") -> dict[str, Any]:
    """A scheduler span with one BATCH_SUMMARY event per row."""
    rows = list(rows)
    start = rows[0].get("step.ts_start_ns", 0) if rows else 0
    return {"traceId": f"{first_k:032x}", "spanId": f"{first_k:016x}", "name": name, "kind": 1,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 1),
            "events": [step_event(r, first_k + j) for j, r in enumerate(rows)]}


def write_otlp(path: Path, rows: list[dict[str, Any]], *, per_line: int = 2, noise: bool = True,
               insert_lines: dict[int, str] | None = None) -> Path:
    """Write ``rows`` as an OTLP-JSON step trace (gzip when ``path`` ends in ``.gz``).

    Each line holds ``per_line`` steps in one span. With ``noise``, every line also
    holds an ``llm_request`` span and a span whose event has another name; neither
    is a step. ``insert_lines`` maps a 1-based final line number to raw text placed there.
    """
    lines = []
    for start in range(0, len(rows), per_line):
        spans = [step_span(rows[start:start + per_line], start)]
        if noise:
            spans.append({"name": "llm_request", "startTimeUnixNano": "1", "endTimeUnixNano": "2",
                          "attributes": [_attribute("gen_ai.usage.prompt_tokens", 7, 0)]})
            spans.append({"name": "scheduler_step", "events": [
                {"name": "step.OTHER", "attributes": [_attribute("step.id", 999_999, 0)]}]})
        lines.append(otlp_line(spans))
    for number, text in sorted((insert_lines or {}).items()):
        lines.insert(number - 1, text)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def request_span(request_id: str, start_ns: int, *, ttft: float, e2e: float, prompt: int, completion: int,
                 queue: float = 0.001, drop: Sequence[str] = ()) -> dict[str, Any]:
    """An ``llm_request`` span as vLLM exports it (times in seconds, tokens as intValue strings)."""
    attrs = {
        "gen_ai.request.id": request_id,
        "gen_ai.latency.time_to_first_token": float(ttft),
        "gen_ai.latency.e2e": float(e2e),
        "gen_ai.latency.time_in_queue": float(queue),
        "gen_ai.usage.prompt_tokens": int(prompt),
        "gen_ai.usage.completion_tokens": int(completion),
        "gen_ai.request.temperature": 0.7,
    }
    return {"traceId": "ab" * 16, "spanId": request_id[-16:].rjust(16, "0"), "name": "llm_request", "kind": 2,
            "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(start_ns + int(e2e * 1e9)),
            "attributes": [_attribute(k, v, 0) for k, v in attrs.items() if k not in drop]}


def write_request_trace(path: Path, spans: list[dict[str, Any]], per_line: int = 2) -> Path:
    """Write request spans, ``per_line`` per export line."""
    lines = [otlp_line(spans[i:i + per_line]) for i in range(0, len(spans), per_line)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_table(path: Path, rows: list[dict[str, Any]] | pd.DataFrame) -> Path:
    """Write a step table as parquet or CSV (by suffix)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def steps_table(experiments: dict[str, int], **kwargs: Any) -> pd.DataFrame:
    """A step table with an ``experiment_id`` column: ``{id: rows}``, steps from :func:`make_steps`."""
    parts = []
    for exp_id, n in experiments.items():
        frame = pd.DataFrame(make_steps(n, **kwargs))
        frame.insert(0, "experiment_id", exp_id)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(name="make_steps", scope="session")
def _make_steps_fixture():
    return make_steps


@pytest.fixture(name="write_otlp", scope="session")
def _write_otlp_fixture():
    return write_otlp


@pytest.fixture(name="write_table", scope="session")
def _write_table_fixture():
    return write_table


@pytest.fixture(name="steps_table", scope="session")
def _steps_table_fixture():
    return steps_table


@pytest.fixture(name="request_span", scope="session")
def _request_span_fixture():
    return request_span


@pytest.fixture(name="write_request_trace", scope="session")
def _write_request_trace_fixture():
    return write_request_trace


@pytest.fixture(name="otlp_line", scope="session")
def _otlp_line_fixture():
    return otlp_line


@pytest.fixture(name="step_span", scope="session")
def _step_span_fixture():
    return step_span


# -- command-line entry points ------------------------------------------------------------------
#: Search options small enough for tests (a few seconds on the demo data).
SMALL_SEARCH = ["--generations", "3", "--population", "24", "--islands", "1", "--budget", "60", "--quiet"]


def run_main(main, argv) -> int:
    """Run a CLI ``main`` through :func:`features.cli.run` in-process; return its exit status."""
    from features.cli import run

    with pytest.raises(SystemExit) as exc:
        run(main, argv, prog="test")
    return exc.value.code


@pytest.fixture(scope="session")
def linear_run(tmp_path_factory) -> Path:
    """One small `linear`-space search on the demo data (seed 3), shared by the CLI tests."""
    from discovery import search

    path = tmp_path_factory.mktemp("runs") / "linear"
    assert run_main(search.main, ["--space", "linear", "--seed", "3", "--run-dir", str(path)] + SMALL_SEARCH) == 0
    return path


#: ``STEPML_FUZZ_EXAMPLES=2000`` fuzzes deeper with fresh random examples; by default every run checks the same 60.
FUZZ_EXAMPLES = int(os.environ.get("STEPML_FUZZ_EXAMPLES", "0"))


def fuzz_settings():
    """The hypothesis settings of the fuzz tests (derandomized unless ``STEPML_FUZZ_EXAMPLES`` is set)."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=FUZZ_EXAMPLES or 60, deadline=None, derandomize=not FUZZ_EXAMPLES, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line_error(capsys, code: int, *needles: str) -> str:
    """Assert exit 2 with exactly one ``error:`` line (warnings may precede it) naming ``needles``."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("test: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
