"""Read OpenTelemetry OTLP-JSON exports of instrumented vLLM.

Two record kinds are read:

- ``step.BATCH_SUMMARY`` span events (scheduler steps) → rows of the canonical
  step table (:mod:`features.schema`);
- ``llm_request`` spans with ``gen_ai.*`` attributes → a per-request lifecycle
  table (arrival, TTFT, E2E, queue time, prompt and completion tokens).

A file holds one JSON object per line, each ``{"resourceSpans": [...]}``
(``traces.json`` or gzip-compressed ``traces.json.gz``). Attribute values
are ``{"intValue": "29"}`` (string or int), ``{"doubleValue": 0.02}``,
``{"stringValue": "x"}`` or ``{"boolValue": true}``.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from features.errors import StepMLError
from features.schema import BATCH_SUMMARY_COLUMNS, REQUIRED_STEP_COLUMNS, coerce_columns

STEP_EVENT = "step.BATCH_SUMMARY"
REQUEST_SPAN = "llm_request"

#: ``gen_ai`` attribute → lifecycle column.
REQUEST_ATTRIBUTES: dict[str, str] = {
    "gen_ai.request.id": "request_id",
    "gen_ai.latency.time_to_first_token": "ttft_s",
    "gen_ai.latency.e2e": "e2e_s",
    "gen_ai.latency.time_in_queue": "queue_s",
    "gen_ai.latency.time_in_model_prefill": "prefill_s",
    "gen_ai.latency.time_in_model_decode": "decode_s",
    "gen_ai.latency.time_in_model_inference": "inference_s",
    "gen_ai.usage.prompt_tokens": "prompt_tokens",
    "gen_ai.usage.completion_tokens": "completion_tokens",
    "gen_ai.request.max_tokens": "max_tokens",
}
REQUIRED_REQUEST_ATTRIBUTES = ("gen_ai.latency.time_to_first_token", "gen_ai.latency.e2e",
                               "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens")


@dataclass(frozen=True)
class ReadStats:
    """What a read saw: lines read and malformed lines skipped."""

    lines: int
    skipped: int


INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")


def attribute_value(value: dict[str, Any]) -> Any:
    """Decode one OTLP ``AnyValue`` (``intValue`` may be a string).

    Values are checked, never coerced silently: an ``intValue`` must be an
    integer within int64 (``"29"``, ``29``; not ``1.5``, ``true`` or
    ``1e30``), a ``doubleValue`` a number, a ``boolValue`` a JSON boolean.
    Anything else raises :class:`ValueError` naming the value.
    """
    if not isinstance(value, dict):
        raise ValueError(f"value {value!r} is not an OTLP AnyValue object")
    if "intValue" in value:
        return _int64(value["intValue"])
    if "doubleValue" in value:
        raw = value["doubleValue"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"doubleValue {raw!r} is not a number")
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"doubleValue {raw!r} is not a number") from None
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        if not isinstance(value["boolValue"], bool):
            raise ValueError(f"boolValue {value['boolValue']!r} is not true or false")
        return value["boolValue"]
    if "arrayValue" in value:
        items = value["arrayValue"].get("values", []) if isinstance(value["arrayValue"], dict) else None
        if not isinstance(items, list):
            raise ValueError("arrayValue has no 'values' list")
        return [attribute_value(v) for v in items]
    return None


def _int64(raw: Any) -> int:
    """An OTLP ``intValue`` (a JSON integer or a decimal string) checked to be an int64."""
    kind = type(raw)
    if kind is str and raw.isascii() and raw.isdigit():  # the common case, fast: "29"
        value = int(raw)
    elif kind is int:
        value = raw
    elif isinstance(raw, bool):
        raise ValueError(f"intValue {raw!r} is a boolean, not an integer")
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
        value = int(raw)
    else:
        raise ValueError(f"intValue {raw!r} is not an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"intValue {value} is outside the int64 range")
    return value


def attributes_dict(attributes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Turn an OTLP ``attributes`` list into a plain dict."""
    out = {}
    for a in attributes or ():
        key = a["key"]
        if not isinstance(key, str):
            raise ValueError(f"attribute key {key!r} is not a string")
        try:
            out[key] = attribute_value(a.get("value", {}))
        except ValueError as exc:
            raise ValueError(f"'{key}': {exc}") from None
    return out


def _open_binary(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _numbered_documents(path: str | Path, skip_bad_lines: bool = False,
                        stats: list[ReadStats] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, JSON object)`` for every non-empty line of an OTLP-JSON file."""
    path = Path(path)
    if not path.is_file():
        raise StepMLError(f"trace file not found: {path}")
    lines = skipped = 0
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                lines += 1
                try:
                    # Decode per line so a non-UTF-8 line is reported (or skipped) like bad JSON.
                    doc = json.loads(raw.decode("utf-8"))
                    if not isinstance(doc, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
                    if skip_bad_lines:
                        skipped += 1
                        continue
                    raise StepMLError(f"{path}:{number}: malformed JSON line ({exc}); "
                                      "use --skip-bad-lines to skip such lines") from None
                yield number, doc
    except (OSError, EOFError, zlib.error) as exc:
        raise StepMLError(f"{path}: cannot read ({exc})") from None
    if stats is not None:
        stats.append(ReadStats(lines=lines, skipped=skipped))


def iter_documents(path: str | Path, skip_bad_lines: bool = False,
                   stats: list[ReadStats] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the JSON object of every non-empty line of an OTLP-JSON file.

    A malformed line (bad JSON, not UTF-8, not an object) raises :class:`StepMLError`
    naming the file and line number, unless ``skip_bad_lines``; then it is skipped
    and counted in ``stats``.
    """
    for _, doc in _numbered_documents(path, skip_bad_lines, stats):
        yield doc


def _list_of_objects(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"'{what}' is not a list of objects")
    return value


def _numbered_spans(path: str | Path, skip_bad_lines: bool = False,
                    stats: list[ReadStats] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, span)``; a line that is not OTLP-shaped raises :class:`StepMLError`."""
    for number, doc in _numbered_documents(path, skip_bad_lines, stats):
        try:
            spans = [span
                     for resource in _list_of_objects(doc.get("resourceSpans"), "resourceSpans")
                     for scope in _list_of_objects(resource.get("scopeSpans"), "scopeSpans")
                     for span in _list_of_objects(scope.get("spans"), "spans")]
        except ValueError as exc:
            raise StepMLError(f"{path}:{number}: not an OTLP trace object ({exc})") from None
        for span in spans:
            yield number, span


def iter_spans(path: str | Path, skip_bad_lines: bool = False,
               stats: list[ReadStats] | None = None) -> Iterator[dict[str, Any]]:
    """Yield every span under ``resourceSpans[].scopeSpans[].spans[]``."""
    for _, span in _numbered_spans(path, skip_bad_lines, stats):
        yield span


def _decode_attributes(attributes: Any, path: str | Path, number: int, what: str) -> dict[str, Any]:
    """:func:`attributes_dict` with a one-line error naming the file, line and record."""
    try:
        return attributes_dict(_list_of_objects(attributes, "attributes"))
    except (KeyError, ValueError, TypeError) as exc:
        detail = f"attribute without {exc}" if isinstance(exc, KeyError) else str(exc)
        raise StepMLError(f"{path}:{number}: {what} has a bad attribute ({detail})") from None


def _events(span: dict[str, Any], path: str | Path, number: int) -> list[dict[str, Any]]:
    try:
        return _list_of_objects(span.get("events"), "events")
    except ValueError as exc:
        raise StepMLError(f"{path}:{number}: not an OTLP trace object ({exc})") from None


def read_step_events(path: str | Path, skip_bad_lines: bool = False,
                     stats: list[ReadStats] | None = None) -> pd.DataFrame:
    """Read every ``step.BATCH_SUMMARY`` event of a file into a step table.

    Returns the BATCH_SUMMARY columns (as present) with canonical dtypes, in file
    order. Missing required attributes raise :class:`StepMLError`.
    """
    rows = []
    line_of: list[int] = []
    for number, span in _numbered_spans(path, skip_bad_lines, stats):
        for event in _events(span, path, number):
            if event.get("name") == STEP_EVENT:
                rows.append(_decode_attributes(event.get("attributes"), path, number, f"'{STEP_EVENT}' event"))
                line_of.append(number)
    if not rows:
        raise StepMLError(f"{path}: no '{STEP_EVENT}' events found")
    frame = pd.DataFrame.from_records(rows)
    missing = [c for c in REQUIRED_STEP_COLUMNS if c not in frame.columns]
    if missing:
        raise StepMLError(f"{path}: step events lack required attribute(s): {', '.join(missing)}")
    incomplete = frame[list(REQUIRED_STEP_COLUMNS)].isna()
    if incomplete.any(axis=None):
        first = int(np.flatnonzero(incomplete.any(axis=1).to_numpy())[0])
        lacking = [c for c in REQUIRED_STEP_COLUMNS if incomplete[c].iat[first]]
        raise StepMLError(f"{path}:{line_of[first]}: step event #{first + 1} lacks required "
                          f"attribute(s): {', '.join(lacking)}")
    ordered = [c for c in BATCH_SUMMARY_COLUMNS if c in frame.columns]
    extra = [c for c in frame.columns if c not in BATCH_SUMMARY_COLUMNS]
    return coerce_columns(frame[ordered + extra], str(path))


def read_request_spans(path: str | Path, skip_bad_lines: bool = False,
                       stats: list[ReadStats] | None = None) -> pd.DataFrame:
    """Read ``llm_request`` spans into a per-request lifecycle table.

    Columns: ``request_id, arrival_s`` (span start, unix seconds), ``end_s``,
    ``ttft_s, e2e_s, queue_s, prefill_s, decode_s, inference_s, prompt_tokens,
    completion_tokens, max_tokens`` (those present), sorted by arrival.
    """
    rows = []
    for number, span in _numbered_spans(path, skip_bad_lines, stats):
        if span.get("name") != REQUEST_SPAN:
            continue
        attrs = _decode_attributes(span.get("attributes"), path, number, f"'{REQUEST_SPAN}' span")
        missing = [a for a in REQUIRED_REQUEST_ATTRIBUTES if a not in attrs]
        if "startTimeUnixNano" not in span:
            missing.append("startTimeUnixNano")
        if missing:
            raise StepMLError(f"{path}:{number}: llm_request span {span.get('spanId', '?')} lacks "
                              f"attribute(s): {', '.join(missing)}")
        row = {col: attrs.get(key) for key, col in REQUEST_ATTRIBUTES.items() if key in attrs}
        try:
            row["arrival_s"] = int(span["startTimeUnixNano"]) / 1e9
            row["end_s"] = int(span.get("endTimeUnixNano", span["startTimeUnixNano"])) / 1e9
        except (TypeError, ValueError) as exc:
            raise StepMLError(f"{path}:{number}: llm_request span {span.get('spanId', '?')} has a bad "
                              f"timestamp ({exc})") from None
        rows.append(row)
    if not rows:
        raise StepMLError(f"{path}: no '{REQUEST_SPAN}' spans found")
    frame = pd.DataFrame.from_records(rows)
    front = ["request_id", "arrival_s", "end_s"]
    cols = [c for c in front if c in frame.columns] + [c for c in frame.columns if c not in front]
    frame = frame[cols].sort_values("arrival_s", kind="stable").reset_index(drop=True)
    for col in ("prompt_tokens", "completion_tokens", "max_tokens"):
        if col in frame.columns:
            frame[col] = _token_counts(frame[col], col, path)
    return frame


def _token_counts(column: pd.Series, name: str, path: str | Path) -> pd.Series:
    """Token counts as int64: whole numbers >= 0 (never text, booleans or fractions, which would be cut)."""
    flags = column.map(lambda v: isinstance(v, bool)).to_numpy(dtype=bool)
    values = pd.to_numeric(column.where(~flags), errors="coerce").to_numpy(dtype=float)
    bad = flags | ~np.isfinite(values) | (values < 0) | (values != np.floor(values)) | (np.abs(values) >= 2.0 ** 63)
    bad &= column.notna().to_numpy() | flags
    missing = column.isna().to_numpy()
    if name == "max_tokens" and missing.any() and not bad.any():  # optional: spans without it stay NaN
        return pd.Series(values, index=column.index)
    if bad.any() or missing.any():
        first = int(np.flatnonzero(bad | missing)[0])
        value = column.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value
        raise StepMLError(f"{path}: llm_request span #{first + 1} has {name} {value!r}, not a whole "
                          f"number of tokens >= 0 ({int((bad | missing).sum())} such span(s))")
    return pd.Series(values.astype("int64"), index=column.index)
