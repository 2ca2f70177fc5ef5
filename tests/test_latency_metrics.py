"""Pins inference-perf's (February 2026) request-latency definitions on hand-made timestamps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.latency_metrics import (
    LATENCY_METRICS,
    LifecycleSummary,
    MetricSummary,
    Ragged,
    end_tail_s,
    parse_lifecycle_report,
    read_lifecycle_report,
    relative_error,
    request_latency_values,
    sse_line_times,
    summarize_lifecycle,
    summarize_values,
)
from features.errors import StepMLError


def test_summary_is_mean_and_linear_percentiles():
    s = summarize_values([1.0, 2.0, 3.0, 4.0])
    assert s.count == 4
    assert s.mean == pytest.approx(2.5)
    assert s.median == pytest.approx(2.5)
    assert s.p90 == pytest.approx(3.7)        # numpy "linear": 1 + 0.9 * 3
    assert s.p99 == pytest.approx(3.97)
    assert (s.min, s.max) == (1.0, 4.0)
    empty = summarize_values([])
    assert empty.count == 0 and np.isnan(empty.mean) and np.isnan(empty.p99)


def test_sse_lines_two_per_event_plus_done():
    lines = sse_line_times([np.array([1.0, 2.0, 4.0])])
    assert lines.lengths.tolist() == [8]                # 2 * (3 tokens + [DONE])
    assert lines.values.tolist() == [1, 1, 2, 2, 4, 4, 4, 4]
    gapped = sse_line_times([np.array([1.0, 2.0, 4.0])], line_gap_s=0.001)
    assert gapped.values == pytest.approx([1, 1.001, 2, 2.001, 4, 4.001, 4.002, 4.003])
    # no [DONE], one line per event; a request without tokens records nothing
    plain = sse_line_times([np.array([1.0, 2.0]), np.zeros(0)], lines_per_event=1, done_event=False)
    assert plain.lengths.tolist() == [2, 0]
    assert plain.values.tolist() == [1.0, 2.0]


def test_equal_times_of_two_requests_do_not_share_a_burst():
    lines = sse_line_times([np.array([1.0]), np.array([1.0])], line_gap_s=0.5)
    assert lines.values.tolist() == [1.0, 1.5, 2.0, 2.5, 1.0, 1.5, 2.0, 2.5]


def test_request_metrics_by_line_timestamps():
    # one request sent at 0, tokens reach the client at 1, 2, 4 s, request ends at 4.5 s
    lines = sse_line_times([np.array([1.0, 2.0, 4.0])])
    vals = request_latency_values([0.0], [4.5], lines, [3])
    assert vals["request_latency"].tolist() == [4.5]
    assert vals["time_to_first_token"].tolist() == [1.0]
    # (last line - first line) / (number of lines - 1) = 3 / 7, not 3 / (3 - 1)
    assert vals["time_per_output_token"] == pytest.approx([3.0 / 7.0])
    # every line gap, intra-event gaps included
    assert vals["inter_token_latency"].tolist() == [0, 1, 0, 2, 0, 0, 0]
    assert vals["normalized_time_per_output_token"] == pytest.approx([1.5])
    # mean ITL == TPOT for one request
    assert np.mean(vals["inter_token_latency"]) == pytest.approx(3.0 / 7.0)


def test_itl_is_pooled_without_cross_request_gaps():
    lines = Ragged.from_list([np.array([0.0, 1.0]), np.array([10.0, 13.0, 14.0])])
    vals = request_latency_values([0.0, 9.0], [1.0, 14.0], lines, [2, 3])
    assert vals["inter_token_latency"].tolist() == [1.0, 3.0, 1.0]     # never 10 - 1
    assert vals["time_per_output_token"] == pytest.approx([1.0, 2.0])
    # equal line counts: pooled ITL mean == mean TPOT; different counts: not
    assert np.mean(vals["inter_token_latency"]) != pytest.approx(np.mean(vals["time_per_output_token"]))
    same = request_latency_values([0.0, 0.0], [3.0, 5.0],
                                  Ragged.from_list([np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0])]), [2, 2])
    assert np.mean(same["inter_token_latency"]) == pytest.approx(np.mean(same["time_per_output_token"]))


def test_short_streams_and_zero_output_tokens():
    lines = Ragged.from_list([np.array([0.5]), np.zeros(0), np.array([1.0, 2.0])])
    vals = request_latency_values([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], lines, [1, 0, 2])
    assert vals["request_latency"].tolist() == [1.0, 2.0, 3.0]
    assert vals["time_to_first_token"].tolist() == [1.0]        # only streams with >= 2 timestamps
    assert vals["time_per_output_token"].tolist() == [1.0]
    assert vals["normalized_time_per_output_token"].tolist() == [1.0, 0.0, 1.5]
    with pytest.raises(StepMLError, match="lengths differ"):
        request_latency_values([0.0], [1.0, 2.0], lines, [1])


def test_lifecycle_summary_throughput_over_the_window_span():
    lines = sse_line_times([np.array([1.0, 2.0]), np.array([3.0, 4.0])])
    summ = summarize_lifecycle([0.0, 2.0], [2.0, 5.0], lines, [100, 300], [2, 2])
    assert summ.count == 2
    assert summ.requests_per_sec == pytest.approx(2 / 5.0)           # span max(end) - min(start) = 5
    assert summ.input_tokens_per_sec == pytest.approx(400 / 5.0)
    assert summ.output_tokens_per_sec == pytest.approx(4 / 5.0)
    assert summ.time_to_first_token.mean == pytest.approx(1.0)
    assert summ.request_latency.mean == pytest.approx(2.5)
    # 2 tokens -> 6 lines -> 5 gaps: TPOT = 1 / 5 for both
    assert summ.time_per_output_token.mean == pytest.approx(0.2)
    assert summ.inter_token_latency.count == 10
    d = summ.to_dict()
    assert set(LATENCY_METRICS) <= set(d) and d["throughput"]["requests_per_sec"] == pytest.approx(0.4)


def _report(e2e: float, ttft: float, tpot: float, count: int = 10) -> dict:
    block = lambda v: {"mean": v, "min": v, "median": v, "p90": v, "p99": v, "max": v}  # noqa: E731
    return {"load_summary": {"count": count},
            "successes": {"count": count,
                          "latency": {"request_latency": block(e2e), "time_to_first_token": block(ttft),
                                      "time_per_output_token": block(tpot), "inter_token_latency": block(tpot),
                                      "normalized_time_per_output_token": block(e2e / 3)},
                          "throughput": {"requests_per_sec": 2.0, "input_tokens_per_sec": 10.0,
                                         "output_tokens_per_sec": 3.0}},
            "failures": {"count": 1, "request_latency": None, "prompt_len": None}}


def test_parse_and_read_report(tmp_path):
    summ = parse_lifecycle_report(_report(4.5, 1.0, 3.0 / 7.0))
    assert isinstance(summ, LifecycleSummary)
    assert summ.count == 10 and summ.failures == 1
    assert summ.request_latency == MetricSummary(10, 4.5, 4.5, 4.5, 4.5, 4.5, 4.5)
    assert summ.inter_token_latency.count == -1              # per-gap count is not published
    assert summ.requests_per_sec == 2.0
    path = tmp_path / "stage_0_lifecycle_metrics.json"
    path.write_text(json.dumps(_report(4.5, 1.0, 0.5)))
    assert read_lifecycle_report(path).time_per_output_token.mean == 0.5
    with pytest.raises(StepMLError, match="not found"):
        read_lifecycle_report(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(StepMLError, match="malformed"):
        read_lifecycle_report(tmp_path / "bad.json")
    with pytest.raises(StepMLError, match="successes"):
        parse_lifecycle_report({"load_summary": {}})


def test_end_tail_from_a_report():
    # 3 tokens: 8 lines, TPOT = 3 / 7, E2E - TTFT = 3 s of lines + 0.5 s tail
    summ = parse_lifecycle_report(_report(4.5, 1.0, 3.0 / 7.0))
    assert end_tail_s(summ, 3) == pytest.approx(0.5)


def test_relative_error():
    assert relative_error(1.1, 1.0) == pytest.approx(10.0)
    assert relative_error(0.9, 1.0) == pytest.approx(-10.0)
    assert np.isnan(relative_error(1.0, 0.0)) and np.isnan(relative_error(float("nan"), 1.0))


def test_published_reports_follow_the_line_definition(real_path):
    """70B general: (E2E - TTFT) / TPOT = 2 (248 + 1) - 1 + a ~2 ms tail; mean ITL == mean TPOT."""
    exp = real_path("blis/experiments/20260217-202857-llama-2-70b-tp4-general")
    for stage in (0, 1):
        summ = read_lifecycle_report(exp / "results" / f"stage_{stage}_lifecycle_metrics.json")
        ratio = (summ.request_latency.mean - summ.time_to_first_token.mean) / summ.time_per_output_token.mean
        assert 497.0 < ratio < 497.5
        assert summ.inter_token_latency.mean == pytest.approx(summ.time_per_output_token.mean, rel=1e-6)
        assert 0.001 < end_tail_s(summ, 248) < 0.003
        assert summ.inter_token_latency.median < 1e-4 < 0.01 < summ.inter_token_latency.p90
