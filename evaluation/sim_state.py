"""The mutable state of one continuous-batching simulation and the phases of a step.

:func:`evaluation.scheduler.simulate` drives a :class:`SimState` through the
phases of every scheduler iteration, in this order (the rules are documented in
:mod:`evaluation.scheduler`):

1. :meth:`SimState.admit_arrivals` — requests that arrived by now join the
   waiting queue;
2. :meth:`SimState.abort_expired` — requests whose client gave up (deadline
   reached) leave the waiting queue or the running set, freeing their blocks;
3. :meth:`SimState.schedule_running` — running requests get their tokens, with
   preemption by recompute when the KV pool is short;
4. :meth:`SimState.schedule_waiting` — waiting requests are admitted FCFS;
5. :meth:`SimState.step_features` — the dict the step-time law sees;
6. :meth:`SimState.finish_step` — the step row is recorded, tokens are emitted,
   requests finish and the prefix cache is updated.

Nothing here draws random numbers; the same inputs give the same state.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.aggregates import AGGREGATE_RULES, batch_aggregates

__all__ = ["SimState", "Batch", "UNLIMITED_GPU_BLOCKS", "AGG_KEYS"]

#: Block total reported when ``num_gpu_blocks`` is None (unlimited KV).
UNLIMITED_GPU_BLOCKS = 10**9

AGG_KEYS: tuple[str, ...] = tuple(AGGREGATE_RULES)

_NEVER = np.iinfo(np.int64).max
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class Batch:
    """The requests of one step: ids, KV lengths before it, prompts, scheduled tokens."""

    run: np.ndarray
    ctx: np.ndarray
    prompt: np.ndarray
    alloc: np.ndarray
    used: int
    budget: int
    preempted: int


class SimState:
    """Per-request arrays, queues, clock and step columns of one simulation.

    Parameters
    ----------
    workload : evaluation.scheduler.Workload
    config : evaluation.scheduler.SchedulerConfig
    step_columns : sequence of str
        Column names of the step table (``STEP_COLUMNS``).
    record_token_times : bool
        Keep the emission time of every token.
    """

    def __init__(self, workload: Any, config: Any, step_columns: tuple[str, ...], record_token_times: bool) -> None:
        cfg = config
        self.n_req = n_req = len(workload)
        self.bs = bs = int(cfg.block_size)
        self.budget_max = int(cfg.max_num_batched_tokens)
        self.max_seqs = int(cfg.max_num_seqs)
        self.chunked = bool(cfg.enable_chunked_prefill)
        self.cap = int(cfg.long_prefill_token_threshold) if self.chunked else 0
        self.limited = cfg.num_gpu_blocks is not None
        self.total_blocks = int(cfg.num_gpu_blocks) if self.limited else UNLIMITED_GPU_BLOCKS
        self.record_token_times = bool(record_token_times)
        self.arrival_s = workload.arrival_s

        self.inp = inp = workload.input_tokens.astype(np.int64)
        too_long = np.flatnonzero(inp > cfg.max_model_len)
        if too_long.size:
            i = int(too_long[0])
            raise ValueError(f"request {i}: input_tokens {int(inp[i])} > max_model_len {cfg.max_model_len}")
        self.out_eff = out_eff = np.maximum(1, np.minimum(workload.output_tokens, cfg.max_model_len - inp)).astype(np.int64)
        if self.limited and n_req:
            peak = -(-(inp + out_eff - 1) // bs)
            bad = np.flatnonzero(peak > self.total_blocks)
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"request {i} needs up to {int(peak[i])} KV blocks > num_gpu_blocks {self.total_blocks}")

        self.ctx = np.zeros(n_req, dtype=np.int64)          # KV tokens computed
        self.prompt = inp.copy()                            # tokens to prefill (grows on preemption)
        self.emitted = np.zeros(n_req, dtype=np.int64)
        self.n_preempt = np.zeros(n_req, dtype=np.int64)
        self.hit_tokens = np.zeros(n_req, dtype=np.int64)
        self.first_sched = np.full(n_req, np.nan)
        self.first_tok = np.full(n_req, np.nan)
        self.finish = np.full(n_req, np.nan)
        self.aborted = np.full(n_req, np.nan)
        self._init_prefix(workload, cfg)

        order = np.argsort(workload.arrival_s, kind="stable")
        self.t0 = t0 = float(workload.arrival_s[order[0]]) if n_req else 0.0
        self.arr_us_l = ((workload.arrival_s[order] - t0) * 1e6).tolist()
        self.order_l = order.tolist()
        self._init_deadlines(workload)

        self.cols: dict[str, list] = {k: [] for k in step_columns}
        self.agg_cols = [(k, self.cols[k]) for k in AGG_KEYS]
        self.tok_ids: list[np.ndarray] = []
        self.tok_t: list[float] = []
        self.run = _EMPTY                                   # running request ids, admission order
        self.waiting: deque[int] = deque()
        self.nxt = 0                                        # next arrival (index into order_l)
        self.now = 0.0                                      # µs since the first arrival
        self.one_ahead = bool(getattr(cfg, "async_scheduling", False))
        self.prev_start = -1.0                              # start of the step in flight (< 0: engine idle)
        self.held = 0                                       # slots still held by requests that just finished (async)
        self.held_blocks = 0                                # ... and their KV blocks
        self.sid = 0
        self.n_done = 0                                     # finished or aborted

    def _init_prefix(self, workload: Any, cfg: Any) -> None:
        group, plen, bs = workload.prefix_group, workload.prefix_len, self.bs
        self.use_prefix = bool(cfg.enable_prefix_caching) and self.n_req > 0 and bool(
            ((group >= 0) & (plen >= bs)).any())
        self.cached: dict[int, int] = {}
        if self.use_prefix:
            aligned = (plen // bs) * bs
            self.pending = np.where((group >= 0) & (aligned > 0), plen, _NEVER).astype(np.int64)
            self.group_l = group.tolist()
            self.aligned_l = aligned.tolist()
            warm = getattr(workload, "prefix_warm", None)
            if warm is not None:
                for r in np.flatnonzero(warm & (group >= 0) & (aligned > 0)).tolist():
                    g = self.group_l[r]
                    self.cached[g] = max(self.cached.get(g, 0), self.aligned_l[r])

    def _init_deadlines(self, workload: Any) -> None:
        deadline = getattr(workload, "deadline_s", None)
        self.deadlines: list[tuple[float, int]] = []          # heap of (deadline µs, request) once arrived
        self.deadline_us_l: list[float] | None = None
        if deadline is not None and np.isfinite(deadline).any():
            self.deadline_us_l = ((np.asarray(deadline, dtype=float) - self.t0) * 1e6).tolist()

    # -- phases ------------------------------------------------------------------------------

    def admit_arrivals(self) -> None:
        """Requests that arrived by ``now`` join the waiting queue (arrival order).

        With async scheduling the batch was formed when the previous step
        started: only requests that arrived by then are admitted.
        """
        now = self.prev_start if self.one_ahead and self.prev_start >= 0.0 else self.now
        arr, order, n = self.arr_us_l, self.order_l, self.n_req
        dl = self.deadline_us_l
        while self.nxt < n and arr[self.nxt] <= now:
            r = order[self.nxt]
            self.waiting.append(r)
            if dl is not None and math.isfinite(dl[r]):
                heapq.heappush(self.deadlines, (dl[r], r))
            self.nxt += 1

    def idle(self) -> bool:
        return self.run.size == 0 and not self.waiting

    def jump_to_next_arrival(self) -> None:
        self.now = self.arr_us_l[self.nxt]

    def engine_idles(self) -> None:
        """Nothing was formed ahead: the engine idles until the next arrival (or schedules what has arrived)."""
        self.prev_start = -1.0
        self.held = self.held_blocks = 0
        if self.arr_us_l[self.nxt] > self.now:
            self.jump_to_next_arrival()

    def abort_expired(self) -> None:
        """Drop every unfinished request whose deadline is ``<= now`` (client disconnect → vLLM abort)."""
        heap = self.deadlines
        if not heap or heap[0][0] > self.now:
            return
        gone: set[int] = set()
        while heap and heap[0][0] <= self.now:
            _, r = heapq.heappop(heap)
            if self.finish[r] != self.finish[r]:           # NaN: still in the system
                gone.add(r)
        if not gone:
            return
        t_abort = self.t0 + self.now * 1e-6
        for r in gone:
            self.aborted[r] = t_abort
            if self.use_prefix:
                self.pending[r] = _NEVER
        self.n_done += len(gone)
        if self.run.size:
            keep = np.fromiter((r not in gone for r in self.run.tolist()), dtype=bool, count=self.run.size)
            self.run = self.run[keep]
        if any(r in gone for r in self.waiting):
            self.waiting = deque(r for r in self.waiting if r not in gone)

    def schedule_running(self) -> Batch:
        """Tokens for the running requests (admission order), preempting when KV blocks run out."""
        budget = self.budget_max
        run = self.run
        if not run.size:
            return Batch(run, _EMPTY, _EMPTY, _EMPTY, 0, budget, 0)
        bs, cap = self.bs, self.cap
        c = self.ctx[run]
        p = self.prompt[run]
        rem = p - c
        if cap:
            want = np.where(rem > 0, np.minimum(rem, cap), 1)
        else:
            want = np.where(rem > 0, rem, 1)
        if int(want.sum()) <= budget:
            alloc = want
        else:
            prev = np.cumsum(want) - want
            alloc = np.clip(budget - prev, 0, want)
        need = (c + alloc + (bs - 1)) // bs
        preempted = 0
        pool = self.total_blocks - self.held_blocks
        if self.limited and int(need.sum()) > pool:
            run, c, p, alloc, victims = _schedule_with_preemption(run, c, p, budget, cap, bs, pool)
            preempted = len(victims)
            for v in victims:          # each to the front: earliest-admitted ends first
                self.ctx[v] = 0
                self.prompt[v] = self.inp[v] + self.emitted[v]
                self.n_preempt[v] += 1
                self.waiting.appendleft(v)
            need = (c + alloc + (bs - 1)) // bs
            self.run = run
        return Batch(run, c, p, alloc, int(need.sum()), budget - int(alloc.sum()), preempted)

    def schedule_waiting(self, batch: Batch) -> None:
        """Admit waiting requests FCFS while slots, budget and KV blocks allow (not after a preemption)."""
        waiting = self.waiting
        # Slots and KV blocks of requests that finished in the step in flight free a step later (async),
        # unless nothing else would run: then the engine waits for that step's output and frees them first.
        slots = self.max_seqs - batch.run.size - (self.held if batch.run.size else 0)
        if batch.preempted or not waiting or batch.budget <= 0 or slots <= 0:
            return
        bs, chunked, cap, use_prefix = self.bs, self.chunked, self.cap, self.use_prefix
        budget, used = batch.budget, batch.used
        free = self.total_blocks - used - (self.held_blocks if batch.run.size else 0)
        new_ids: list[int] = []
        new_c: list[int] = []
        new_n: list[int] = []
        new_p: list[int] = []
        while waiting and budget > 0 and len(new_ids) < slots:
            r = waiting[0]
            pr = int(self.prompt[r])
            hit = self._prefix_hit(r, pr) if use_prefix else 0
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
                self.hit_tokens[r] += hit
            if self.first_sched[r] != self.first_sched[r]:      # NaN: first admission
                self.first_sched[r] = self.t0 + self.now * 1e-6
            new_ids.append(r)
            new_c.append(hit)
            new_n.append(n)
            new_p.append(pr)
        batch.budget, batch.used = budget, used
        if new_ids:
            batch.run = self.run = np.concatenate((batch.run, np.asarray(new_ids, dtype=np.int64)))
            batch.ctx = np.concatenate((batch.ctx, np.asarray(new_c, dtype=np.int64)))
            batch.alloc = np.concatenate((batch.alloc, np.asarray(new_n, dtype=np.int64)))
            batch.prompt = np.concatenate((batch.prompt, np.asarray(new_p, dtype=np.int64)))

    def _prefix_hit(self, r: int, prompt: int) -> int:
        g = self.group_l[r]
        if g >= 0:
            cg = self.cached.get(g, 0)
            if cg:
                return min(self.aligned_l[r], cg, ((prompt - 1) // self.bs) * self.bs)
        return 0

    def step_features(self, batch: Batch) -> dict[str, float]:
        """The step's aggregates (also appended to the step columns) plus queue and KV state."""
        if batch.budget == self.budget_max:
            # Unreachable: every request fits the pool alone (checked at start), so the
            # first running request or the head of the queue is always scheduled.
            raise RuntimeError(f"scheduler made no progress at t={self.now:.3f} us (step {self.sid})")
        sched = batch.alloc > 0
        if sched.all():
            agg = batch_aggregates(batch.ctx, batch.alloc, batch.prompt)
        else:
            agg = batch_aggregates(batch.ctx[sched], batch.alloc[sched], batch.prompt[sched])
        for k, col in self.agg_cols:
            col.append(agg[k])
        feats = dict(agg)
        feats["queue.running_depth"] = float(batch.run.size)
        feats["queue.waiting_depth"] = float(len(self.waiting))
        feats["kv.blocks_total_gpu"] = float(self.total_blocks)
        feats["kv.blocks_free_gpu"] = float(self.total_blocks - batch.used)
        feats["kv.usage_gpu_ratio"] = batch.used / self.total_blocks
        return feats

    def finish_step(self, batch: Batch, dur: float) -> None:
        """Record the step row, then emit tokens, finish requests and mark cached prefixes."""
        now = self.now
        end = now + dur
        cols = self.cols
        cols["step.duration_us"].append(dur)
        cols["step.ts_start_ns"].append(round(now * 1000.0))
        cols["step.ts_end_ns"].append(round(end * 1000.0))
        cols["queue.running_depth"].append(int(batch.run.size))
        cols["queue.waiting_depth"].append(len(self.waiting))
        cols["batch.num_preempted"].append(batch.preempted)
        cols["kv.usage_gpu_ratio"].append(batch.used / self.total_blocks)
        cols["kv.blocks_free_gpu"].append(self.total_blocks - batch.used)

        run, alloc, p = batch.run, batch.alloc, batch.prompt
        c2 = batch.ctx + alloc
        self.ctx[run] = c2
        if self.use_prefix:
            self._mark_cached(run, c2)
        emit = (alloc > 0) & (c2 >= p)
        fin = self._emit(run, emit, self.t0 + end * 1e-6)
        cols["batch.num_finished"].append(int(fin.size))
        # One step ahead, the next batch was formed while this step ran: a request that finishes here
        # still sat in vLLM's running list then (skipped, not computed), so its slot and its KV blocks
        # free a step later.
        if self.one_ahead:
            self.held = int(fin.size)
            self.held_blocks = int(((self.ctx[fin] + (self.bs - 1)) // self.bs).sum()) if fin.size else 0
        self.prev_start = now
        self.now = end
        self.sid += 1

    def _mark_cached(self, run: np.ndarray, c2: np.ndarray) -> None:
        marks = np.flatnonzero(c2 >= self.pending[run])
        for r in run[marks].tolist():
            g = self.group_l[r]
            if self.aligned_l[r] > self.cached.get(g, 0):
                self.cached[g] = self.aligned_l[r]
            self.pending[r] = _NEVER

    def _emit(self, run: np.ndarray, emit: np.ndarray, t_end: float) -> np.ndarray:
        """One token for every emitting request; returns the ids of those that finished."""
        fin = _EMPTY
        if not emit.any():
            return fin
        em_pos = np.flatnonzero(emit)
        em_ids = run[em_pos]
        e = self.emitted[em_ids] + 1
        self.emitted[em_ids] = e
        self.first_tok[em_ids[e == 1]] = t_end
        fmask = e >= self.out_eff[em_ids]
        if fmask.any():
            fin = em_ids[fmask]
            self.finish[fin] = t_end
            self.n_done += int(fin.size)
            keep = np.ones(run.size, dtype=bool)
            keep[em_pos[fmask]] = False
            self.run = run[keep]
        if self.record_token_times:
            self.tok_ids.append(em_ids)
            self.tok_t.append(t_end)
        return fin

    def token_times(self) -> list[np.ndarray]:
        """Per-request arrays of token emission times."""
        return _split_token_times(self.tok_ids, self.tok_t, self.n_req)


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


def _split_token_times(tok_ids: list[np.ndarray], tok_t: list[float], n_req: int) -> list[np.ndarray]:
    """Per-request arrays of token emission times from per-step emitter lists."""
    if not tok_ids:
        return [np.zeros(0) for _ in range(n_req)]
    ids = np.concatenate(tok_ids)
    times = np.repeat(np.asarray(tok_t), [a.size for a in tok_ids])
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids, minlength=n_req)
    return np.split(times[order], np.cumsum(counts)[:-1])
