"""Requests to replay: from an inference-perf profile or from a per-request table.

What inference-perf generated for a ``shared_prefix`` / ``constant`` profile
----------------------------------------------------------------------------
Read from ``kubernetes-sigs/inference-perf`` (``datagen/shared_prefix_datagen.py``,
``loadgen/load_timer.py``, ``loadgen/load_generator.py``, ``apis/user_session.py``,
``config.py``) and checked against the BLIS measurements:

Prompts
    ``num_groups`` system prompts of ``system_prompt_len`` random token ids, each
    with ``num_prompts_per_group`` questions of ``question_len`` random token ids;
    a prompt is ``decode(system) + " " + decode(question)``. The
    ``num_groups × num_prompts_per_group`` prompts are generated once, shuffled
    (``random.shuffle``), and request ``j`` of a stage gets prompt ``j mod P``
    (the data generator restarts every stage). ``max_tokens = output_len`` and the
    server runs with ``ignore_eos``, so every request generates exactly
    ``output_len`` tokens (unless ``max_model_len`` stops it).

    Because the same P prompts repeat every P requests, vLLM's prefix cache holds
    the *whole* prompt of a repeated request, not just its system prompt. The
    default ``prefix_mode="prompt"`` models that (group = prompt id, prefix = whole
    prompt); ``prefix_mode="system"`` shares only the system prompt (group = system
    prompt id, prefix = ``system_prompt_len``).

Effective configuration of the BLIS experiments
    Their ``profile.yaml`` asks for ``num_unique_system_prompts`` /
    ``num_users_per_system_prompt`` / ``enable_multi_turn_chat``, but the
    inference-perf release that ran them (February 2026) only knew ``num_groups`` /
    ``num_prompts_per_group`` and had no multi-turn chat: pydantic ignored the
    unknown keys and the run used the defaults 10 × 10 — its own dump,
    ``results/config.yaml``, says ``num_groups: 10, num_prompts_per_group: 10`` and
    has no ``enable_multi_turn_chat``. The measurements agree: ``prompt_len`` is
    identical in every stage (mean 574.91 in both stages of 70B general, min 559,
    max 589), as it is when each of 100 prompts is sent exactly 48 and 120 times,
    and it never grows as multi-turn history would.
    :func:`experiment_profile` therefore lets ``results/config.yaml`` override the
    profile's ``data.shared_prefix`` when it is present.

Multi-turn chat (newer releases only)
    With ``enable_multi_turn_chat`` (later releases accept the profile's key names
    as aliases), each of the ``G × U`` users owns a session whose context starts
    as its system prompt; round ``r`` sends ``context + " " + question`` and the
    context becomes that prompt plus the response, so the input grows by
    ``question_len + output_len`` per round (no truncation). Request ``j`` goes to
    user ``j mod (G·U)``; rounds of one user are serialised by the client. Here
    (``multi_turn=True``) only the input growth is modelled (round counted over the
    whole run), the previous round's prompt and output being the cached prefix of
    the user's group; the client-side serialisation is not.

Arrivals (``load.type: constant``)
    ``ConstantLoadTimer`` draws ``n = int(rate × duration)`` exponential gaps of mean
    ``1/rate``, rescales them to sum to ``duration`` and sends request ``k`` at
    ``stage start + Σ gaps[:k+1]`` — Poisson-like arrivals with exactly
    ``rate × duration`` requests, the last at the end of the stage. The measured
    counts match it exactly (4,800 = 8/s × 600 s and 12,000 = 20/s × 600 s for 70B
    general; 3,000/6,000 codegen; 7,200 roleplay; 4,800 reasoning incl. failures).
    ``arrivals="poisson"`` draws plain exponential gaps until the stage duration
    instead (count varies), ``"uniform"`` spaces them evenly.
    A stage starts only after the previous stage's requests have all finished,
    plus ``load.interval`` (1 s) and a 1 s queue warm-up; the replay places stages
    that way (:func:`place_stages`).

Input lengths
    The server sees the re-tokenised prompt text, which is longer than
    ``system_prompt_len + question_len``: measured mean prompt lengths are
    ``≈ 1 + 1.048 × nominal`` (574.9 for 547, 593.5 for 566, 786.7 for 750, 1082 for
    1034). ``input_offset`` shifts every input (the replay uses the measured mean).

Outputs of :func:`requests_from_profile` / :func:`requests_from_table` are tables
with the :class:`evaluation.scheduler.Workload` columns (``arrival_s``,
``input_tokens``, ``output_tokens``, ``prefix_group``, ``prefix_len``) plus
``stage`` and ``stage_time_s`` (arrival within the stage); :func:`to_workload`
turns one into a :class:`~evaluation.scheduler.Workload`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from evaluation.scheduler import Workload
from features.errors import StepMLError

__all__ = [
    "SharedPrefixData",
    "LoadStage",
    "Profile",
    "parse_profile",
    "read_profile",
    "experiment_profile",
    "stage_arrivals",
    "requests_from_profile",
    "requests_from_table",
    "place_stages",
    "to_workload",
    "STAGE_WARMUP_S",
]

#: inference-perf schedules a stage's first request 1 s after the stage starts.
STAGE_WARMUP_S = 1.0

ARRIVAL_MODES = ("normalized", "poisson", "uniform")
PREFIX_MODES = ("prompt", "system", "none")

_ALIASES = {
    "num_groups": ("num_groups", "num_unique_system_prompts"),
    "num_prompts_per_group": ("num_prompts_per_group", "num_users_per_system_prompt"),
}


@dataclass(frozen=True)
class SharedPrefixData:
    """``data.shared_prefix`` of an inference-perf profile (lengths in tokens)."""

    num_groups: int = 10
    num_prompts_per_group: int = 10
    system_prompt_len: int = 100
    question_len: int = 50
    output_len: int = 50
    multi_turn: bool = False

    @property
    def num_prompts(self) -> int:
        return self.num_groups * self.num_prompts_per_group

    @property
    def nominal_input(self) -> int:
        """``system_prompt_len + question_len`` (before re-tokenisation)."""
        return self.system_prompt_len + self.question_len


@dataclass(frozen=True)
class LoadStage:
    """One constant-rate stage: ``rate`` requests/s for ``duration`` s."""

    rate: float
    duration: float

    @property
    def num_requests(self) -> int:
        return int(self.rate * self.duration)


@dataclass(frozen=True)
class Profile:
    """The parts of an inference-perf profile the replay needs."""

    data: SharedPrefixData
    stages: tuple[LoadStage, ...]
    load_type: str = "constant"
    interval_s: float = 1.0
    streaming: bool = True
    ignore_eos: bool = True
    source: str = ""
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def num_requests(self) -> int:
        return sum(s.num_requests for s in self.stages)


def _get(mapping: Mapping[str, Any], names: Sequence[str], default: Any) -> Any:
    for name in names:
        if name in mapping and mapping[name] is not None:
            return mapping[name]
    return default


def _int(value: Any, what: str, source: str, minimum: int = 0) -> int:
    try:
        out = int(value)
        if out != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise StepMLError(f"{source}: {what} must be an integer, got {value!r}") from None
    if out < minimum:
        raise StepMLError(f"{source}: {what} must be >= {minimum}, got {out}")
    return out


def _shared_prefix(block: Any, source: str) -> SharedPrefixData:
    if not isinstance(block, Mapping):
        raise StepMLError(f"{source}: data.shared_prefix must be a mapping")
    d = SharedPrefixData()
    return SharedPrefixData(
        num_groups=_int(_get(block, _ALIASES["num_groups"], d.num_groups), "num_groups", source, 1),
        num_prompts_per_group=_int(_get(block, _ALIASES["num_prompts_per_group"], d.num_prompts_per_group),
                                   "num_prompts_per_group", source, 1),
        system_prompt_len=_int(block.get("system_prompt_len", d.system_prompt_len), "system_prompt_len", source),
        question_len=_int(block.get("question_len", d.question_len), "question_len", source),
        output_len=_int(block.get("output_len", d.output_len), "output_len", source, 1),
        multi_turn=bool(block.get("enable_multi_turn_chat", False)),
    )


def parse_profile(obj: Any, source: str = "profile") -> Profile:
    """Parse an inference-perf profile (already loaded from JSON/YAML).

    Accepts both key spellings of the group counts (``num_groups`` /
    ``num_unique_system_prompts``, ``num_prompts_per_group`` /
    ``num_users_per_system_prompt``). Only ``data.type: shared_prefix`` and
    ``load.type: constant|poisson`` with ``stages: [{rate, duration}]`` are supported.
    """
    if not isinstance(obj, Mapping):
        raise StepMLError(f"{source}: expected a mapping at the top level")
    data = obj.get("data")
    if not isinstance(data, Mapping):
        raise StepMLError(f"{source}: no 'data' section")
    dtype = data.get("type")
    if dtype != "shared_prefix":
        raise StepMLError(f"{source}: data.type {dtype!r} is not supported (only 'shared_prefix')")
    spec = _shared_prefix(data.get("shared_prefix") or {}, source)
    load = obj.get("load")
    if not isinstance(load, Mapping):
        raise StepMLError(f"{source}: no 'load' section")
    ltype = str(load.get("type", "constant"))
    if ltype not in ("constant", "poisson"):
        raise StepMLError(f"{source}: load.type {ltype!r} is not supported (only 'constant' or 'poisson')")
    raw_stages = load.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise StepMLError(f"{source}: load.stages must be a non-empty list of {{rate, duration}}")
    stages = []
    for i, st in enumerate(raw_stages):
        if not isinstance(st, Mapping) or "rate" not in st or "duration" not in st:
            raise StepMLError(f"{source}: load.stages[{i}] needs 'rate' and 'duration'")
        try:
            rate, dur = float(st["rate"]), float(st["duration"])
        except (TypeError, ValueError):
            raise StepMLError(f"{source}: load.stages[{i}] has a non-numeric rate or duration") from None
        if not (rate > 0 and dur > 0 and np.isfinite(rate) and np.isfinite(dur)):
            raise StepMLError(f"{source}: load.stages[{i}] needs rate > 0 and duration > 0")
        stages.append(LoadStage(rate, dur))
    api = obj.get("api") or {}
    server = obj.get("server") or {}
    try:
        interval = float(load.get("interval", 1.0))
    except (TypeError, ValueError):
        raise StepMLError(f"{source}: load.interval must be a number") from None
    return Profile(spec, tuple(stages), ltype, interval, bool(api.get("streaming", True)),
                   bool(server.get("ignore_eos", True)), source)


def _load_mapping(path: Path) -> Any:
    if not path.is_file():
        raise StepMLError(f"profile not found: {path}")
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StepMLError(f"{path}: neither JSON nor YAML ({' '.join(str(exc).split())})") from None


def read_profile(path: str | Path) -> Profile:
    """Read a ``profile.yaml`` (JSON or YAML) as written, with no override."""
    path = Path(path)
    return parse_profile(_load_mapping(path), str(path))


def experiment_profile(exp_dir: str | Path) -> Profile:
    """The profile an experiment actually ran with.

    ``profile.yaml`` with ``data.shared_prefix`` replaced by the one in
    ``results/config.yaml`` (inference-perf's dump of the configuration it ran)
    when that file exists; see the module docstring for why.
    """
    exp_dir = Path(exp_dir)
    profile = read_profile(exp_dir / "profile.yaml")
    dump_path = exp_dir / "results" / "config.yaml"
    if not dump_path.is_file():
        return profile
    dump = _load_mapping(dump_path)
    block = ((dump or {}).get("data") or {}).get("shared_prefix") if isinstance(dump, Mapping) else None
    if not isinstance(block, Mapping):
        return profile
    ran = _shared_prefix(block, str(dump_path))
    notes = list(profile.notes)
    if ran != profile.data:
        notes.append(f"results/config.yaml overrides the profile's shared_prefix: {ran.num_groups} groups x "
                     f"{ran.num_prompts_per_group} prompts, multi-turn {'on' if ran.multi_turn else 'off'} "
                     f"(profile: {profile.data.num_groups} x {profile.data.num_prompts_per_group}, "
                     f"multi-turn {'on' if profile.data.multi_turn else 'off'})")
    return replace(profile, data=ran, notes=tuple(notes))


# -- generation ----------------------------------------------------------------------------------

def stage_arrivals(stage: LoadStage, rng: np.random.Generator, mode: str = "normalized") -> np.ndarray:
    """Arrival times within one stage (s from the first scheduled instant of the stage).

    ``normalized`` (inference-perf's ``constant`` timer): ``int(rate·duration)``
    exponential gaps rescaled to sum to ``duration``; ``poisson``: exponential gaps
    of mean ``1/rate`` while within ``duration``; ``uniform``: gaps ``1/rate``.
    """
    n = stage.num_requests
    if mode == "normalized":
        if n == 0:
            return np.zeros(0)
        gaps = rng.exponential(1.0 / stage.rate, n)
        return np.cumsum(gaps * (stage.duration / gaps.sum()))
    if mode == "poisson":
        times = []
        t = 0.0
        while True:
            t += rng.exponential(1.0 / stage.rate)
            if t > stage.duration:
                return np.asarray(times, dtype=float)
            times.append(t)
    if mode == "uniform":
        return np.arange(1, n + 1, dtype=float) / stage.rate
    raise StepMLError(f"unknown arrival mode '{mode}'; valid: {', '.join(ARRIVAL_MODES)}")


def place_stages(frame: pd.DataFrame, starts: Sequence[float]) -> pd.DataFrame:
    """A copy of ``frame`` with ``arrival_s = starts[stage] + STAGE_WARMUP_S + stage_time_s``."""
    starts = np.asarray(starts, dtype=float)
    stage = frame["stage"].to_numpy(dtype=np.int64)
    if stage.size and stage.max() >= starts.size:
        raise StepMLError(f"place_stages: {starts.size} stage start(s) given for stage {int(stage.max())}")
    out = frame.copy()
    out["arrival_s"] = starts[stage] + STAGE_WARMUP_S + frame["stage_time_s"].to_numpy(dtype=float)
    return out


def requests_from_profile(profile: Profile, seed: int = 0, *, arrivals: str = "normalized",
                          prefix_mode: str = "prompt", input_offset: int = 0,
                          stage_gap_s: float = 600.0, multi_turn: bool | None = None) -> pd.DataFrame:
    """Requests of a profile, deterministic for a seed.

    Parameters
    ----------
    profile : Profile
        E.g. from :func:`experiment_profile`.
    seed : int
        Seeds ``np.random.default_rng`` (prompt shuffle, then arrivals stage by stage).
    arrivals : str
        ``normalized`` (inference-perf's constant timer), ``poisson`` or ``uniform``.
    prefix_mode : str
        ``prompt`` (a repeated prompt is cached whole), ``system`` (only the system
        prompt is shared) or ``none``.
    input_offset : int
        Added to every input length (re-tokenisation; see the module docstring).
    stage_gap_s : float
        Idle time between the end of one stage's sending window and the next stage
        (the replay re-places stages after the simulated drain, see :func:`place_stages`).
    multi_turn : bool, optional
        Model multi-turn input growth; default: the profile's setting.

    Returns
    -------
    pandas.DataFrame
        One row per request in send order: ``request``, ``stage``, ``stage_index``
        (index within the stage), ``stage_time_s``, ``arrival_s``, ``input_tokens``,
        ``output_tokens``, ``prompt_id``, ``system_prompt_id``, ``round``,
        ``prefix_group``, ``prefix_len`` and ``loop_phase_s``: the fraction of a second
        the client's event-loop clock shows when the request is sent, uniform in
        [0, 1) (drawn after everything else; aiohttp rounds long timeouts up to the
        next whole second of that clock, see :mod:`evaluation.replay_setup`).
    """
    if prefix_mode not in PREFIX_MODES:
        raise StepMLError(f"unknown prefix mode '{prefix_mode}'; valid: {', '.join(PREFIX_MODES)}")
    if arrivals not in ARRIVAL_MODES:
        raise StepMLError(f"unknown arrival mode '{arrivals}'; valid: {', '.join(ARRIVAL_MODES)}")
    spec = profile.data
    turns = spec.multi_turn if multi_turn is None else bool(multi_turn)
    rng = np.random.default_rng(seed)
    n_prompts = spec.num_prompts
    # prompt k of the shuffled list -> its system prompt (group) id
    system_of = rng.permutation(np.repeat(np.arange(spec.num_groups), spec.num_prompts_per_group))
    parts = []
    served = 0                                   # requests sent so far (multi-turn rounds)
    for s, stage in enumerate(profile.stages):
        t = stage_arrivals(stage, rng, arrivals)
        n = t.size
        j = np.arange(n)
        prompt = j % n_prompts
        if turns:
            rnd = (served + j) // n_prompts
            prompt = (served + j) % n_prompts
        else:
            rnd = np.zeros(n, dtype=np.int64)
        parts.append(pd.DataFrame({
            "stage": np.full(n, s, dtype=np.int64), "stage_index": j, "stage_time_s": t,
            "prompt_id": prompt.astype(np.int64), "round": rnd.astype(np.int64)}))
        served += n
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["stage", "stage_index", "stage_time_s", "prompt_id", "round"])
    frame.insert(0, "request", np.arange(len(frame), dtype=np.int64))
    sys_id = system_of[frame["prompt_id"].to_numpy(dtype=np.int64)] if len(frame) else np.zeros(0, np.int64)
    base = spec.nominal_input + int(input_offset)
    if base < 1:
        raise StepMLError(f"input length {base} < 1 (nominal {spec.nominal_input} + offset {input_offset})")
    rnd = frame["round"].to_numpy(dtype=np.int64)
    inp = base + rnd * (spec.question_len + spec.output_len)
    frame["input_tokens"] = inp.astype(np.int64)
    frame["output_tokens"] = np.full(len(frame), spec.output_len, dtype=np.int64)
    frame["system_prompt_id"] = sys_id.astype(np.int64)
    group, plen = _prefix_columns(spec, prefix_mode, turns, frame["prompt_id"].to_numpy(dtype=np.int64), sys_id,
                                  rnd, inp, base)
    frame["prefix_group"] = group
    frame["prefix_len"] = plen
    # drawn last, so the draws above do not depend on it
    frame["loop_phase_s"] = rng.random(len(frame))
    starts = np.concatenate(([0.0], np.cumsum([st.duration + stage_gap_s for st in profile.stages])[:-1]))
    return place_stages(frame, starts)[_COLUMNS]


def _prefix_columns(spec: SharedPrefixData, prefix_mode: str, turns: bool, pid: np.ndarray, sys_id: np.ndarray,
                    rnd: np.ndarray, inp: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prefix_group, prefix_len)`` of every request for a prefix mode (see :func:`requests_from_profile`)."""
    n = pid.size
    if prefix_mode == "none":
        group = np.full(n, -1, dtype=np.int64)
        plen = np.zeros(n, dtype=np.int64)
    elif turns:
        # round 0 shares the system prompt; later rounds reuse the user's previous context
        first = rnd == 0
        group = np.where(first, sys_id, spec.num_groups + pid)
        prev_ctx = inp - spec.question_len              # previous prompt + its output
        plen = np.where(first, min(spec.system_prompt_len, base), np.minimum(prev_ctx, inp))
        if prefix_mode == "system":
            group, plen = sys_id, np.full(n, min(spec.system_prompt_len, base))
    elif prefix_mode == "prompt":
        group, plen = pid, inp
    else:
        group, plen = sys_id, np.full(n, min(spec.system_prompt_len, base))
    return np.asarray(group, dtype=np.int64), np.asarray(plen, dtype=np.int64)


_COLUMNS = ["request", "stage", "stage_index", "stage_time_s", "arrival_s", "input_tokens", "output_tokens",
            "prompt_id", "system_prompt_id", "round", "prefix_group", "prefix_len", "loop_phase_s"]

_TABLE_ALIASES = {
    "arrival_s": ("arrival_s", "arrival", "start_s", "arrival_time"),
    "input_tokens": ("input_tokens", "prompt_tokens", "prompt_len"),
    "output_tokens": ("output_tokens", "completion_tokens", "output_len"),
}


def requests_from_table(table: pd.DataFrame, *, source: str = "table", relative: bool = True) -> pd.DataFrame:
    """Requests from a per-request table (e.g. :func:`features.otlp.read_request_spans`).

    Columns ``arrival_s``, ``input_tokens``, ``output_tokens`` (or the aliases
    ``arrival``/``start_s``, ``prompt_tokens``/``prompt_len``,
    ``completion_tokens``/``output_len``); optional ``prefix_group``, ``prefix_len``
    and ``stage``. With ``relative`` the first arrival becomes 0. Rows are sorted
    by arrival (stable).
    """
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise StepMLError(f"{source}: no requests")
    cols = {}
    for name, aliases in _TABLE_ALIASES.items():
        found = next((a for a in aliases if a in table.columns), None)
        if found is None:
            raise StepMLError(f"{source}: missing column {name} (or one of {', '.join(aliases[1:])})")
        cols[name] = found
    try:
        arrival = pd.to_numeric(table[cols["arrival_s"]]).to_numpy(dtype=float)
        inp = pd.to_numeric(table[cols["input_tokens"]]).to_numpy()
        out = pd.to_numeric(table[cols["output_tokens"]]).to_numpy()
    except (ValueError, TypeError) as exc:
        raise StepMLError(f"{source}: non-numeric request column ({exc})") from None
    if not np.isfinite(arrival).all():
        raise StepMLError(f"{source}: non-finite arrival time at row {int(np.argmin(np.isfinite(arrival)))}")
    for name, arr in (("input_tokens", inp), ("output_tokens", out)):
        bad = np.flatnonzero(~np.isfinite(arr.astype(float)) | (arr < 1) | (arr != np.round(arr)))
        if bad.size:
            raise StepMLError(f"{source}: {name} must be integers >= 1; row {int(bad[0])} is {arr[bad[0]]!r}")
    frame = pd.DataFrame({
        "arrival_s": arrival - (arrival.min() if relative else 0.0),
        "input_tokens": inp.astype(np.int64),
        "output_tokens": out.astype(np.int64),
        "prefix_group": (table["prefix_group"].to_numpy(dtype=np.int64) if "prefix_group" in table.columns
                         else np.full(len(table), -1, dtype=np.int64)),
        "prefix_len": (table["prefix_len"].to_numpy(dtype=np.int64) if "prefix_len" in table.columns
                       else np.zeros(len(table), dtype=np.int64)),
        "stage": (table["stage"].to_numpy(dtype=np.int64) if "stage" in table.columns
                  else np.zeros(len(table), dtype=np.int64)),
    })
    frame = frame.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    frame["stage_time_s"] = frame["arrival_s"] - frame.groupby("stage")["arrival_s"].transform("min")
    frame.insert(0, "request", np.arange(len(frame), dtype=np.int64))
    return frame


def to_workload(frame: pd.DataFrame) -> Workload:
    """The :class:`~evaluation.scheduler.Workload` of a request table (validated there)."""
    try:
        return Workload.from_frame(frame)
    except ValueError as exc:
        raise StepMLError(f"workload: {exc}") from None
