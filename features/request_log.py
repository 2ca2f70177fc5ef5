"""Per-request logs: any table of requests, read through a small TOML request map.

A request log has one row per request: when it arrived, its prompt and output
tokens, optionally the prompt tokens the server found in its prefix cache, and
whatever latencies were measured. A *request map* says which column is which
(the README's "Request logs" section has a worked example)::

    name = "tenants"
    description = "one row per request, client side"
    id = "{tenant_id}-{request_idx}"      # optional: a column, or a format string over columns
    group = "tenant_id"                   # optional: per-group tables (tenant, stage, ...)
    failed = "error"                      # optional: true / non-empty text marks a failed request

    [arrival]
    column = "start_time"
    unit = "s"                            # s, ms, us, ns, or "datetime" (ISO 8601 text)

    [tokens]
    input = "num_input_tokens"
    output = "num_output_tokens"
    cached = "cached_tokens"              # optional: prompt tokens served from the prefix cache

    [measured]                             # optional: what to compare with
    unit = "ms"                           # default unit of the columns below
    per = "token"                         # what ITL and TPOT are per: "token" or "line"
    ttft = "ttft_ms"
    e2e = "e2e_ms"
    itl = "mean_itl_ms"                   # one value per request, or a list per request (pooled)
    tpot = { column = "tpot_s", unit = "s" }

    [derived]                              # as in step column maps: new columns from expressions
    e2e_ms = "ttft_ms + tpot_ms * (num_output_tokens - 1)"

    [filters]                              # keep rows whose column equals (or is in) the value
    model = "llama-2-7b"

Every key is checked (unknown keys, wrong types, units and expressions outside the
whitelist are one-line errors); ``[derived]`` and ``[filters]`` work exactly as in
step column maps (:mod:`features.colmap`, expressions read only by
:func:`search_spaces.expressions.parse_expression`). Arrival times may be absolute
(unix time) or relative: the replay starts at the first arrival.

Which ITL a column holds
------------------------
``per = "token"``: ITL samples are the gaps between consecutive output tokens and
TPOT is ``(E2E − TTFT) / (output − 1)`` — vLLM's ``vllm bench serve`` (its ``itls``
are per streamed chunk, one token per chunk with vLLM's default streaming) and most
per-request logs (``mean_itl_ms``). ``per = "line"``: inference-perf's February 2026
definition (one timestamp per streamed *line*, two per token plus ``[DONE]``, see
:mod:`evaluation.latency_metrics`), about half the per-token values. A column of one
number per request is summarised over requests (the mean of the per-request means);
a column holding a list per request (vLLM's ``itls``) is pooled, one sample per gap.
The replay computes its prediction the same way, so the comparison is like with like.

What is an error and what is a warning
--------------------------------------
Errors (one line, exit status 2): a missing file or column, a non-numeric or missing
arrival, token count or measured latency of a served request (ITL/TPOT may be missing
for one-token outputs), prompt or output tokens below 1, cached tokens below 0 or
above the prompt, negative latencies, a request id that appears twice, a row that
repeats another in every column (the same request logged twice), no request left.
Warnings (stderr, the replay goes on): rows out of arrival order (logs written as
requests *finish* are; they are replayed in arrival order) and failed requests
(``failed``), which are neither replayed nor compared. Requests arriving at the same
instant are normal (bursts) and accepted silently.

Files
-----
:func:`read_request_table` reads CSV/TSV, parquet, JSON lines, a JSON list of records,
``vllm bench serve --save-result --save-detailed`` JSON (an object of per-request
lists) and OTLP ``llm_request`` spans (:func:`features.otlp.read_request_spans`);
``.gz`` versions too. The shipped maps (``features/colmaps/requests/``) are picked by
content: ``vllm_bench`` for vLLM's JSON, ``otlp_spans`` for span traces.
"""
from __future__ import annotations

import gzip
import json
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from features.colmap import (COLMAP_DIR, Lookup, _filter, _format_rows, _known_keys, _numeric, _string, _suggest,
                             _table, _template_fields, add_derived, parse_derived_entry, parse_filters)
from features.errors import StepMLError, warn

__all__ = ["RequestMap", "RequestLog", "load_request_map", "parse_request_map", "shipped_request_maps",
           "read_request_table", "request_files", "apply_request_map", "read_request_log", "log_name",
           "METRICS", "TIME_UNITS"]

REQUEST_MAP_DIR = COLMAP_DIR / "requests"
TOP_KEYS = ("name", "description", "id", "group", "failed", "arrival", "tokens", "measured", "derived", "filters")
ARRIVAL_KEYS = ("column", "unit")
TOKEN_KEYS = ("input", "output", "cached")
#: Measured metric key → inference-perf metric name (:data:`evaluation.latency_metrics.LATENCY_METRICS`).
METRICS = {"e2e": "request_latency", "ttft": "time_to_first_token", "tpot": "time_per_output_token",
           "itl": "inter_token_latency"}
MEASURED_KEYS = (*METRICS, "unit", "per")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
DEFINITIONS = ("token", "line")
REQUEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".ndjson", ".json")
#: Names that say nothing about the experiment: the log is named after its folder instead.
GENERIC_NAMES = ("traces", "requests", "results", "log", "data")


@dataclass(frozen=True)
class RequestMap:
    """A parsed request map (module docstring)."""

    name: str
    arrival: str
    arrival_unit: str
    input: str
    output: str
    cached: str = ""
    measured: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    per: str = ""
    id: str = ""
    group: str = ""
    failed: str = ""
    derived: Mapping[str, str | Lookup] = field(default_factory=dict)
    filters: Mapping[str, list[Any]] = field(default_factory=dict)
    description: str = ""
    source: str = ""



@dataclass(frozen=True)
class RequestLog:
    """A request log in canonical columns, in arrival order, failed requests removed.

    Attributes
    ----------
    name : str
        The experiment name (from the file name, :func:`log_name`).
    source : str
        The file read.
    frame : pandas.DataFrame
        ``request_id``, ``group`` (text, ``""`` without a group column),
        ``arrival_s`` (s after the first arrival), ``input_tokens``, ``output_tokens``,
        ``cached_tokens`` and the measured ``e2e_s``, ``ttft_s``, ``tpot_s``, ``itl_s``
        (per request; NaN when not measured).
    itl_samples : list of numpy.ndarray or None
        Per request, its measured ITL samples when the column held lists (pooled).
    per : str
        ``token`` or ``line`` (what ITL and TPOT are per), ``""`` when neither is measured.
    measured : tuple of str
        The measured metrics (keys of :data:`METRICS`).
    t0 : float
        The first arrival as the log gave it (s).
    failed : int
        Failed requests left out.
    map_name : str
    notes : tuple of str
    """

    name: str
    source: str
    frame: pd.DataFrame = field(repr=False)
    itl_samples: list[np.ndarray] | None = field(default=None, repr=False)
    per: str = ""
    measured: tuple[str, ...] = ()
    t0: float = 0.0
    failed: int = 0
    map_name: str = ""
    notes: tuple[str, ...] = ()

    @property
    def groups(self) -> list[str]:
        """Group labels in order of first arrival (empty without a group column)."""
        labels = self.frame["group"].astype(str)
        return [] if (labels == "").all() else list(dict.fromkeys(labels))


# -- maps ------------------------------------------------------------------------------------------

def shipped_request_maps() -> dict[str, Path]:
    """Names and paths of the shipped request maps."""
    return {p.stem: p for p in sorted(REQUEST_MAP_DIR.glob("*.toml"))}


def load_request_map(spec: str | Path) -> RequestMap:
    """A shipped request map's name or a TOML path, parsed and checked."""
    path = Path(spec)
    maps = shipped_request_maps()
    if not (path.suffix == ".toml" and path.is_file()):
        if str(spec) not in maps:
            what = "no such file" if path.suffix == ".toml" else f"shipped: {', '.join(maps)} (or a .toml path)"
            raise StepMLError(f"unknown request map '{spec}'; {what}")
        path = maps[str(spec)]
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StepMLError(f"{path}: malformed TOML ({exc})") from None
    return parse_request_map(doc, path)


def _column(value: Any, where: str, what: str) -> str:
    return _string(value, where, what).strip()


def _unit(value: Any, where: str, what: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise StepMLError(f"{where}: {what} unit {value!r} is not one of {', '.join(allowed)}")
    return value


def parse_request_map(doc: Mapping[str, Any], path: Path | str = "request map") -> RequestMap:
    """Check a parsed TOML document and build the :class:`RequestMap`."""
    where = str(path)
    if "target" in doc or "features" in doc:
        raise StepMLError(f"{where}: this is a step column map ([target]/[features]); a request log needs a request "
                          "map ([arrival], [tokens], [measured]; README 'Request logs')")
    _known_keys(doc, TOP_KEYS, where, "")
    arrival = _table(doc, "arrival", where)
    _known_keys(arrival, ARRIVAL_KEYS, where, "[arrival] ")
    if "column" not in arrival or "unit" not in arrival:
        raise StepMLError(f"{where}: [arrival] needs column and unit (s, ms, us, ns or datetime)")
    tokens = _table(doc, "tokens", where)
    _known_keys(tokens, TOKEN_KEYS, where, "[tokens] ")
    for key in ("input", "output"):
        if key not in tokens:
            raise StepMLError(f"{where}: [tokens] needs '{key}' (the column of {key} tokens)")
    measured_doc = _table(doc, "measured", where)
    _known_keys(measured_doc, MEASURED_KEYS, where, "[measured] ")
    default_unit = measured_doc.get("unit")
    if default_unit is not None:
        _unit(default_unit, where, "[measured]", list(TIME_UNITS))
    measured: dict[str, tuple[str, str]] = {}
    for key in METRICS:
        if key not in measured_doc:
            continue
        value = measured_doc[key]
        if isinstance(value, dict):
            _known_keys(value, ("column", "unit"), where, f"[measured] {key} ")
            column = _column(value.get("column"), where, f"[measured] {key} column")
            unit = value.get("unit", default_unit)
        else:
            column, unit = _column(value, where, f"[measured] {key}"), default_unit
        if unit is None:
            raise StepMLError(f"{where}: [measured] {key} needs a unit ({', '.join(TIME_UNITS)}): "
                              f"{key} = {{ column = \"{column}\", unit = \"ms\" }} or unit = \"ms\" in [measured]")
        measured[key] = (column, _unit(unit, where, f"[measured] {key}", list(TIME_UNITS)))
    per = measured_doc.get("per", "")
    if per and per not in DEFINITIONS:
        raise StepMLError(f"{where}: [measured] per must be \"token\" or \"line\", got {per!r}")
    if not per and ("itl" in measured or "tpot" in measured):
        raise StepMLError(f"{where}: [measured] per is required with itl or tpot: \"token\" (gaps between output "
                          "tokens: vLLM bench, most logs) or \"line\" (inference-perf's Feb 2026 streamed lines, about "
                          "half); README 'Request logs'")
    derived = {name: parse_derived_entry(value, where, f"[derived] '{name}'")
               for name, value in _table(doc, "derived", where).items()}
    filters = parse_filters(doc, where)
    labels = {}
    for key in ("id", "group", "failed"):
        labels[key] = _string(doc.get(key, ""), where, key, empty=True).strip()
    if labels["id"] and "{" in labels["id"]:
        _template_fields(labels["id"], where, "id")
    return RequestMap(
        name=_string(doc.get("name", Path(where).stem), where, "name"),
        arrival=_column(arrival["column"], where, "[arrival] column"),
        arrival_unit=_unit(arrival["unit"], where, "[arrival]", [*TIME_UNITS, "datetime"]),
        input=_column(tokens["input"], where, "[tokens] input"),
        output=_column(tokens["output"], where, "[tokens] output"),
        cached=_column(tokens["cached"], where, "[tokens] cached") if "cached" in tokens else "",
        measured=measured, per=per, derived=derived, filters=filters,
        description=_string(doc.get("description", ""), where, "description", empty=True), source=where, **labels)


# -- files -----------------------------------------------------------------------------------------

def _kind_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def request_files(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files one ``--requests`` value (or several) names: files, folders (their logs, any depth), globs."""
    from features.dataset import data_entries

    out: list[Path] = []
    for entry in data_entries(spec):
        if entry.is_dir():
            found = sorted(p for p in entry.rglob("*") if p.is_file() and _kind_suffix(p) in REQUEST_SUFFIXES
                           and p.suffix.lower() in (*REQUEST_SUFFIXES, ".gz"))
            if not found:
                raise StepMLError(f"{entry}: no request logs below this folder ({', '.join(REQUEST_SUFFIXES)}, "
                                  "or .gz of them)")
            out += [p for p in found if p not in out]
        elif entry not in out:
            out.append(entry)
    return out


def log_name(path: Path) -> str:
    """The experiment name of a log: its file name without suffixes, or its folder's for a generic name."""
    stem = path.name
    for suffix in (".gz", *REQUEST_SUFFIXES):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
    if stem.lower() in GENERIC_NAMES and path.resolve().parent.name:
        return path.resolve().parent.name
    return stem


def _open_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise StepMLError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _columnar(doc: Mapping[str, Any], path: Path) -> pd.DataFrame:
    """An object of per-request lists (``vllm bench serve --save-detailed``) as a table."""
    lists = {k: v for k, v in doc.items() if isinstance(v, list)}
    n = len(lists.get("input_lens", [])) or (max((len(v) for v in lists.values()), default=0))
    columns = {k: v for k, v in lists.items() if len(v) == n}
    if not n or not columns:
        raise StepMLError(f"{path}: a JSON object without per-request lists (vllm bench serve JSON needs "
                          "--save-detailed)")
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) if any(isinstance(x, list) for x in v) else v
                          for k, v in columns.items()})
    return frame


def read_request_table(path: str | Path) -> tuple[pd.DataFrame, str]:
    """Read one request log; returns ``(table, kind)`` with kind ``table``, ``vllm_bench`` or ``otlp``."""
    path = Path(path)
    if not path.is_file():
        raise StepMLError(f"request log not found: {path}")
    kind = _kind_suffix(path)
    if kind not in REQUEST_SUFFIXES:
        raise StepMLError(f"{path}: unsupported request log (expected {', '.join(REQUEST_SUFFIXES)} or .gz of them)")
    if kind in (".csv", ".tsv", ".parquet"):
        try:
            if kind == ".parquet":
                return pd.read_parquet(path), "table"
            return pd.read_csv(path, sep="\t" if kind == ".tsv" else ","), "table"
        except Exception as exc:  # pandas and pyarrow raise many types for corrupt files
            raise StepMLError(f"{path}: cannot read table ({type(exc).__name__}: {' '.join(str(exc).split())})") \
                from None
    text = _open_text(path)
    first = text.lstrip()[:1]
    head = text.lstrip().split("\n", 1)[0]
    if '"resourceSpans"' in head:
        from features.otlp import read_request_spans

        return read_request_spans(path), "otlp"
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return _columnar(doc, path), "vllm_bench"
    if isinstance(doc, list):
        if not all(isinstance(r, dict) for r in doc):
            raise StepMLError(f"{path}: a JSON list must hold one object per request")
        return pd.DataFrame.from_records(doc), "table"
    if first != "{":
        raise StepMLError(f"{path}: not JSON, JSON lines or an OTLP trace")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise StepMLError(f"{path}:{number}: malformed JSON line ({exc})") from None
        if not isinstance(row, dict):
            raise StepMLError(f"{path}:{number}: a JSON line must be one object per request")
        rows.append(row)
    return pd.DataFrame.from_records(rows), "table"


# -- applying a map ---------------------------------------------------------------------------------

def _numbers(raw: pd.DataFrame, column: str, source: str, role: str, rows: np.ndarray) -> np.ndarray:
    """A column as floats (:func:`features.colmap._numeric`: text and booleans refused); on ``rows`` every
    value must be present and finite."""
    values = _numeric(raw, column, source, role).to_numpy(dtype=float)
    bad = rows & ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise StepMLError(f"{source}: column '{column}' ({role}) has {int(bad.sum())} missing or infinite "
                          f"value(s), first at row {first}")
    return values


def _counts(raw: pd.DataFrame, column: str, source: str, role: str, rows: np.ndarray, low: int) -> np.ndarray:
    values = _numbers(raw, column, source, role, rows)
    bad = rows & ((values < low) | (values != np.round(values)) | (values > 1e15))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise StepMLError(f"{source}: {role} ('{column}') must be whole numbers >= {low}; row {first} is "
                          f"{values[first]:g} ({int(bad.sum())} such row(s))")
    return np.where(rows, values, 0).astype(np.int64)


def _failed(raw: pd.DataFrame, column: str) -> np.ndarray:
    def one(v: Any) -> bool:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return False
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, float, np.number)):
            return v != 0
        return str(v).strip().lower() not in ("", "false", "none", "nan", "ok", "success", "0")
    return raw[column].map(one).to_numpy(dtype=bool)


def _arrivals(raw: pd.DataFrame, rmap: RequestMap, source: str, rows: np.ndarray) -> np.ndarray:
    """Arrival times in seconds (NaN outside ``rows``, where they are not needed)."""
    if rmap.arrival_unit != "datetime":
        values = _numbers(raw, rmap.arrival, source, "arrival", rows) * TIME_UNITS[rmap.arrival_unit]
        return np.where(rows, values, np.nan)
    stamps = pd.to_datetime(raw[rmap.arrival], utc=True, errors="coerce", format="ISO8601")
    bad = stamps.isna().to_numpy() & rows
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise StepMLError(f"{source}: arrival '{rmap.arrival}' is not a date and time at {int(bad.sum())} row(s), "
                          f"first {raw[rmap.arrival].iloc[first]!r} at row {first}")
    seconds = (stamps - stamps[rows].min()).dt.total_seconds().to_numpy(dtype=float)
    return np.where(rows, seconds, np.nan)


def _itl_lists(raw: pd.DataFrame, column: str, scale: float, source: str, rows: np.ndarray) -> list[np.ndarray]:
    out = []
    for i, cell in enumerate(raw[column].tolist()):
        if not rows[i]:
            out.append(np.zeros(0))
            continue
        try:
            values = np.asarray(cell, dtype=float).ravel() * scale
        except (TypeError, ValueError):
            raise StepMLError(f"{source}: ITL column '{column}' row {i} is not a list of numbers") from None
        if not np.isfinite(values).all() or (values < 0).any():
            raise StepMLError(f"{source}: ITL column '{column}' row {i} holds a negative or non-finite gap")
        out.append(values)
    return out


def _check_duplicates(raw: pd.DataFrame, ids: pd.Series | None, source: str) -> None:
    if ids is not None:
        dup = ids.duplicated(keep=False).to_numpy()
        if dup.any():
            first = ids[dup].iloc[0]
            rows = np.flatnonzero((ids == first).to_numpy())
            raise StepMLError(f"{source}: request id {first!r} appears {rows.size} times (rows "
                              f"{', '.join(map(str, rows[:5]))}); {int(dup.sum())} rows share an id")
    hashable = [c for c in raw.columns if not raw[c].map(lambda v: isinstance(v, (list, dict, np.ndarray))).any()]
    if hashable:
        dup = raw[hashable].duplicated().to_numpy()
        if dup.any():
            second = int(np.flatnonzero(dup)[0])
            key = pd.util.hash_pandas_object(raw[hashable], index=False).to_numpy()   # NaN equals NaN here
            first = int(np.flatnonzero(key == key[second])[0])
            raise StepMLError(f"{source}: rows {first} and {second} are equal in every column (the same request "
                              f"logged twice?); {int(dup.sum())} such row(s); remove the duplicates")


def apply_request_map(table: pd.DataFrame, rmap: RequestMap, source: str = "request log",
                      name: str = "requests") -> RequestLog:
    """Turn a raw request table into a :class:`RequestLog` through ``rmap`` (module docstring for the checks)."""
    raw = table.copy()
    raw.columns = [str(c) for c in raw.columns]
    if raw.empty:
        raise StepMLError(f"{source}: no requests")
    needed = [rmap.arrival, rmap.input, rmap.output, rmap.cached, rmap.group, rmap.failed,
              *(c for c, _ in rmap.measured.values()), *rmap.filters]
    needed += [f for _, f, _, _ in string.Formatter().parse(rmap.id) if f] if "{" in rmap.id else [rmap.id]
    missing = sorted({c for c in needed if c and c not in raw.columns and c not in rmap.derived})
    if missing:
        raise StepMLError(f"{source}: request map '{rmap.name}' names unknown column(s): {', '.join(missing)}"
                          f"{_suggest(missing[0], list(raw.columns))}; the log has: {', '.join(raw.columns)}")
    raw = _filter(raw, rmap, source, [c for c in rmap.filters if c not in rmap.derived])  # type: ignore[arg-type]
    add_derived(raw, rmap.derived, raw.columns.copy(), source, f"request map '{rmap.name}'")
    raw = _filter(raw, rmap, source, [c for c in rmap.filters if c in rmap.derived])  # type: ignore[arg-type]
    raw = raw.reset_index(drop=True)
    ids = None
    if rmap.id:
        ids = (_format_rows(raw, rmap.id, f"request map '{rmap.name}' id") if "{" in rmap.id
               else raw[rmap.id].astype(str)).reset_index(drop=True)
    _check_duplicates(raw, ids, source)
    failed = _failed(raw, rmap.failed) if rmap.failed else np.zeros(len(raw), dtype=bool)
    ok = ~failed
    if not ok.any():
        raise StepMLError(f"{source}: every request failed ('{rmap.failed}'): nothing to replay")
    arrival = _arrivals(raw, rmap, source, ok)
    inp = _counts(raw, rmap.input, source, "input tokens", ok, 1)
    out = _counts(raw, rmap.output, source, "output tokens", ok, 1)
    cached = _counts(raw, rmap.cached, source, "cached tokens", ok, 0) if rmap.cached else np.zeros(len(raw), np.int64)
    over = ok & (cached > inp)
    if over.any():
        first = int(np.flatnonzero(over)[0])
        raise StepMLError(f"{source}: cached tokens exceed the prompt at {int(over.sum())} row(s), first row {first} "
                          f"({cached[first]} > {inp[first]})")
    frame = pd.DataFrame({"request_id": ids.to_numpy() if ids is not None else np.arange(len(raw)).astype(str),
                          "group": raw[rmap.group].astype(str).to_numpy() if rmap.group else "",
                          "arrival_s": arrival, "input_tokens": inp, "output_tokens": out, "cached_tokens": cached})
    samples = None
    for key, (column, unit) in rmap.measured.items():
        scale = TIME_UNITS[unit]
        required = ok & ~((out <= 1) & (key in ("itl", "tpot")))      # no gap in a one-token output
        if key == "itl" and raw[column].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            samples = _itl_lists(raw, column, scale, source, ok)
            values = np.array([s.mean() if s.size else np.nan for s in samples])
        else:
            values = _numbers(raw, column, source, f"measured {key}", required) * scale
        if (values[ok] < 0).any():
            first = int(np.flatnonzero(ok & (values < 0))[0])
            raise StepMLError(f"{source}: measured {key} ('{column}') is negative at row {first} ({values[first]:g} s)")
        frame[f"{key}_s"] = values
    for key in METRICS:
        if f"{key}_s" not in frame.columns:
            frame[f"{key}_s"] = np.nan
    notes = []
    if failed.any():
        notes.append(f"{int(failed.sum())} failed request(s) ('{rmap.failed}') are neither replayed nor compared")
        warn(f"{source}: {notes[-1]}")
    keep = np.flatnonzero(ok)
    frame = frame.iloc[keep].reset_index(drop=True)
    if samples is not None:
        samples = [samples[i] for i in keep]
    back = int(np.count_nonzero(np.diff(frame["arrival_s"].to_numpy()) < 0))
    if back:
        notes.append(f"{back} row(s) out of arrival order (a log written as requests finish?): replayed in arrival "
                     "order")
        warn(f"{source}: {notes[-1]}")
    order = np.argsort(frame["arrival_s"].to_numpy(), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    if samples is not None:
        samples = [samples[i] for i in order]
    t0 = float(frame["arrival_s"].iloc[0])
    frame["arrival_s"] = frame["arrival_s"] - t0
    return RequestLog(name, source, frame, samples, rmap.per, tuple(rmap.measured), t0, int(failed.sum()), rmap.name,
                      tuple(notes))


def detect_request_map(kind: str, path: Path) -> RequestMap:
    """The shipped map for a log read as ``kind`` (vLLM bench JSON, OTLP spans), else an error asking for one."""
    if kind in ("vllm_bench", "otlp"):
        return load_request_map("vllm_bench" if kind == "vllm_bench" else "otlp_spans")
    raise StepMLError(f"{path}: which column holds what? give --colmap MAP.toml (a request map, README 'Request "
                      f"logs'); shipped: {', '.join(shipped_request_maps())}")


def read_request_log(path: str | Path, rmap: RequestMap | str | Path | None = None,
                     name: str | None = None) -> RequestLog:
    """Read one log file through ``rmap`` (a map, its name or path; default: picked by the file's content)."""
    path = Path(path)
    table, kind = read_request_table(path)
    if rmap is None:
        rmap = detect_request_map(kind, path)
    elif not isinstance(rmap, RequestMap):
        rmap = load_request_map(rmap)
    return apply_request_map(table, rmap, str(path), name or log_name(path))
