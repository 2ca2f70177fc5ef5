"""Discrete-event simulation of vLLM (v1) continuous batching.

One simulator serves two users:

- the synthetic demo-data generator, which feeds it a *known* step-time law
  and keeps :attr:`SimResult.steps` (``BATCH_SUMMARY``-style step rows);
- the workload replay, which feeds it a *discovered* formula and keeps
  :attr:`SimResult.requests` (TTFT, E2E, queueing) and, optionally, the
  per-token emission times (ITL).

Every step the scheduled requests are summarised by
:func:`features.aggregates.batch_aggregates`, so a formula sees exactly the
same ``batch.*``/``kv.*`` inputs here as in the traces and the exported
predictor. The simulation itself is deterministic: it uses no randomness.

Time model
----------
The clock (µs, float) starts at 0 at the earliest arrival. A step starts at
the current time ``t`` and ends at ``t + step_time_us(features)``; requests
with ``arrival <= t`` are eligible for it. When nothing is running or
waiting the clock jumps to the next arrival.

Scheduling (per step, vLLM v1 style)
------------------------------------
The token budget is ``max_num_batched_tokens``.

1. RUNNING requests in admission order, while budget remains: a decode gets
   1 token, a request still in prefill gets ``min(remaining prompt, budget,
   long_prefill_token_threshold)``. If the KV pool is limited and the
   request's blocks do not fit, the most recently admitted running request
   is preempted by recompute (blocks freed, pushed to the FRONT of the
   waiting queue) until they fit; if the request preempts itself, no further
   running request is scheduled this step.
2. WAITING requests in FCFS order while ``running < max_num_seqs`` and budget
   remains — but, as in vLLM v1, only when the step preempted nothing. The
   head request takes its prefix-cache hit (below), then ``min(remaining
   prompt, long_prefill cap, budget)`` tokens; without chunked prefill it is
   admitted only if its whole remaining prompt fits the budget. Admission
   stops at the first request that does not fit (budget or KV blocks).

At the end of the step every scheduled request whose KV length reaches its
prompt length emits one token (a decode always does). The first token ever
emitted defines TTFT. A request that has emitted its output tokens finishes
and leaves the running set at the end of that step.

Client deadlines (optional ``Workload.deadline_s``)
--------------------------------------------------
A client that gives up closes its connection; vLLM's API server then aborts the
request (``AsyncLLM.generate`` catches the cancellation and calls ``abort``), which
the engine applies before its next ``schedule()``. Here, before every step, each
unfinished request whose deadline is ``<= now`` leaves the waiting queue or the
running set (its KV blocks are freed) and gets ``aborted_s = now``. A request
whose last token comes out of a step that started before its deadline finishes
normally on the server; whether the client still received it is the caller's
call (:mod:`evaluation.replay` compares the client's end with the deadline).

Simplifications (documented deviations from vLLM)
-------------------------------------------------
- KV accounting: a request holds ``ceil(kv_len / block_size)`` blocks, where
  ``kv_len`` includes its prefix-cache hits, i.e. cached prefix blocks are
  counted once *per request* (no sharing, no eviction of the prefix cache,
  no watermark). ``kv.*`` step columns are measured after scheduling, before
  finished requests free their blocks.
- Prefix cache: a group's prefix counts as cached once some request of the
  group has computed its own ``prefix_len`` tokens (marked at the end of that
  step) and stays cached forever. A newly admitted (or re-admitted,
  preempted) request of the group starts with ``min(floor(prefix_len /
  block_size), floor((prompt - 1) / block_size)) * block_size`` KV tokens,
  capped by the group's cached length: at least one prompt token is always
  computed, as in vLLM. A group of a ``prefix_warm`` request is cached from the
  start, to that request's block-aligned ``prefix_len``.
- Preemption is always by recompute: the preempted request's prompt becomes
  ``input + generated`` tokens and its KV length resets to 0.
- ``max_model_len``: an input longer than it raises :class:`ValueError`; the
  output is truncated to ``max(1, max_model_len - input)`` tokens (vLLM stops
  a request once its length reaches ``max_model_len``, after at least one
  token).
- ``long_prefill_token_threshold`` applies to running and waiting prefills,
  and only with chunked prefill enabled. Without chunked prefill,
  ``max_num_batched_tokens`` must be at least ``max_model_len`` (as vLLM
  requires), so a request always fits an empty batch eventually.
- ``step_overhead_us`` is carried in the config for callers and is not used
  by the scheduler.

Async scheduling (``async_scheduling=True``, vLLM's default since 0.14)
------------------------------------------------------------------------
vLLM's engine schedules one step ahead: the batch of step ``k`` is formed
when step ``k - 1`` starts, so a request that arrives while step ``k - 1``
runs can first join step ``k + 1``. Here a waiting request is eligible for a
step only if it arrived before the previous step started; when that leaves
nothing to run (the engine would idle), everything that has arrived is
eligible at once. Running requests (decodes, prefill chunks) are unaffected.
A request that produces its last token in step ``k`` was still in vLLM's
running list when step ``k + 1`` was formed (vLLM skips it there without
computing), so its ``max_num_seqs`` slot and its KV blocks free one step later
(vLLM releases them when it reads step ``k``'s output): a waiting request takes
them in step ``k + 2`` (unless nothing else runs; then the engine waits for step
``k``'s output first).
On the BLIS experiments this makes the time to first token about 2.5 steps plus
a constant ~9 ms on every model, where the one-step simulator needed a
model-dependent constant (15–27 ms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from evaluation.sim_state import AGG_KEYS, UNLIMITED_GPU_BLOCKS, SimState
from features.schema import BATCH_SUMMARY_COLUMNS

__all__ = [
    "SchedulerConfig",
    "Workload",
    "SimResult",
    "simulate",
    "UNLIMITED_GPU_BLOCKS",
    "STEP_COLUMNS",
    "REQUEST_COLUMNS",
    "STEP_FEATURE_KEYS",
]

_STATE_KEYS: tuple[str, ...] = (
    "queue.running_depth",
    "queue.waiting_depth",
    "kv.blocks_total_gpu",
    "kv.blocks_free_gpu",
    "kv.usage_gpu_ratio",
)

#: Keys of the dict passed to ``step_time_us`` (aggregates, then queue/KV state).
STEP_FEATURE_KEYS: tuple[str, ...] = AGG_KEYS + _STATE_KEYS

#: Columns of :attr:`SimResult.steps`: the BATCH_SUMMARY columns, then the extra aggregates.
STEP_COLUMNS: tuple[str, ...] = tuple(BATCH_SUMMARY_COLUMNS) + tuple(
    k for k in AGG_KEYS if k not in BATCH_SUMMARY_COLUMNS)

#: Columns of :attr:`SimResult.requests`.
REQUEST_COLUMNS: tuple[str, ...] = (
    "arrival_s", "input_tokens", "output_tokens", "first_scheduled_s", "first_token_s",
    "finish_s", "ttft_s", "e2e_s", "queue_s", "num_preemptions", "prefix_hit_tokens", "aborted_s",
)


@dataclass(frozen=True)
class SchedulerConfig:
    """vLLM scheduler settings that shape the batches.

    Parameters
    ----------
    max_num_seqs : int
        Maximum number of running requests.
    max_num_batched_tokens : int
        Token budget of one step.
    max_model_len : int
        Maximum prompt + output length of a request.
    block_size : int
        KV-cache block size in tokens.
    num_gpu_blocks : int or None
        Size of the KV pool in blocks; None means unlimited (reported as
        :data:`UNLIMITED_GPU_BLOCKS`).
    enable_chunked_prefill : bool
        Split prompts across steps to fill the token budget.
    enable_prefix_caching : bool
        Let requests of one ``prefix_group`` reuse the cached prefix.
    long_prefill_token_threshold : int
        Per-request, per-step cap on prefill tokens (0 = no cap).
    step_overhead_us : float
        Carried for callers; not used by the scheduler.
    async_scheduling : bool
        Form each batch when the previous step starts (vLLM's one-step-ahead
        scheduling; see the module docstring).
    """

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    block_size: int = 16
    num_gpu_blocks: int | None = None
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    long_prefill_token_threshold: int = 0
    step_overhead_us: float = 0.0
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_gpu_blocks is not None and int(self.num_gpu_blocks) < 1:
            raise ValueError(f"SchedulerConfig.num_gpu_blocks must be >= 1 or None, got {self.num_gpu_blocks!r}")
        if int(self.long_prefill_token_threshold) < 0:
            raise ValueError("SchedulerConfig.long_prefill_token_threshold must be >= 0")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                "SchedulerConfig: without chunked prefill max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) must be >= max_model_len ({self.max_model_len})")


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests to replay, as columnar arrays of equal length ``R``.

    Parameters
    ----------
    arrival_s : numpy.ndarray
        Arrival times in seconds (any order; sorted stably inside
        :func:`simulate`).
    input_tokens : numpy.ndarray
        Prompt lengths (>= 1).
    output_tokens : numpy.ndarray
        Output lengths (>= 1).
    prefix_group : numpy.ndarray, optional
        Shared-prefix group id, -1 for none. Default: all -1.
    prefix_len : numpy.ndarray, optional
        Tokens of the shared prefix at the start of the prompt (0 <= prefix_len
        <= input_tokens). Default: all 0.
    deadline_s : numpy.ndarray, optional
        Absolute time (s, clock of ``arrival_s``) at which the client gives up on
        the request; ``inf`` for never. Default: None (no deadlines).
    prefix_warm : numpy.ndarray, optional
        True where the request's prefix (its group's first ``prefix_len`` tokens) is
        already in the prefix cache when the run starts, e.g. the cached tokens a
        request log reports (:mod:`evaluation.request_replay`). Default: None (cold cache).
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_group: np.ndarray | None = None
    prefix_len: np.ndarray | None = None
    deadline_s: np.ndarray | None = None
    prefix_warm: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrival = np.asarray(self.arrival_s, dtype=float).ravel()
        n = arrival.size
        ints = {}
        for name, default in (("input_tokens", None), ("output_tokens", None),
                              ("prefix_group", -1), ("prefix_len", 0)):
            value = getattr(self, name)
            if value is None:
                value = np.full(n, default, dtype=np.int64)
            raw = np.asarray(value).ravel()
            if raw.size != n:
                raise ValueError(f"Workload.{name} has length {raw.size}, expected {n}")
            arr = raw.astype(np.int64)
            if raw.size and np.issubdtype(raw.dtype, np.floating) and not np.array_equal(arr, raw):
                raise ValueError(f"Workload.{name} must hold integers")
            ints[name] = arr
        if n and not np.isfinite(arrival).all():
            raise ValueError(f"Workload.arrival_s has a non-finite value at index {int(np.argmin(np.isfinite(arrival)))}")
        for name in ("input_tokens", "output_tokens"):
            bad = np.flatnonzero(ints[name] < 1)
            if bad.size:
                raise ValueError(f"Workload.{name} must be >= 1; index {int(bad[0])} is {int(ints[name][bad[0]])}")
        plen = ints["prefix_len"]
        bad = np.flatnonzero((plen < 0) | (plen > ints["input_tokens"]))
        if bad.size:
            raise ValueError(f"Workload.prefix_len must be in [0, input_tokens]; index {int(bad[0])} is {int(plen[bad[0]])}")
        object.__setattr__(self, "arrival_s", arrival)
        if self.deadline_s is not None:
            deadline = np.asarray(self.deadline_s, dtype=float).ravel()
            if deadline.size != n:
                raise ValueError(f"Workload.deadline_s has length {deadline.size}, expected {n}")
            if np.isnan(deadline).any():
                raise ValueError(f"Workload.deadline_s is NaN at index {int(np.flatnonzero(np.isnan(deadline))[0])}")
            object.__setattr__(self, "deadline_s", deadline)
        if self.prefix_warm is not None:
            warm = np.asarray(self.prefix_warm).ravel()
            if warm.size != n or warm.dtype != bool:
                raise ValueError(f"Workload.prefix_warm must be {n} booleans")
            object.__setattr__(self, "prefix_warm", warm)
        for name, arr in ints.items():
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "Workload":
        """Build a workload from a frame with columns of the same names.

        Parameters
        ----------
        frame : pandas.DataFrame
            Columns ``arrival_s``, ``input_tokens``, ``output_tokens`` and,
            optionally, ``prefix_group``, ``prefix_len``, ``deadline_s`` and ``prefix_warm``.

        Returns
        -------
        Workload
        """
        missing = [c for c in ("arrival_s", "input_tokens", "output_tokens") if c not in frame.columns]
        if missing:
            raise ValueError(f"workload frame: missing column(s): {', '.join(missing)}")
        optional = {c: frame[c].to_numpy() for c in ("prefix_group", "prefix_len", "deadline_s", "prefix_warm")
                    if c in frame.columns}
        return cls(frame["arrival_s"].to_numpy(), frame["input_tokens"].to_numpy(),
                   frame["output_tokens"].to_numpy(), **optional)


@dataclass(frozen=True, eq=False)
class SimResult:
    """Output of :func:`simulate`.

    Attributes
    ----------
    steps : pandas.DataFrame
        One row per step with the columns :data:`STEP_COLUMNS`. Timestamps are
        int64 ns from the first arrival; ``step.duration_us`` is the float step
        time.
    requests : pandas.DataFrame
        One row per request in input order with :data:`REQUEST_COLUMNS`.
        Times ending in ``_s`` are absolute seconds on the clock of
        ``arrival_s``; ``*_s`` of requests unfinished when ``max_steps`` stopped
        the run, or aborted at their deadline, are NaN; ``aborted_s`` is the start
        of the step that dropped an aborted request (NaN for the others).
        ``output_tokens`` is the effective (truncated) count.
    token_times : list of numpy.ndarray or None
        Per request (input order), absolute seconds of every emitted token,
        when ``record_token_times`` was set.
    """

    steps: pd.DataFrame
    requests: pd.DataFrame
    token_times: list[np.ndarray] | None = None


def simulate(
    workload: Workload,
    config: SchedulerConfig,
    step_time_us: Callable[[dict[str, float]], float],
    *,
    record_token_times: bool = False,
    max_steps: int | None = None,
) -> SimResult:
    """Run continuous batching over ``workload`` with a step-time law.

    Parameters
    ----------
    workload : Workload
        Requests to serve (with optional client deadlines).
    config : SchedulerConfig
        Scheduler settings.
    step_time_us : callable
        Called once per step with a fresh dict holding the
        :func:`~features.aggregates.batch_aggregates` of the scheduled
        requests plus ``queue.running_depth``, ``queue.waiting_depth`` (after
        scheduling), ``kv.blocks_total_gpu``, ``kv.blocks_free_gpu`` and
        ``kv.usage_gpu_ratio``; returns the step duration in µs.
    record_token_times : bool
        Also return the emission time of every token.
    max_steps : int, optional
        Stop after this many steps (unfinished requests get NaN times).

    Returns
    -------
    SimResult

    Raises
    ------
    ValueError
        If an input exceeds ``max_model_len``, a request can never fit the KV
        pool, or ``step_time_us`` returns a non-finite or non-positive value
        (the message names the step).
    """
    state = SimState(workload, config, STEP_COLUMNS, record_token_times)
    while state.n_done < state.n_req:
        if max_steps is not None and state.sid >= max_steps:
            break
        state.admit_arrivals()
        state.abort_expired()
        if state.idle():
            if state.nxt >= state.n_req:         # the last requests were aborted
                break
            state.engine_idles()
            continue
        batch = state.schedule_running()
        state.schedule_waiting(batch)
        dur = _checked_duration(step_time_us(state.step_features(batch)), state.sid, state.now)
        state.finish_step(batch, dur)
    return SimResult(steps=_steps_frame(state.cols, state.sid, state.total_blocks),
                     requests=_requests_frame(state),
                     token_times=state.token_times() if record_token_times else None)


def _checked_duration(dur: object, sid: int, now: float) -> float:
    try:
        value = float(dur)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"step {sid}: step_time_us returned a non-number {dur!r}") from None
    if not (value > 0.0) or math.isinf(value):
        raise ValueError(f"step {sid} (t={now:.3f} us): step_time_us returned {value!r}; "
                         "it must be finite and > 0")
    return value


def _requests_frame(state: SimState) -> pd.DataFrame:
    arrival = state.arrival_s
    return pd.DataFrame({
        "arrival_s": arrival.copy(),
        "input_tokens": state.inp,
        "output_tokens": state.out_eff,
        "first_scheduled_s": state.first_sched,
        "first_token_s": state.first_tok,
        "finish_s": state.finish,
        "ttft_s": state.first_tok - arrival,
        "e2e_s": state.finish - arrival,
        "queue_s": state.first_sched - arrival,
        "num_preemptions": state.n_preempt,
        "prefix_hit_tokens": state.hit_tokens,
        "aborted_s": state.aborted,
    }, columns=list(REQUEST_COLUMNS))


def _steps_frame(cols: dict[str, list], n_steps: int, total_blocks: int) -> pd.DataFrame:
    """Assemble the per-step columns into the canonical step table."""
    cols["step.id"] = np.arange(n_steps, dtype=np.int64)
    cols["kv.blocks_total_gpu"] = np.full(n_steps, total_blocks, dtype=np.int64)
    data: dict[str, np.ndarray] = {}
    for name in STEP_COLUMNS:
        kind = BATCH_SUMMARY_COLUMNS.get(name, "float")
        if name == "step.duration_us":
            kind = "float"
        data[name] = np.asarray(cols[name], dtype=np.int64 if kind == "int" else np.float64)
    return pd.DataFrame(data, columns=list(STEP_COLUMNS))
