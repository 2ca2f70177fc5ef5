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
  computed, as in vLLM.
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
On the BLIS experiments this makes the time to first token ≈ 2.5 steps plus a
constant ~9 ms on every model, where the one-step simulator needed a
model-dependent constant (15–27 ms).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from features.aggregates import AGGREGATE_RULES, batch_aggregates
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

#: Block total reported when ``num_gpu_blocks`` is None (unlimited KV).
UNLIMITED_GPU_BLOCKS = 10**9

_AGG_KEYS: tuple[str, ...] = tuple(AGGREGATE_RULES)
_STATE_KEYS: tuple[str, ...] = (
    "queue.running_depth",
    "queue.waiting_depth",
    "kv.blocks_total_gpu",
    "kv.blocks_free_gpu",
    "kv.usage_gpu_ratio",
)

#: Keys of the dict passed to ``step_time_us`` (aggregates, then queue/KV state).
STEP_FEATURE_KEYS: tuple[str, ...] = _AGG_KEYS + _STATE_KEYS

#: Columns of :attr:`SimResult.steps`: the BATCH_SUMMARY columns, then the extra aggregates.
STEP_COLUMNS: tuple[str, ...] = tuple(BATCH_SUMMARY_COLUMNS) + tuple(
    k for k in _AGG_KEYS if k not in BATCH_SUMMARY_COLUMNS)

#: Columns of :attr:`SimResult.requests`.
REQUEST_COLUMNS: tuple[str, ...] = (
    "arrival_s", "input_tokens", "output_tokens", "first_scheduled_s", "first_token_s",
    "finish_s", "ttft_s", "e2e_s", "queue_s", "num_preemptions", "prefix_hit_tokens",
)

_NEVER = np.iinfo(np.int64).max


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
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_group: np.ndarray | None = None
    prefix_len: np.ndarray | None = None

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
            optionally, ``prefix_group`` and ``prefix_len``.

        Returns
        -------
        Workload
        """
        missing = [c for c in ("arrival_s", "input_tokens", "output_tokens") if c not in frame.columns]
        if missing:
            raise ValueError(f"workload frame: missing column(s): {', '.join(missing)}")
        optional = {c: frame[c].to_numpy() for c in ("prefix_group", "prefix_len") if c in frame.columns}
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
        the run are NaN. ``output_tokens`` is the effective (truncated) count.
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
        Requests to serve.
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
    cfg = config
    n_req = len(workload)
    bs = int(cfg.block_size)
    budget_max = int(cfg.max_num_batched_tokens)
    max_seqs = int(cfg.max_num_seqs)
    chunked = bool(cfg.enable_chunked_prefill)
    cap = int(cfg.long_prefill_token_threshold) if chunked else 0
    limited = cfg.num_gpu_blocks is not None
    total_blocks = int(cfg.num_gpu_blocks) if limited else UNLIMITED_GPU_BLOCKS

    inp = workload.input_tokens.astype(np.int64)
    too_long = np.flatnonzero(inp > cfg.max_model_len)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(f"request {i}: input_tokens {int(inp[i])} > max_model_len {cfg.max_model_len}")
    out_eff = np.maximum(1, np.minimum(workload.output_tokens, cfg.max_model_len - inp)).astype(np.int64)
    if limited and n_req:
        peak = -(-(inp + out_eff - 1) // bs)
        bad = np.flatnonzero(peak > total_blocks)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"request {i} needs up to {int(peak[i])} KV blocks > num_gpu_blocks {total_blocks}")

    # Per-request state (indexed by input position).
    ctx = np.zeros(n_req, dtype=np.int64)          # KV tokens computed
    prompt = inp.copy()                            # tokens to prefill (grows on preemption)
    emitted = np.zeros(n_req, dtype=np.int64)
    n_preempt = np.zeros(n_req, dtype=np.int64)
    hit_tokens = np.zeros(n_req, dtype=np.int64)
    first_sched = np.full(n_req, np.nan)
    first_tok = np.full(n_req, np.nan)
    finish = np.full(n_req, np.nan)

    group = workload.prefix_group
    plen = workload.prefix_len
    use_prefix = bool(cfg.enable_prefix_caching) and n_req > 0 and bool(((group >= 0) & (plen >= bs)).any())
    if use_prefix:
        aligned = (plen // bs) * bs
        pending = np.where((group >= 0) & (aligned > 0), plen, _NEVER).astype(np.int64)
        group_l = group.tolist()
        aligned_l = aligned.tolist()
    cached: dict[int, int] = {}

    order = np.argsort(workload.arrival_s, kind="stable")
    t0 = float(workload.arrival_s[order[0]]) if n_req else 0.0
    arr_us_l = ((workload.arrival_s[order] - t0) * 1e6).tolist()
    order_l = order.tolist()

    cols: dict[str, list] = {k: [] for k in STEP_COLUMNS}
    agg_cols = [(k, cols[k]) for k in _AGG_KEYS]
    c_dur, c_ts0, c_ts1 = cols["step.duration_us"], cols["step.ts_start_ns"], cols["step.ts_end_ns"]
    c_run, c_wait = cols["queue.running_depth"], cols["queue.waiting_depth"]
    c_fin, c_pre = cols["batch.num_finished"], cols["batch.num_preempted"]
    c_ratio, c_free = cols["kv.usage_gpu_ratio"], cols["kv.blocks_free_gpu"]
    tok_ids: list[np.ndarray] = []
    tok_t: list[float] = []

    empty_i64 = np.zeros(0, dtype=np.int64)
    run = empty_i64                                # running request ids, admission order
    waiting: deque[int] = deque()
    nxt = 0
    now = 0.0                                      # µs since the first arrival
    sid = 0
    n_done = 0

    one_ahead = bool(cfg.async_scheduling)
    prev_start = -1.0                              # start of the step in flight (< 0: the engine idled)
    while n_done < n_req:
        if max_steps is not None and sid >= max_steps:
            break
        horizon = prev_start if one_ahead and prev_start >= 0.0 else now
        while nxt < n_req and arr_us_l[nxt] <= horizon:
            waiting.append(order_l[nxt])
            nxt += 1
        if run.size == 0 and not waiting:
            prev_start = -1.0                      # nothing was formed ahead: the engine idles
            if not (nxt < n_req and arr_us_l[nxt] <= now):
                now = arr_us_l[nxt]
            continue

        # ---- 1. running requests ------------------------------------------------
        budget = budget_max
        preempted = 0
        if run.size:
            c = ctx[run]
            p = prompt[run]
            rem = p - c
            if cap:
                want = np.where(rem > 0, np.minimum(rem, cap), 1)
            else:
                want = np.where(rem > 0, rem, 1)
            total_want = int(want.sum())
            if total_want <= budget:
                alloc = want
            else:
                prev = np.cumsum(want) - want
                alloc = np.clip(budget - prev, 0, want)
            need = (c + alloc + (bs - 1)) // bs
            if limited and int(need.sum()) > total_blocks:
                run, c, p, alloc, victims = _schedule_with_preemption(
                    run, c, p, budget, cap, bs, total_blocks)
                preempted = len(victims)
                for v in victims:          # each to the front: earliest-admitted ends first
                    ctx[v] = 0
                    prompt[v] = inp[v] + emitted[v]
                    n_preempt[v] += 1
                    waiting.appendleft(v)
                need = (c + alloc + (bs - 1)) // bs
            budget -= int(alloc.sum())
            used = int(need.sum())
        else:
            c = p = alloc = empty_i64
            used = 0

        # ---- 2. waiting requests ------------------------------------------------
        if not preempted and waiting and budget > 0 and run.size < max_seqs:
            free = total_blocks - used
            new_ids: list[int] = []
            new_c: list[int] = []
            new_n: list[int] = []
            new_p: list[int] = []
            slots = max_seqs - run.size
            while waiting and budget > 0 and len(new_ids) < slots:
                r = waiting[0]
                pr = int(prompt[r])
                hit = 0
                if use_prefix:
                    g = group_l[r]
                    if g >= 0:
                        cg = cached.get(g, 0)
                        if cg:
                            hit = min(aligned_l[r], cg, ((pr - 1) // bs) * bs)
                n = pr - hit
                if chunked:
                    if cap and n > cap:
                        n = cap
                    if n > budget:
                        n = budget
                elif n > budget:
                    break
                nb = (hit + n + bs - 1) // bs
                if nb > free:
                    break
                waiting.popleft()
                free -= nb
                budget -= n
                used += nb
                if hit:
                    hit_tokens[r] += hit
                if first_sched[r] != first_sched[r]:      # NaN: first admission
                    first_sched[r] = t0 + now * 1e-6
                new_ids.append(r)
                new_c.append(hit)
                new_n.append(n)
                new_p.append(pr)
            if new_ids:
                run = np.concatenate((run, np.asarray(new_ids, dtype=np.int64)))
                c = np.concatenate((c, np.asarray(new_c, dtype=np.int64)))
                alloc = np.concatenate((alloc, np.asarray(new_n, dtype=np.int64)))
                p = np.concatenate((p, np.asarray(new_p, dtype=np.int64)))

        if budget == budget_max:
            # Unreachable: every request fits the pool alone (checked above), so the
            # first running request or the head of the queue is always scheduled.
            raise RuntimeError(f"scheduler made no progress at t={now:.3f} us (step {sid})")

        # ---- 3. the step --------------------------------------------------------
        sched = alloc > 0
        if sched.all():
            agg = batch_aggregates(c, alloc, p)
        else:
            agg = batch_aggregates(c[sched], alloc[sched], p[sched])
        for k, col in agg_cols:
            col.append(agg[k])
        feats = dict(agg)
        n_run = int(run.size)
        n_wait = len(waiting)
        free_blocks = total_blocks - used
        ratio = used / total_blocks
        feats["queue.running_depth"] = float(n_run)
        feats["queue.waiting_depth"] = float(n_wait)
        feats["kv.blocks_total_gpu"] = float(total_blocks)
        feats["kv.blocks_free_gpu"] = float(free_blocks)
        feats["kv.usage_gpu_ratio"] = ratio
        dur = step_time_us(feats)
        try:
            dur = float(dur)
        except (TypeError, ValueError):
            raise ValueError(f"step {sid}: step_time_us returned a non-number {dur!r}") from None
        if not (dur > 0.0) or math.isinf(dur):
            raise ValueError(f"step {sid} (t={now:.3f} us): step_time_us returned {dur!r}; "
                             "it must be finite and > 0")
        end = now + dur
        c_dur.append(dur)
        c_ts0.append(round(now * 1000.0))
        c_ts1.append(round(end * 1000.0))
        c_run.append(n_run)
        c_wait.append(n_wait)
        c_pre.append(preempted)
        c_ratio.append(ratio)
        c_free.append(free_blocks)

        # ---- 4. end of step: tokens, finishes, prefix cache ---------------------
        c2 = c + alloc
        ctx[run] = c2
        if use_prefix:
            marks = np.flatnonzero(c2 >= pending[run])
            for r in run[marks].tolist():
                g = group_l[r]
                if aligned_l[r] > cached.get(g, 0):
                    cached[g] = aligned_l[r]
                pending[r] = _NEVER
        emit = sched & (c2 >= p)
        n_fin = 0
        t_end = t0 + end * 1e-6
        if emit.any():
            em_pos = np.flatnonzero(emit)
            em_ids = run[em_pos]
            e = emitted[em_ids] + 1
            emitted[em_ids] = e
            first_tok[em_ids[e == 1]] = t_end
            fmask = e >= out_eff[em_ids]
            if fmask.any():
                fin = em_ids[fmask]
                finish[fin] = t_end
                n_fin = int(fin.size)
                n_done += n_fin
                keep = np.ones(run.size, dtype=bool)
                keep[em_pos[fmask]] = False
                run = run[keep]
            if record_token_times:
                tok_ids.append(em_ids)
                tok_t.append(t_end)
        c_fin.append(n_fin)
        prev_start = now
        now = end
        sid += 1

    steps = _steps_frame(cols, sid, total_blocks)
    requests = pd.DataFrame({
        "arrival_s": workload.arrival_s.copy(),
        "input_tokens": inp,
        "output_tokens": out_eff,
        "first_scheduled_s": first_sched,
        "first_token_s": first_tok,
        "finish_s": finish,
        "ttft_s": first_tok - workload.arrival_s,
        "e2e_s": finish - workload.arrival_s,
        "queue_s": first_sched - workload.arrival_s,
        "num_preemptions": n_preempt,
        "prefix_hit_tokens": hit_tokens,
    }, columns=list(REQUEST_COLUMNS))
    token_times = _split_token_times(tok_ids, tok_t, n_req) if record_token_times else None
    return SimResult(steps=steps, requests=requests, token_times=token_times)


def _schedule_with_preemption(
    run: np.ndarray, c: np.ndarray, p: np.ndarray, budget: int, cap: int, bs: int, total_blocks: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Sequential running-phase scheduling with preemption by recompute.

    Used only when the running requests' blocks for this step exceed the KV
    pool. Walks the running requests in admission order; when one's new
    blocks do not fit, preempts the most recently admitted running request
    until they do (stopping if it preempts itself).

    Returns
    -------
    tuple
        The surviving running ids, their KV lengths, prompts and scheduled
        tokens (0 when not scheduled), and the preempted ids in preemption
        order (most recently admitted first).
    """
    ids = run.tolist()
    cl = c.tolist()
    pl = p.tolist()
    m = len(ids)
    sched = [0] * m
    free = total_blocks - sum((x + bs - 1) // bs for x in cl)
    victims: list[int] = []
    i = 0
    while i < m and budget > 0:
        ci = cl[i]
        pi = pl[i]
        if ci < pi:
            n = pi - ci
            if cap and n > cap:
                n = cap
            if n > budget:
                n = budget
        else:
            n = 1
        extra = (ci + n + bs - 1) // bs - (ci + bs - 1) // bs
        self_preempted = False
        while extra > free:
            m -= 1
            victims.append(ids[m])
            free += (cl[m] + bs - 1) // bs
            if m == i:
                self_preempted = True
                break
        if self_preempted:
            break
        free -= extra
        budget -= n
        sched[i] = n
        i += 1
    return (np.asarray(ids[:m], dtype=np.int64), np.asarray(cl[:m], dtype=np.int64),
            np.asarray(pl[:m], dtype=np.int64), np.asarray(sched[:m], dtype=np.int64), victims)


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


def _split_token_times(tok_ids: list[np.ndarray], tok_t: list[float], n_req: int) -> list[np.ndarray]:
    """Per-request arrays of token emission times from per-step emitter lists."""
    if not tok_ids:
        return [np.zeros(0) for _ in range(n_req)]
    ids = np.concatenate(tok_ids)
    times = np.repeat(np.asarray(tok_t), [a.size for a in tok_ids])
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids, minlength=n_req)
    return np.split(times[order], np.cumsum(counts)[:-1])
