"""Hand-checked cases for the continuous-batching simulator (constant 1 ms steps)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.aggregates import AGGREGATE_RULES
from features.schema import BATCH_SUMMARY_COLUMNS
from evaluation.scheduler import (
    STEP_COLUMNS,
    UNLIMITED_GPU_BLOCKS,
    SchedulerConfig,
    SimResult,
    Workload,
    simulate,
)

STEP_US = 1000.0
MS = 1e-3


def const(features: dict[str, float]) -> float:
    return STEP_US


def wl(arrival, inp, out, group=None, plen=None) -> Workload:
    return Workload(np.asarray(arrival, float), np.asarray(inp), np.asarray(out),
                    None if group is None else np.asarray(group),
                    None if plen is None else np.asarray(plen))


def col(res: SimResult, name: str) -> list:
    return res.steps[name].tolist()


# (1) one request -----------------------------------------------------------------

def test_single_request_steps_ttft_e2e_and_aggregates():
    res = simulate(wl([0.0], [10], [3]), SchedulerConfig(), const, record_token_times=True)
    assert len(res.steps) == 3
    assert col(res, "step.id") == [0, 1, 2]
    assert col(res, "step.ts_start_ns") == [0, 1_000_000, 2_000_000]
    assert col(res, "step.ts_end_ns") == [1_000_000, 2_000_000, 3_000_000]
    assert col(res, "batch.num_prefill_reqs") == [1, 0, 0]
    assert col(res, "batch.num_decode_reqs") == [0, 1, 1]
    assert col(res, "batch.prefill_tokens") == [10, 0, 0]
    assert col(res, "batch.decode_tokens") == [0, 1, 1]
    assert col(res, "batch.scheduled_tokens") == [10, 1, 1]
    assert col(res, "batch.prefill_context_sum") == [55.0, 0.0, 0.0]   # 10*0 + 10*11/2
    assert col(res, "batch.decode_context_sum") == [0.0, 11.0, 12.0]
    assert col(res, "kv.tokens_in_use") == [10.0, 11.0, 12.0]
    assert col(res, "batch.num_finished") == [0, 0, 1]
    assert col(res, "queue.running_depth") == [1, 1, 1]
    assert col(res, "queue.waiting_depth") == [0, 0, 0]
    assert col(res, "kv.blocks_total_gpu") == [UNLIMITED_GPU_BLOCKS] * 3
    assert col(res, "kv.blocks_free_gpu") == [UNLIMITED_GPU_BLOCKS - 1] * 3
    req = res.requests.iloc[0]
    assert req["ttft_s"] == pytest.approx(1 * MS)
    assert req["e2e_s"] == pytest.approx(3 * MS)
    assert req["queue_s"] == pytest.approx(0.0)
    assert req["output_tokens"] == 3
    np.testing.assert_allclose(res.token_times[0], [1 * MS, 2 * MS, 3 * MS])


# (2) token budget split with chunked prefill ---------------------------------------

def test_budget_split_between_decodes_and_chunked_prefill():
    # Two 4-token prompts fill step 0 (budget 8); the 20-token prompt arrives during step 0.
    res = simulate(wl([0.0, 0.0, 0.5 * MS], [4, 4, 20], [10, 10, 2]),
                   SchedulerConfig(max_num_batched_tokens=8), const)
    s = res.steps
    assert s["batch.decode_tokens"].tolist()[:5] == [0, 2, 2, 2, 2]
    assert s["batch.prefill_tokens"].tolist()[:5] == [8, 6, 6, 6, 2]
    assert s["batch.num_prefill_reqs"].tolist()[:5] == [2, 1, 1, 1, 1]
    assert s["batch.scheduled_tokens"].tolist()[:4] == [8, 8, 8, 8]
    # Chunk 2 of the long prompt: new 6 on context 6 → 6*6 + 6*7/2.
    assert s["batch.prefill_context_sum"].iloc[2] == 6 * 6 + 21
    # Its prefill completes in step 4 (ends at 5 ms); it arrived at 0.5 ms.
    assert res.requests["ttft_s"].iloc[2] == pytest.approx(4.5 * MS)
    assert res.requests["first_scheduled_s"].iloc[2] == pytest.approx(1 * MS)


def test_long_prefill_threshold_caps_chunks():
    res = simulate(wl([0.0], [20], [1]), SchedulerConfig(long_prefill_token_threshold=8), const)
    assert col(res, "batch.prefill_tokens") == [8, 8, 4]
    assert res.requests["ttft_s"].iloc[0] == pytest.approx(3 * MS)


def test_without_chunked_prefill_prompt_waits_for_whole_budget():
    cfg = SchedulerConfig(max_num_batched_tokens=32, max_model_len=32, enable_chunked_prefill=False)
    res = simulate(wl([0.0, 0.0], [20, 20], [2, 1]), cfg, const)
    # The second prompt (20) does not fit the 12 tokens left in step 0: admitted in step 1.
    assert col(res, "batch.prefill_tokens") == [20, 20]
    assert col(res, "batch.decode_tokens") == [0, 1]
    assert res.requests["first_scheduled_s"].tolist() == pytest.approx([0.0, 1 * MS])


# (3) max_num_seqs ----------------------------------------------------------------------

def test_max_num_seqs_caps_running_set():
    res = simulate(wl([0.0, 0.0, 0.0], [5, 5, 5], [3, 3, 3]), SchedulerConfig(max_num_seqs=2), const)
    s = res.steps
    assert s["queue.running_depth"].max() == 2
    assert s["batch.num_prefill_reqs"].tolist() == [2, 0, 0, 1, 0, 0]
    assert s["queue.waiting_depth"].tolist() == [1, 1, 1, 0, 0, 0]
    assert s["batch.num_finished"].tolist() == [0, 0, 2, 0, 0, 1]
    assert res.requests["queue_s"].tolist() == pytest.approx([0.0, 0.0, 3 * MS])
    assert res.requests["e2e_s"].iloc[2] == pytest.approx(6 * MS)


def test_async_a_finished_request_holds_its_slot_one_more_step():
    """vLLM forms step k+1 before step k's output: the request finishing in k still fills a slot then."""
    work = wl([0.0, 0.0, 0.0], [5, 5, 5], [3, 10, 3])
    sync, ahead = (simulate(work, SchedulerConfig(max_num_seqs=2, async_scheduling=a), const) for a in (False, True))
    assert sync.requests["queue_s"].iloc[2] == pytest.approx(3 * MS)       # takes r0's slot in step 3
    assert ahead.requests["queue_s"].iloc[2] == pytest.approx(4 * MS)      # step 3 runs r1 alone
    assert ahead.steps["queue.running_depth"].tolist()[:5] == [2, 2, 2, 1, 2]
    alone = simulate(wl([0.0, 0.0, 0.0], [5, 5, 5], [3, 3, 3]), SchedulerConfig(max_num_seqs=2, async_scheduling=True),
                     const)
    assert alone.requests["queue_s"].iloc[2] == pytest.approx(3 * MS)      # nothing else runs: no step is lost


def test_async_a_finished_request_holds_its_kv_blocks_one_more_step():
    """The request finishing in step k frees its KV blocks when vLLM reads k's output, after forming k+1."""
    # block_size 4, 2 blocks. Step 0: A (3 tokens, 1 output) and B (2 tokens, 3 outputs) prefill, a block
    # each; C waits. A finishes in step 0. Sync: C takes A's block in step 1. Async: step 1 was formed
    # while A still held it, so C starts in step 2 (B stays within its one block throughout).
    work = wl([0.0, 0.0, 0.0], [3, 2, 3], [1, 3, 1])
    cfg = {"block_size": 4, "num_gpu_blocks": 2, "max_num_seqs": 8}
    sync, ahead = (simulate(work, SchedulerConfig(**cfg, async_scheduling=a), const) for a in (False, True))
    assert sync.requests["queue_s"].tolist() == pytest.approx([0.0, 0.0, 1 * MS])
    assert ahead.requests["queue_s"].tolist() == pytest.approx([0.0, 0.0, 2 * MS])
    assert ahead.steps["batch.num_prefill_reqs"].tolist() == [2, 0, 1]
    assert ahead.steps["batch.num_preempted"].sum() == 0


# (4) preemption by recompute ----------------------------------------------------------

def test_preemption_recomputes_input_plus_generated_tokens():
    # block_size 4, 3 blocks. Step 0: A and B prefill 4 tokens (1 block each).
    # Step 1: A's decode needs a 2nd block (1 free left); B then needs one too and
    # preempts itself (it is the most recently admitted). B waits until A finishes
    # (step 5) and re-prefills its 4 input + 1 generated token in step 6.
    cfg = SchedulerConfig(block_size=4, num_gpu_blocks=3)
    res = simulate(wl([0.0, 0.0], [4, 4], [6, 2]), cfg, const, record_token_times=True)
    s = res.steps
    assert s["batch.num_preempted"].tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert s["batch.num_decode_reqs"].tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert s["queue.waiting_depth"].tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert s["batch.prefill_tokens"].tolist() == [8, 0, 0, 0, 0, 0, 5]
    assert s["batch.prefill_context_sum"].iloc[6] == 15.0            # 5*0 + 5*6/2
    assert s["kv.blocks_free_gpu"].tolist() == [1, 1, 1, 1, 1, 0, 1]
    assert (s["kv.blocks_free_gpu"] >= 0).all()
    req = res.requests
    assert req["num_preemptions"].tolist() == [0, 1]
    assert [len(t) for t in res.token_times] == [6, 2]
    np.testing.assert_allclose(res.token_times[1], [1 * MS, 7 * MS])
    assert req["first_token_s"].iloc[1] == pytest.approx(1 * MS)    # TTFT kept from before
    assert req["finish_s"].tolist() == pytest.approx([6 * MS, 7 * MS])


def test_preemption_evicts_most_recent_and_requeues_at_front():
    # block_size 4, 5 blocks. Step 0: A(8) B(4) C(4) prefill, 4 blocks used; D (13 tokens,
    # 4 blocks) arrives during step 0. Step 1: A takes the last block, B then needs one:
    # C (most recently admitted) is preempted, B is still scheduled. C goes to the
    # front of the queue, ahead of D, so after A and B finish C is admitted first and
    # D (which no longer fits beside C) waits for C to finish.
    cfg = SchedulerConfig(block_size=4, num_gpu_blocks=5)
    res = simulate(wl([0.0, 0.0, 0.0, 0.5 * MS], [8, 4, 4, 13], [3, 3, 3, 1]), cfg, const,
                   record_token_times=True)
    s, req = res.steps, res.requests
    assert s["batch.num_preempted"].tolist() == [0, 1, 0, 0, 0, 0]
    assert s["batch.num_decode_reqs"].tolist() == [0, 2, 2, 0, 1, 0]
    assert s["batch.prefill_tokens"].tolist() == [16, 0, 0, 5, 0, 13]
    assert req["num_preemptions"].tolist() == [0, 0, 1, 0]
    np.testing.assert_allclose(res.token_times[2], [1 * MS, 4 * MS, 5 * MS])
    assert req["first_scheduled_s"].iloc[3] == pytest.approx(5 * MS)
    assert req["ttft_s"].iloc[3] == pytest.approx(5.5 * MS)


def test_no_admissions_in_a_step_that_preempted():
    # As in vLLM v1: after B preempts itself in step 1, the freed block is not used to
    # re-admit B's first 4-token chunk in the same step; that happens in step 2.
    cfg = SchedulerConfig(block_size=4, num_gpu_blocks=3, long_prefill_token_threshold=4)
    res = simulate(wl([0.0, 0.0], [4, 4], [3, 3]), cfg, const, record_token_times=True)
    s = res.steps
    assert s["batch.num_preempted"].tolist()[:3] == [0, 1, 0]
    assert s["batch.prefill_tokens"].tolist()[:4] == [8, 0, 4, 1]
    assert s["queue.waiting_depth"].tolist()[:3] == [0, 1, 0]
    assert [len(t) for t in res.token_times] == [3, 3]


def test_random_workload_invariants_under_kv_pressure():
    rng = np.random.default_rng(7)
    n = 200
    w = Workload(np.cumsum(rng.exponential(0.01, n)), rng.integers(10, 300, n), rng.integers(1, 60, n),
                 rng.integers(-1, 3, n), np.zeros(n, dtype=int))
    cfg = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, max_model_len=512,
                          num_gpu_blocks=40, long_prefill_token_threshold=100)
    res = simulate(w, cfg, lambda f: 500.0 + f["batch.scheduled_tokens"], record_token_times=True)
    s, req = res.steps, res.requests
    assert req["num_preemptions"].sum() > 0
    assert s["batch.num_preempted"].sum() == req["num_preemptions"].sum()
    assert req["finish_s"].notna().all()
    assert [len(t) for t in res.token_times] == req["output_tokens"].tolist()
    assert (s["batch.scheduled_tokens"] <= 256).all()
    assert (s["queue.running_depth"] <= 16).all()
    assert (s["kv.blocks_free_gpu"] >= 0).all()
    assert (s["step.ts_start_ns"].diff().dropna() > 0).all()
    assert (req["first_token_s"] >= req["arrival_s"]).all()


# (5) prefix caching --------------------------------------------------------------------

def test_prefix_hit_starts_from_cached_block_aligned_prefix():
    # A computes its 40-token prefix in step 0; B (same group) arrives later and
    # reuses floor(40/16)*16 = 32 tokens.
    w = wl([0.0, 1.5 * MS], [100, 100], [2, 1], group=[7, 7], plen=[40, 40])
    res = simulate(w, SchedulerConfig(), const)
    s = res.steps
    assert res.requests["prefix_hit_tokens"].tolist() == [0, 32]
    assert s["batch.prefill_tokens"].tolist() == [100, 0, 68]
    assert s["batch.prefill_context_sum"].iloc[2] == 68 * 32 + 68 * 69 / 2
    assert s["kv.tokens_in_use"].iloc[2] == 100.0

    off = simulate(w, SchedulerConfig(enable_prefix_caching=False), const)
    assert off.requests["prefix_hit_tokens"].tolist() == [0, 0]
    assert off.steps["batch.prefill_tokens"].tolist() == [100, 0, 100]


def test_prefix_not_hit_before_computed_or_across_groups():
    # Same step: the prefix is not cached yet. Different group: never a hit.
    same_step = simulate(wl([0.0, 0.0], [100, 100], [1, 1], group=[1, 1], plen=[40, 40]),
                         SchedulerConfig(), const)
    assert same_step.requests["prefix_hit_tokens"].tolist() == [0, 0]
    other = simulate(wl([0.0, 5 * MS], [100, 100], [1, 1], group=[1, 2], plen=[40, 40]),
                     SchedulerConfig(), const)
    assert other.requests["prefix_hit_tokens"].tolist() == [0, 0]


def test_prefix_hit_leaves_at_least_one_prompt_token_to_compute():
    # The whole 32-token prompt is a cached prefix: only 16 tokens (2 blocks minus one) hit.
    res = simulate(wl([0.0, 5 * MS], [32, 32], [1, 1], group=[3, 3], plen=[32, 32]),
                   SchedulerConfig(), const)
    assert res.requests["prefix_hit_tokens"].tolist() == [0, 16]
    assert res.steps["batch.prefill_tokens"].tolist() == [32, 16]


# (6) idle clock jumps -------------------------------------------------------------------

def test_clock_starts_at_first_arrival_and_jumps_when_idle():
    res = simulate(wl([105.0, 100.0], [10, 10], [1, 2]), SchedulerConfig(), const)
    assert col(res, "step.ts_start_ns") == [0, 1_000_000, 5_000_000_000]
    assert col(res, "step.ts_end_ns")[-1] == 5_001_000_000
    req = res.requests                                   # input order is kept
    assert req["arrival_s"].tolist() == [105.0, 100.0]
    assert req["first_scheduled_s"].tolist() == pytest.approx([105.0, 100.0])
    assert req["finish_s"].tolist() == pytest.approx([105.001, 100.002])
    assert req["ttft_s"].tolist() == pytest.approx([1 * MS, 1 * MS])


def test_request_arriving_at_step_start_is_eligible():
    res = simulate(wl([0.0, 1 * MS], [10, 10], [2, 1]), SchedulerConfig(), const)
    assert col(res, "batch.num_prefill_reqs") == [1, 1]
    assert res.requests["queue_s"].tolist() == pytest.approx([0.0, 0.0])


# (7) invalid step times --------------------------------------------------------------

@pytest.mark.parametrize("bad", [0.0, -5.0, math.nan, math.inf])
def test_non_positive_or_non_finite_step_time_raises(bad):
    with pytest.raises(ValueError, match="step 0"):
        simulate(wl([0.0], [10], [3]), SchedulerConfig(), lambda f: bad)


def test_invalid_step_time_error_names_the_step():
    law = lambda f: 1000.0 if f["batch.prefill_tokens"] > 0 else -1.0   # first decode step fails
    with pytest.raises(ValueError, match="step 1"):
        simulate(wl([0.0], [10], [3]), SchedulerConfig(), law)


# (8) features passed to step_time ------------------------------------------------------

def test_step_time_receives_exactly_the_expected_keys():
    seen: list[dict[str, float]] = []

    def law(f):
        seen.append(dict(f))
        return STEP_US

    cfg = SchedulerConfig(block_size=4, num_gpu_blocks=10)
    simulate(wl([0.0, 0.0], [10, 6], [2, 2]), cfg, law)
    expected = set(AGGREGATE_RULES) | {"queue.running_depth", "queue.waiting_depth",
                                       "kv.blocks_total_gpu", "kv.blocks_free_gpu",
                                       "kv.usage_gpu_ratio"}
    assert seen and all(set(f) == expected for f in seen)
    first = seen[0]
    assert first["batch.prefill_tokens"] == 16.0
    assert first["queue.running_depth"] == 2.0
    assert first["kv.blocks_total_gpu"] == 10.0
    assert first["kv.blocks_free_gpu"] == 5.0            # ceil(10/4) + ceil(6/4) = 5 used
    assert first["kv.usage_gpu_ratio"] == pytest.approx(0.5)
    assert first["queue.waiting_depth"] == 0.0


# Other API behaviour ------------------------------------------------------------------

def test_steps_frame_columns_and_dtypes():
    res = simulate(wl([0.0], [10], [3]), SchedulerConfig(), const)
    assert list(res.steps.columns) == list(STEP_COLUMNS)
    assert set(BATCH_SUMMARY_COLUMNS) | set(AGGREGATE_RULES) == set(res.steps.columns)
    for name, kind in BATCH_SUMMARY_COLUMNS.items():
        if kind == "int" and name != "step.duration_us":
            assert res.steps[name].dtype == np.int64, name
    assert res.steps["step.duration_us"].dtype == np.float64
    assert res.token_times is None


def test_max_model_len_truncates_output_and_rejects_long_inputs():
    cfg = SchedulerConfig(max_model_len=12)
    res = simulate(wl([0.0], [10], [5]), cfg, const)
    assert res.requests["output_tokens"].tolist() == [2]
    assert len(res.steps) == 2
    with pytest.raises(ValueError, match="max_model_len"):
        simulate(wl([0.0], [13], [1]), cfg, const)


def test_request_that_never_fits_kv_pool_is_rejected():
    with pytest.raises(ValueError, match="KV blocks"):
        simulate(wl([0.0], [100], [1]), SchedulerConfig(block_size=16, num_gpu_blocks=2), const)


def test_max_steps_stops_early():
    res = simulate(wl([0.0], [10], [5]), SchedulerConfig(), const, max_steps=2)
    assert len(res.steps) == 2
    assert math.isnan(res.requests["finish_s"].iloc[0])
    assert res.requests["first_token_s"].iloc[0] == pytest.approx(1 * MS)


def test_workload_from_frame_and_validation():
    frame = pd.DataFrame({"arrival_s": [0.0, 1.0], "input_tokens": [10, 20], "output_tokens": [1, 2]})
    w = Workload.from_frame(frame)
    assert len(w) == 2
    assert w.prefix_group.tolist() == [-1, -1] and w.prefix_len.tolist() == [0, 0]
    with pytest.raises(ValueError, match="output_tokens"):
        Workload.from_frame(frame.drop(columns="output_tokens"))
    with pytest.raises(ValueError, match="output_tokens"):
        wl([0.0], [10], [0])
    with pytest.raises(ValueError, match="prefix_len"):
        wl([0.0], [10], [1], group=[0], plen=[11])


def test_empty_workload():
    res = simulate(wl([], [], []), SchedulerConfig(), const, record_token_times=True)
    assert len(res.steps) == 0 and len(res.requests) == 0
    assert list(res.steps.columns) == list(STEP_COLUMNS)
    assert res.token_times == []


# (n) client deadlines: aborts of running and waiting requests -----------------------------------

def test_deadline_aborts_a_running_request_and_frees_its_slot():
    # one slot; request 0 (10 tokens out) must finish at 10 ms but its client gives up at 4.5 ms:
    # the step starting at 5 ms sees the deadline and drops it; request 1 takes the slot then
    w = Workload(np.zeros(2), np.array([10, 10]), np.array([10, 2]), deadline_s=np.array([4.5 * MS, np.inf]))
    res = simulate(w, SchedulerConfig(max_num_seqs=1), const, record_token_times=True)
    req = res.requests
    assert req["aborted_s"].iloc[0] == pytest.approx(5 * MS) and math.isnan(req["finish_s"].iloc[0])
    assert len(res.token_times[0]) == 5                      # tokens of the steps 0..4 ms
    assert req["first_scheduled_s"].iloc[1] == pytest.approx(5 * MS)
    assert req["finish_s"].iloc[1] == pytest.approx(7 * MS) and math.isnan(req["aborted_s"].iloc[1])
    assert len(res.steps) == 7


def test_deadline_aborts_a_waiting_request_before_it_is_scheduled():
    w = Workload(np.zeros(3), np.array([10, 10, 10]), np.array([5, 5, 1]),
                 deadline_s=np.array([np.inf, 2 * MS, np.inf]))
    res = simulate(w, SchedulerConfig(max_num_seqs=1), const)
    req = res.requests
    assert req["aborted_s"].iloc[1] == pytest.approx(2 * MS)
    assert math.isnan(req["first_scheduled_s"].iloc[1]) and math.isnan(req["finish_s"].iloc[1])
    assert req["first_scheduled_s"].iloc[2] == pytest.approx(5 * MS)
    assert req["finish_s"].iloc[2] == pytest.approx(6 * MS)
    assert col(res, "queue.waiting_depth")[:3] == [2, 2, 1]  # request 1 left the queue at 2 ms


def test_abort_frees_kv_blocks_and_the_run_ends_when_the_last_requests_are_aborted():
    # two blocks of 16: request 0 (20 + 9 tokens) holds both, request 1 waits for a block until
    # request 0 is aborted at the step starting at 4 ms; request 1 itself is then aborted at 6 ms
    w = Workload(np.zeros(2), np.array([20, 10]), np.array([10, 10]),
                 deadline_s=np.array([3.5 * MS, 5.5 * MS]))
    res = simulate(w, SchedulerConfig(max_num_seqs=8, num_gpu_blocks=2), const)
    req = res.requests
    assert req["aborted_s"].tolist() == pytest.approx([4 * MS, 6 * MS])
    assert req["first_scheduled_s"].iloc[1] == pytest.approx(4 * MS)
    assert req["finish_s"].isna().all() and len(res.steps) == 6


def test_deadline_validation():
    with pytest.raises(ValueError, match="deadline_s has length"):
        Workload(np.zeros(2), np.array([1, 1]), np.array([1, 1]), deadline_s=np.zeros(3))
    with pytest.raises(ValueError, match="deadline_s is NaN"):
        Workload(np.zeros(1), np.array([1]), np.array([1]), deadline_s=np.array([np.nan]))
    # deadlines after every finish change nothing
    base = simulate(wl([0.0, 0.001], [30, 40], [5, 4]), SchedulerConfig(), const)
    late = simulate(Workload(np.array([0.0, 0.001]), np.array([30, 40]), np.array([5, 4]),
                             deadline_s=np.array([1.0, 1.0])), SchedulerConfig(), const)
    pd.testing.assert_frame_equal(base.steps, late.steps)
    pd.testing.assert_frame_equal(base.requests, late.requests)
