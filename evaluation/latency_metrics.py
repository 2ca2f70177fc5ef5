"""Request-latency metrics exactly as inference-perf reported them for the BLIS experiments.

The measured ``results/*_lifecycle_metrics.json`` files of the BLIS experiments were
written by the inference-perf release current in February 2026
(``kubernetes-sigs/inference-perf``; its ``results/config.yaml`` dump has no
``data.trace``, no ``lora_traffic_split`` and no ``enable_multi_turn_chat``). This
module recomputes the same numbers from per-request times so a replay is
compared with the measurement like with like.

How that inference-perf version measured a streamed completion
-----------------------------------------------------------------
``apis/completion.py`` (``process_response``) iterated ``response.content`` — aiohttp's
stream reader, which yields one *line* at a time — and appended
``time.perf_counter()`` to ``output_token_times`` **for every line, before skipping
empty ones**. vLLM sends each token as one server-sent event ``data: {...}\\n\\n``,
i.e. two lines (the JSON line and the blank separator), and ends the stream with
``data: [DONE]\\n\\n``. So a request with ``n`` output tokens records
``N = 2 (n + 1)`` timestamps, and the two lines of an event arrive back to back
(a few µs apart). ``reportgen/base.py`` then computed, per successful request
(``start``/``end``: client send time and end of response processing):

- ``request_latency`` = ``end - start``;
- ``time_to_first_token`` = ``t[0] - start``;
- ``time_per_output_token`` = ``(t[-1] - t[0]) / (len(t) - 1)`` — divided by the
  number of *timestamps* minus one, not by the token count;
- ``inter_token_latency`` = every ``t[i+1] - t[i]`` of every request, pooled
  (one sample per line gap, not one per request);
- ``normalized_time_per_output_token`` = ``(end - start) / output_tokens`` (0 when
  the count is 0), with ``output_tokens`` the client's re-tokenisation of the
  returned text;
- throughput: sums divided by ``max(end) - min(start)`` of the window
  (``requests_per_sec`` = successes / that span);

and summarised each list by its mean and ``np.percentile`` (linear) at
0.1, 1, 5, 10, 25, 50 ("median"), 75, 90, 95, 99 and 99.9.

The published summaries confirm it (``(E2E − TTFT) / TPOT`` uses the means):

================================  ======  =====================  ============  ================
experiment / window               output  (E2E − TTFT) / TPOT    2(n + 1) − 1  TPOT / ITL − 1
================================  ======  =====================  ============  ================
llama-2-70b general, stage 0      248     497.18                 497           2.5e-08
llama-2-70b general, stage 1      248     497.17                 497           2.2e-16
llama-2-70b-hf codegen, stage 1   247     495.17                 495           -9.0e-08
llama-2-70b roleplay              251     503.23                 503           -5.9e-08
codellama-34b general, stage 1    248     497.19                 497           2.1e-06
================================  ======  =====================  ============  ================

- The divisor of TPOT is ``2 (n + 1) − 1`` in every non-overloaded experiment; the
  remainder (``(E2E − TTFT) − TPOT · (2n + 1)``) is the 1.6–2.5 ms between the last
  line and ``end`` (re-tokenising prompt and output). Dividing by ``n − 1``
  instead would give TPOT ≈ 18.7 ms for 70B stage 0, not the published 9.29 ms.
- The mean ITL equals the mean TPOT to 7–16 digits: pooled deltas average to
  ``Σ (t[-1] - t[0]) / Σ (N - 1)``, which equals the mean of the per-request ratios
  only when every request has the same ``N`` — the timestamp count does not
  depend on the text, so it counts lines, not re-tokenised tokens.
- Half of the deltas are the line-to-line gap inside one event: ITL p10/p25/median
  are 9.6 µs / 23 µs / 41 µs for 70B stage 0 while p75/p90 are 18.5 / 19.1 ms (the
  engine step). ``n + 2`` of the ``2n + 1`` gaps of a request are intra-burst gaps.

So a per-token "decode ITL" ``(E2E − TTFT) / (n − 1)`` is about **twice** the
published ``inter_token_latency``/``time_per_output_token`` means; never compare
the two. Later inference-perf releases changed these definitions (April–June 2026:
chunk-based token counting, #410; content-only SSE timestamps, #452; BOS-free
per-chunk counts, #566); this module reproduces the February 2026 one.

Predicted times are turned into the same per-line timestamps by
:func:`sse_line_times`: every token event and the final ``[DONE]`` event give
``lines_per_event`` lines; lines available at the same instant are spaced by
``line_gap_s`` (0 by default, so the intra-event ITL samples are 0 and the ITL
median is not comparable — compare ITL means and upper percentiles).

Everything here is a pure function of arrays; summaries are frozen dataclasses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from features.errors import StepMLError

__all__ = [
    "REPORT_PERCENTILES",
    "LATENCY_METRICS",
    "MetricSummary",
    "LifecycleSummary",
    "Ragged",
    "summarize_values",
    "sse_line_times",
    "request_latency_values",
    "summarize_lifecycle",
    "lifecycle_from_values",
    "parse_lifecycle_report",
    "read_lifecycle_report",
    "relative_error",
    "end_tail_s",
]

#: Percentiles inference-perf reports (50 is reported as "median").
REPORT_PERCENTILES: tuple[float, ...] = (0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)

#: The latency metrics of a lifecycle report, in report order.
LATENCY_METRICS: tuple[str, ...] = (
    "request_latency",
    "time_to_first_token",
    "time_per_output_token",
    "inter_token_latency",
    "normalized_time_per_output_token",
)


@dataclass(frozen=True)
class MetricSummary:
    """Distribution summary of one latency metric (seconds).

    All statistics are NaN when there are no samples.
    """

    count: int
    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def empty(cls) -> "MetricSummary":
        nan = float("nan")
        return cls(0, nan, nan, nan, nan, nan, nan)

    @classmethod
    def from_report(cls, block: Mapping[str, Any] | None, count: int = -1) -> "MetricSummary":
        """Parse one inference-perf summary dict (``mean``, ``median``, ``p90``, ``p99``, ...).

        ``count`` is not in the dict; pass it when known (-1 means unknown).
        """
        if not block:
            return cls.empty()

        def get(key: str, *alts: str) -> float:
            for k in (key, *alts):
                if k in block and block[k] is not None:
                    return float(block[k])
            return float("nan")

        return cls(int(count), get("mean"), get("median", "p50"), get("p90"), get("p99"), get("min"), get("max"))

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def summarize_values(values: np.ndarray | Sequence[float]) -> MetricSummary:
    """Mean and linear-interpolated percentiles (``np.percentile``), as inference-perf summarises."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return MetricSummary.empty()
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return MetricSummary(int(arr.size), float(np.mean(arr)), float(p50), float(p90), float(p99),
                         float(np.min(arr)), float(np.max(arr)))


@dataclass(frozen=True)
class LifecycleSummary:
    """One lifecycle report window (a stage or the whole run), successes only.

    Latencies in seconds; throughputs per second of the window span
    ``max(end) - min(start)``. ``failures`` counts the failed requests and
    ``failure_latency`` summarises their ``end - start`` (inference-perf's
    ``failures.request_latency``).
    """

    count: int
    request_latency: MetricSummary
    time_to_first_token: MetricSummary
    time_per_output_token: MetricSummary
    inter_token_latency: MetricSummary
    normalized_time_per_output_token: MetricSummary
    requests_per_sec: float = float("nan")
    input_tokens_per_sec: float = float("nan")
    output_tokens_per_sec: float = float("nan")
    failures: int = 0
    failure_latency: MetricSummary = field(default_factory=MetricSummary.empty)

    @property
    def failure_fraction(self) -> float:
        """Failed over all requests of the window (NaN when there are none)."""
        total = self.count + self.failures
        return self.failures / total if total else float("nan")

    def metric(self, name: str) -> MetricSummary:
        """A latency metric by report name (``request_latency``, ``time_to_first_token``, ...)."""
        if name not in LATENCY_METRICS:
            raise StepMLError(f"unknown latency metric '{name}'; valid: {', '.join(LATENCY_METRICS)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "failures": self.failures,
                               "failure_fraction": self.failure_fraction,
                               "failure_latency": self.failure_latency.to_dict()}
        for name in LATENCY_METRICS:
            out[name] = self.metric(name).to_dict()
        out["throughput"] = {"requests_per_sec": self.requests_per_sec,
                             "input_tokens_per_sec": self.input_tokens_per_sec,
                             "output_tokens_per_sec": self.output_tokens_per_sec}
        return out


# -- ragged per-request time series ------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Ragged:
    """Per-request float series stored flat: ``values`` and per-request ``lengths``."""

    values: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_list(cls, series: Sequence[np.ndarray]) -> "Ragged":
        lengths = np.fromiter((np.size(s) for s in series), dtype=np.int64, count=len(series))
        values = (np.concatenate([np.asarray(s, dtype=float).ravel() for s in series])
                  if len(series) and lengths.sum() else np.zeros(0))
        return cls(values, lengths)

    @property
    def offsets(self) -> np.ndarray:
        """Start index of each request in ``values`` (length ``n + 1``)."""
        return np.concatenate(([0], np.cumsum(self.lengths)))

    def __len__(self) -> int:
        return int(self.lengths.size)

    def to_list(self) -> list[np.ndarray]:
        return np.split(self.values, np.cumsum(self.lengths)[:-1]) if len(self) else []

    def shifted(self, delta: np.ndarray | float) -> "Ragged":
        """Each request's series plus its own ``delta`` (scalar or one per request)."""
        d = np.broadcast_to(np.asarray(delta, dtype=float), (len(self),))
        return Ragged(self.values + np.repeat(d, self.lengths), self.lengths)

    def subset(self, mask: np.ndarray) -> "Ragged":
        """The series of the requests where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        keep = np.repeat(mask, self.lengths)
        return Ragged(self.values[keep], self.lengths[mask])


def _as_ragged(series: Ragged | Sequence[np.ndarray]) -> Ragged:
    return series if isinstance(series, Ragged) else Ragged.from_list(series)


def sse_line_times(token_times: Ragged | Sequence[np.ndarray], *, lines_per_event: int = 2,
                   done_event: bool = True, line_gap_s: float = 0.0) -> Ragged:
    """Client-side line timestamps of streamed responses, as inference-perf recorded them.

    Every token emission time is one server-sent event; with ``done_event`` a
    ``[DONE]`` event follows the last token at the same instant. Each event is
    ``lines_per_event`` lines (2: ``data: ...`` and the blank separator). Lines
    that become available at the same instant are read back to back, ``line_gap_s``
    apart, in order.

    Parameters
    ----------
    token_times : Ragged or sequence of arrays
        Per request, the sorted times (s) at which its tokens reach the client.
    lines_per_event : int
        Lines per event (>= 1).
    done_event : bool
        Append the ``[DONE]`` event.
    line_gap_s : float
        Spacing of lines available at the same time (>= 0).

    Returns
    -------
    Ragged
        ``lines_per_event * (n + done_event)`` timestamps per request with ``n`` tokens
        (none for a request with no tokens).
    """
    if lines_per_event < 1:
        raise StepMLError(f"lines_per_event must be >= 1, got {lines_per_event}")
    if not line_gap_s >= 0:
        raise StepMLError(f"line_gap_s must be >= 0, got {line_gap_s}")
    tok = _as_ragged(token_times)
    n = tok.lengths
    has = n > 0
    events_per = n + (has & done_event)
    if done_event and has.any():
        ends = np.cumsum(n)[has] - 1                   # index of each request's last token
        ins = np.cumsum(n)[has]                        # insert the [DONE] copy after it
        ev_values = np.insert(tok.values, ins, tok.values[ends])
    else:
        ev_values = tok.values
    values = np.repeat(ev_values, lines_per_event)
    lengths = events_per * lines_per_event
    if line_gap_s > 0 and values.size:
        # rank of each line within its run of equal times (runs never cross requests:
        # a new request starts a new run even at an equal time)
        starts = np.zeros(values.size, dtype=bool)
        starts[0] = True
        starts[1:] = values[1:] != values[:-1]
        req_start = np.cumsum(lengths)[:-1]
        starts[req_start[req_start < values.size]] = True
        idx = np.arange(values.size)
        run_first = np.maximum.accumulate(np.where(starts, idx, 0))
        values = values + (idx - run_first) * line_gap_s
    return Ragged(values, lengths)


# -- per-request values and summaries --------------------------------------------------------

def request_latency_values(start_s: np.ndarray, end_s: np.ndarray, line_times: Ragged | Sequence[np.ndarray],
                           output_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Per-request metric samples by inference-perf's definitions (module docstring).

    Parameters
    ----------
    start_s, end_s : array_like
        Client send time and end of response processing per request (s).
    line_times : Ragged or sequence of arrays
        Per request, the recorded line timestamps (:func:`sse_line_times`).
    output_tokens : array_like
        Output token count per request (the NTPOT denominator).

    Returns
    -------
    dict
        ``request_latency`` and ``normalized_time_per_output_token`` (one per request),
        ``time_to_first_token`` and ``time_per_output_token`` (one per request with at
        least two timestamps) and ``inter_token_latency`` (every consecutive gap, pooled).
    """
    start = np.asarray(start_s, dtype=float).ravel()
    end = np.asarray(end_s, dtype=float).ravel()
    out = np.asarray(output_tokens, dtype=float).ravel()
    lines = _as_ragged(line_times)
    if not (start.size == end.size == out.size == len(lines)):
        raise StepMLError(f"request_latency_values: lengths differ (start {start.size}, end {end.size}, "
                          f"output_tokens {out.size}, line series {len(lines)})")
    latency = end - start
    with np.errstate(divide="ignore", invalid="ignore"):
        ntpot = np.where(out > 0, latency / np.where(out > 0, out, 1.0), 0.0)
    n = lines.lengths
    offs = lines.offsets
    stream = n > 1
    first = lines.values[offs[:-1][stream]] if stream.any() else np.zeros(0)
    last = lines.values[offs[1:][stream] - 1] if stream.any() else np.zeros(0)
    ttft = first - start[stream]
    tpot = (last - first) / (n[stream] - 1)
    if lines.values.size > 1:
        d = np.diff(lines.values)
        # drop the gaps that cross from one request to the next
        cross = np.cumsum(n)[:-1] - 1
        keep = np.ones(d.size, dtype=bool)
        keep[cross[(cross >= 0) & (cross < d.size)]] = False
        itl = d[keep]
    else:
        itl = np.zeros(0)
    return {"request_latency": latency, "time_to_first_token": ttft, "time_per_output_token": tpot,
            "inter_token_latency": itl, "normalized_time_per_output_token": ntpot}


def summarize_lifecycle(start_s: np.ndarray, end_s: np.ndarray, line_times: Ragged | Sequence[np.ndarray],
                        input_tokens: np.ndarray, output_tokens: np.ndarray) -> LifecycleSummary:
    """A :class:`LifecycleSummary` of successful requests (one report window).

    Throughputs divide by ``max(end) - min(start)`` of the requests given.
    """
    vals = request_latency_values(start_s, end_s, line_times, output_tokens)
    return lifecycle_from_values(vals, start_s, end_s, input_tokens, output_tokens)


def lifecycle_from_values(values: Mapping[str, np.ndarray | None], start_s: np.ndarray, end_s: np.ndarray,
                          input_tokens: np.ndarray, output_tokens: np.ndarray) -> LifecycleSummary:
    """A :class:`LifecycleSummary` of successful requests from per-request metric samples.

    Parameters
    ----------
    values : mapping
        Metric name (:data:`LATENCY_METRICS`) → samples (s); a missing or None
        metric is summarised as empty (NaN).
    start_s, end_s : array_like
        Send and end time of each request; throughputs divide by
        ``max(end) - min(start)`` (NaN when an end is unknown).
    input_tokens, output_tokens : array_like
        Token counts summed into the token throughputs.
    """
    unknown = [k for k in values if k not in LATENCY_METRICS]
    if unknown:
        raise StepMLError(f"lifecycle_from_values: unknown metric(s) {', '.join(unknown)}")
    start = np.asarray(start_s, dtype=float).ravel()
    end = np.asarray(end_s, dtype=float).ravel()
    n = int(start.size)
    span = float(np.max(end) - np.min(start)) if n else float("nan")
    ok = n > 0 and span > 0

    def rate(total: float) -> float:
        return total / span if ok else float("nan")

    inp = float(np.sum(np.asarray(input_tokens, dtype=float)))
    outp = float(np.sum(np.asarray(output_tokens, dtype=float)))
    summaries = (summarize_values(values[m]) if values.get(m) is not None else MetricSummary.empty()
                 for m in LATENCY_METRICS)
    return LifecycleSummary(n, *summaries, requests_per_sec=rate(n), input_tokens_per_sec=rate(inp),
                            output_tokens_per_sec=rate(outp))


# -- published reports -------------------------------------------------------------------------

def parse_lifecycle_report(report: Mapping[str, Any], source: str = "report") -> LifecycleSummary:
    """A :class:`LifecycleSummary` from a parsed ``*_lifecycle_metrics.json`` object."""
    if not isinstance(report, Mapping) or "successes" not in report:
        raise StepMLError(f"{source}: not an inference-perf lifecycle report (no 'successes')")
    succ = report.get("successes") or {}
    count = int(succ.get("count") or 0)
    lat = succ.get("latency") or {}
    thr = succ.get("throughput") or {}
    fail = report.get("failures") or {}
    per_token = {"inter_token_latency": -1}
    summaries = [MetricSummary.from_report(lat.get(m), per_token.get(m, count)) for m in LATENCY_METRICS]
    nan = float("nan")
    return LifecycleSummary(count, *summaries,
                            requests_per_sec=float(thr.get("requests_per_sec", nan) or nan),
                            input_tokens_per_sec=float(thr.get("input_tokens_per_sec", nan) or nan),
                            output_tokens_per_sec=float(thr.get("output_tokens_per_sec", nan) or nan),
                            failures=int(fail.get("count") or 0),
                            failure_latency=MetricSummary.from_report(fail.get("request_latency"),
                                                                      int(fail.get("count") or 0)))


def read_lifecycle_report(path: str | Path) -> LifecycleSummary:
    """Read one ``results/*_lifecycle_metrics.json`` file."""
    from features.io import read_json

    return parse_lifecycle_report(read_json(path, "lifecycle report"), str(path))


def relative_error(predicted: float, measured: float) -> float:
    """Signed relative error in percent, ``100 (p − m) / m`` (NaN when undefined)."""
    if not (math.isfinite(predicted) and math.isfinite(measured)) or measured == 0:
        return float("nan")
    return 100.0 * (predicted - measured) / measured


def end_tail_s(summary: LifecycleSummary, output_tokens: float, lines_per_event: int = 2) -> float:
    """Mean time from a request's last recorded line to its end, implied by a report.

    With ``N = lines_per_event · (n + 1)`` timestamps per request (module docstring),
    ``E2E − TTFT − TPOT · (N − 1)`` is the mean gap between the last line and
    ``end`` (1.6–2.5 ms in the BLIS reports). Valid only when every request has
    ``n = output_tokens`` tokens; NaN when the report lacks a metric.
    """
    n_lines = lines_per_event * (float(output_tokens) + 1)
    return (summary.request_latency.mean - summary.time_to_first_token.mean
            - summary.time_per_output_token.mean * (n_lines - 1))
