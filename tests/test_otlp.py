"""features.otlp: step events and request spans read from small OTLP-JSON files written here."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from features.errors import StepMLError
from features.otlp import (ReadStats, attribute_value, attributes_dict, iter_documents, read_request_spans,
                           read_step_events)
from features.schema import BATCH_SUMMARY_COLUMNS


def test_attribute_value_decodes_every_otlp_kind():
    assert attribute_value({"intValue": "29"}) == 29
    assert isinstance(attribute_value({"intValue": "29"}), int)
    assert attribute_value({"intValue": 29}) == 29
    assert attribute_value({"intValue": "-1771000000000000000"}) == -1771000000000000000
    assert attribute_value({"doubleValue": 0.02}) == 0.02
    assert attribute_value({"stringValue": "x"}) == "x"
    assert attribute_value({"boolValue": True}) is True
    assert attribute_value({"arrayValue": {"values": [{"intValue": "1"}, {"doubleValue": 2.5}]}}) == [1, 2.5]
    assert attribute_value({}) is None
    assert attributes_dict([{"key": "a", "value": {"intValue": "3"}}, {"key": "b"}]) == {"a": 3, "b": None}
    assert attributes_dict(None) == {}


def test_step_events_values_and_dtypes(tmp_path, make_steps, write_otlp):
    rows = make_steps(5, start_id=5, id_step=[1, 3, 1, 2])
    path = write_otlp(tmp_path / "traces.json", rows, per_line=2)
    frame = read_step_events(path)
    assert list(frame.columns) == list(BATCH_SUMMARY_COLUMNS)
    assert len(frame) == 5
    for name, kind in BATCH_SUMMARY_COLUMNS.items():
        assert frame[name].dtype == (np.int64 if kind == "int" else np.float64), name
    expected = pd.DataFrame(rows)
    for name in BATCH_SUMMARY_COLUMNS:
        np.testing.assert_array_equal(frame[name].to_numpy(), expected[name].to_numpy(), err_msg=name)
    assert frame["step.id"].tolist() == [5, 6, 9, 10, 12]
    # 19-digit nanosecond timestamps survive exactly (no float round trip).
    assert int(frame["step.ts_start_ns"].iloc[-1]) == rows[-1]["step.ts_start_ns"]
    assert frame["kv.usage_gpu_ratio"].tolist() == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])


def test_spans_and_events_of_other_names_are_ignored(tmp_path, make_steps, write_otlp):
    rows = make_steps(4)
    noisy = read_step_events(write_otlp(tmp_path / "a" / "traces.json", rows, noise=True))
    clean = read_step_events(write_otlp(tmp_path / "b" / "traces.json", rows, noise=False))
    assert len(noisy) == 4
    assert 999_999 not in noisy["step.id"].tolist()          # the step.OTHER event
    pd.testing.assert_frame_equal(noisy, clean)


def test_gzip_and_plain_files_read_the_same(tmp_path, make_steps, write_otlp):
    rows = make_steps(7)
    plain = write_otlp(tmp_path / "p" / "traces.json", rows, per_line=3)
    packed = write_otlp(tmp_path / "g" / "traces.json.gz", rows, per_line=3)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    pd.testing.assert_frame_equal(read_step_events(plain), read_step_events(packed))
    assert len(read_step_events(packed)) == 7


def test_malformed_json_line_names_file_and_line(tmp_path, make_steps, write_otlp):
    path = write_otlp(tmp_path / "traces.json", make_steps(6), per_line=2, insert_lines={3: '{"resourceSpans": ['})
    with pytest.raises(StepMLError, match=r"traces\.json:3: malformed JSON") as info:
        read_step_events(path)
    assert str(path) in str(info.value)
    assert "--skip-bad-lines" in str(info.value)


def test_malformed_line_in_gzip_names_line(tmp_path, make_steps, write_otlp):
    path = write_otlp(tmp_path / "traces.json.gz", make_steps(4), per_line=1, insert_lines={2: "not json"})
    with pytest.raises(StepMLError, match=r"traces\.json\.gz:2: malformed JSON"):
        read_step_events(path)


@pytest.mark.parametrize("bad", ["[1, 2, 3]", '"text"', "42"])
def test_line_that_is_not_an_object_is_malformed(tmp_path, make_steps, write_otlp, bad):
    path = write_otlp(tmp_path / "traces.json", make_steps(2), per_line=1, insert_lines={1: bad})
    with pytest.raises(StepMLError, match=r"traces\.json:1: malformed JSON line \(not a JSON object\)"):
        read_step_events(path)


def test_non_utf8_line_is_reported_with_its_line_number(tmp_path, make_steps, write_otlp):
    path = write_otlp(tmp_path / "traces.json", make_steps(2), per_line=1)
    path.write_bytes(path.read_bytes() + b"\xff\xfe\x00garbage\n")
    with pytest.raises(StepMLError, match=r"traces\.json:3: malformed JSON"):
        read_step_events(path)
    stats: list[ReadStats] = []
    assert len(read_step_events(path, skip_bad_lines=True, stats=stats)) == 2
    assert stats == [ReadStats(lines=3, skipped=1)]


def test_skip_bad_lines_skips_and_counts(tmp_path, make_steps, write_otlp):
    rows = make_steps(6)
    path = write_otlp(tmp_path / "traces.json", rows, per_line=2,
                      insert_lines={1: "{oops", 3: "", 5: "[]"})   # line 3 is blank: not a line of data
    stats: list[ReadStats] = []
    frame = read_step_events(path, skip_bad_lines=True, stats=stats)
    assert frame["step.id"].tolist() == [r["step.id"] for r in rows]
    assert stats == [ReadStats(lines=5, skipped=2)]


def test_iter_documents_reports_stats_only_when_exhausted(tmp_path, make_steps, write_otlp):
    path = write_otlp(tmp_path / "traces.json", make_steps(4), per_line=1, insert_lines={2: "x"})
    stats: list[ReadStats] = []
    docs = list(iter_documents(path, skip_bad_lines=True, stats=stats))
    assert len(docs) == 4 and all("resourceSpans" in d for d in docs)
    assert stats == [ReadStats(lines=5, skipped=1)]


def test_missing_required_attribute_in_every_event_is_named(tmp_path, make_steps, write_otlp):
    rows = [{k: v for k, v in r.items() if k != "batch.decode_tokens"} for r in make_steps(3)]
    path = write_otlp(tmp_path / "traces.json", rows)
    with pytest.raises(StepMLError, match=r"lack required attribute\(s\): batch\.decode_tokens$"):
        read_step_events(path)


def test_missing_required_attribute_in_one_event_names_it_and_the_line(tmp_path, make_steps, write_otlp):
    rows = make_steps(5)
    del rows[3]["step.ts_start_ns"]
    path = write_otlp(tmp_path / "traces.json", rows, per_line=2)   # row 3 sits on line 2
    with pytest.raises(StepMLError) as info:
        read_step_events(path)
    message = str(info.value)
    assert "traces.json:2:" in message
    assert "step event #4" in message
    assert message.endswith("step.ts_start_ns")


def test_optional_integer_attribute_missing_in_some_events_is_an_error(tmp_path, make_steps, write_otlp):
    rows = make_steps(4)
    del rows[1]["batch.num_preempted"]
    with pytest.raises(StepMLError, match=r"column 'batch\.num_preempted' has 1 missing values"):
        read_step_events(write_otlp(tmp_path / "traces.json", rows))


def test_optional_attributes_may_be_absent_everywhere(tmp_path, make_steps, write_otlp):
    keep = ("step.id", "step.ts_start_ns", "batch.prefill_tokens", "batch.decode_tokens")
    rows = [{k: r[k] for k in keep} for r in make_steps(3)]
    frame = read_step_events(write_otlp(tmp_path / "traces.json", rows))
    assert list(frame.columns) == list(keep)


def test_unknown_attributes_are_kept_after_the_known_ones(tmp_path, make_steps, write_otlp):
    rows = make_steps(3)
    for r in rows:
        r["batch.custom"] = 7
    frame = read_step_events(write_otlp(tmp_path / "traces.json", rows))
    assert list(frame.columns) == list(BATCH_SUMMARY_COLUMNS) + ["batch.custom"]
    assert frame["batch.custom"].tolist() == [7, 7, 7]


def test_non_integer_value_in_integer_attribute_is_an_error(tmp_path, make_steps, write_otlp):
    rows = make_steps(2)
    path = write_otlp(tmp_path / "traces.json", rows)
    text = path.read_text().replace('"intValue": "0"', '"intValue": "zero"', 1)
    path.write_text(text)
    with pytest.raises(StepMLError, match=r"traces\.json:1: 'step\.BATCH_SUMMARY' event has a bad attribute"):
        read_step_events(path)


def test_float_in_integer_column_is_not_truncated(tmp_path, make_steps, write_otlp):
    rows = make_steps(2)
    path = write_otlp(tmp_path / "traces.json", rows, per_line=2)
    text = path.read_text().replace('{"key": "step.id", "value": {"intValue": "0"}}',
                                    '{"key": "step.id", "value": {"doubleValue": 0.5}}')
    path.write_text(text)
    with pytest.raises(StepMLError, match=r"column 'step\.id' must hold integers"):
        read_step_events(path)


def test_attribute_without_key_is_an_error(tmp_path, otlp_line):
    path = tmp_path / "traces.json"
    event = {"name": "step.BATCH_SUMMARY", "attributes": [{"value": {"intValue": "1"}}]}
    path.write_text(otlp_line([{"name": "s", "events": [event]}]) + "\n")
    with pytest.raises(StepMLError, match=r"traces\.json:1: .*bad attribute \(attribute without 'key'\)"):
        read_step_events(path)


@pytest.mark.parametrize("line", ['{"resourceSpans": {"scopeSpans": []}}',
                                  '{"resourceSpans": [{"scopeSpans": [{"spans": "x"}]}]}',
                                  '{"resourceSpans": [{"scopeSpans": [{"spans": [{"events": 3}]}]}]}'])
def test_object_that_is_not_otlp_shaped_is_an_error(tmp_path, line):
    path = tmp_path / "traces.json"
    path.write_text("\n" + line + "\n")
    with pytest.raises(StepMLError, match=r"traces\.json:2: not an OTLP trace object"):
        read_step_events(path)


def test_file_without_step_events_is_an_error(tmp_path, otlp_line):
    path = tmp_path / "traces.json"
    path.write_text(otlp_line([{"name": "llm_request", "attributes": []}]) + "\n")
    with pytest.raises(StepMLError, match=r"no 'step\.BATCH_SUMMARY' events found"):
        read_step_events(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(StepMLError, match=r"trace file not found: .*nope\.json"):
        read_step_events(tmp_path / "nope.json")


def test_corrupt_gzip_is_an_error(tmp_path, make_steps, write_otlp):
    good = gzip.compress(write_otlp(tmp_path / "traces.json", make_steps(40), per_line=1).read_bytes())
    path = tmp_path / "bad.json.gz"
    path.write_bytes(good[:10] + bytes(b ^ 0x5A for b in good[10:200]) + good[200:])
    with pytest.raises(StepMLError, match=r"bad\.json\.gz"):
        read_step_events(path)
    (tmp_path / "trunc.json.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(StepMLError, match=r"trunc\.json\.gz"):
        read_step_events(tmp_path / "trunc.json.gz")


# -- llm_request spans -------------------------------------------------------------------------

def test_request_spans_become_a_lifecycle_table(tmp_path, request_span, write_request_trace, otlp_line):
    t0 = 1_769_021_450_278_127_360
    spans = [
        request_span("cmpl-b", t0 + 2_000_000_000, ttft=0.5, e2e=3.0, prompt=1527, completion=500),
        request_span("cmpl-a", t0, ttft=0.25, e2e=1.5, prompt=10, completion=20, queue=0.125),
        request_span("cmpl-c", t0 + 1_000_000_000, ttft=0.75, e2e=2.0, prompt=300, completion=1),
    ]
    path = write_request_trace(tmp_path / "traces.json", spans, per_line=2)
    with open(path, "a") as handle:   # a scheduler span on its own line: not a request
        handle.write(otlp_line([{"name": "scheduler_step", "startTimeUnixNano": "5", "events": []}]) + "\n")
    table = read_request_spans(path)
    assert table["request_id"].tolist() == ["cmpl-a", "cmpl-c", "cmpl-b"]       # sorted by arrival
    assert list(table.columns[:3]) == ["request_id", "arrival_s", "end_s"]
    assert table["arrival_s"].tolist() == pytest.approx([t0 / 1e9, t0 / 1e9 + 1, t0 / 1e9 + 2], abs=1e-6)
    assert table["end_s"].iloc[0] == pytest.approx(t0 / 1e9 + 1.5, abs=1e-6)
    assert table["ttft_s"].tolist() == [0.25, 0.75, 0.5]
    assert table["e2e_s"].tolist() == [1.5, 2.0, 3.0]
    assert table["queue_s"].tolist() == [0.125, 0.001, 0.001]
    assert table["prompt_tokens"].tolist() == [10, 300, 1527]
    assert table["completion_tokens"].tolist() == [20, 1, 500]
    assert table["prompt_tokens"].dtype == np.int64 and table["completion_tokens"].dtype == np.int64
    assert "gen_ai.request.temperature" not in table.columns and len(table) == 3


def test_request_span_missing_attribute_is_named(tmp_path, request_span, write_request_trace):
    spans = [request_span("cmpl-a", 10**18, ttft=0.1, e2e=1.0, prompt=5, completion=5),
             request_span("cmpl-b", 10**18, ttft=0.1, e2e=1.0, prompt=5, completion=5,
                          drop=("gen_ai.latency.e2e",))]
    path = write_request_trace(tmp_path / "traces.json", spans, per_line=1)
    with pytest.raises(StepMLError, match=r"traces\.json:2: llm_request span .* lacks attribute\(s\): "
                                          r"gen_ai\.latency\.e2e$"):
        read_request_spans(path)


def test_request_span_without_start_time_is_an_error(tmp_path, request_span, write_request_trace):
    span = request_span("cmpl-a", 10**18, ttft=0.1, e2e=1.0, prompt=5, completion=5)
    del span["startTimeUnixNano"]
    path = write_request_trace(tmp_path / "traces.json", [span])
    with pytest.raises(StepMLError, match=r"lacks attribute\(s\): startTimeUnixNano"):
        read_request_spans(path)


def test_file_without_request_spans_is_an_error(tmp_path, make_steps, write_otlp):
    path = write_otlp(tmp_path / "traces.json", make_steps(2), noise=False)
    with pytest.raises(StepMLError, match=r"no 'llm_request' spans found"):
        read_request_spans(path)
