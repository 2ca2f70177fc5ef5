"""Operating range: where a step-time predictor was fitted, and whether a replay leaves it.

A formula's constants are fitted on the steps of some experiments (step traces,
or the simulated steps of the replays a calibration matched). Inside the range of
those steps its error is the one measured; outside it the formula extrapolates,
and a saturated replay turns a few percent of step-time error into tens of
percent of latency error. The range is recorded with the predictor, and every
replay says when the run leaves it, instead of printing an extrapolation as an
ordinary prediction.

The quantities are properties of the workload and of the server it runs on, not
of the model (a leave-one-model-out fold predicts a new model by design):

==========================  ===========================================================
``requests_per_step``        requests in the step (prefill + decode)
``context_per_request``      KV tokens held per request in the step (``kv.tokens_in_use`` ÷ requests)
``tokens_per_step``          tokens the step processes (``batch.scheduled_tokens``)
``tensor_parallel``          the server's tensor-parallel degree (``arch.tp``): a formula fitted on
                             TP ≥ 2 only has never seen a step without all-reduces, and its split
                             between per-layer and all-reduce latency is not identified there
==========================  ===========================================================

The range of a quantity is the central :data:`COVERAGE` of the fitted steps (the
1st to the 99th percentile, steps with at least one request); a replay
*extrapolates* when more than :data:`OUTSIDE_SHARE` of its steps lie outside the
range of some quantity — about ten times what a run drawn from the fitted steps
would show (2 %). Pure functions over canonical step columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from features.errors import StepMLError

__all__ = ["QUANTITIES", "COVERAGE", "OUTSIDE_SHARE", "OperatingRange", "Excursion", "RangeCheck",
           "step_quantities", "fit_range", "check_range", "replay_range_check"]

#: Quantity → what it is (module docstring).
QUANTITIES: dict[str, str] = {
    "requests_per_step": "requests in the step",
    "context_per_request": "KV tokens held per request",
    "tokens_per_step": "tokens processed in the step",
    "tensor_parallel": "tensor-parallel degree of the server",
}

#: Central share of the fitted steps that makes the range (1st to 99th percentile).
COVERAGE = 0.98

#: A replay extrapolates when more than this share of its steps is outside the range of a quantity.
OUTSIDE_SHARE = 0.2

_NEEDED = ("batch.num_prefill_reqs", "batch.num_decode_reqs", "kv.tokens_in_use", "batch.scheduled_tokens")


def step_quantities(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The quantities of every step with at least one request (canonical columns in, arrays out).

    Columns missing from ``columns`` (a step table without ``kv.tokens_in_use``)
    leave their quantity out; a scalar column (``arch.tp`` of a replay's
    constants, merged in as ``{**constants, **steps}``) holds for every step.
    """
    if not all(c in columns for c in ("batch.num_prefill_reqs", "batch.num_decode_reqs")):
        return {}
    reqs = (np.asarray(columns["batch.num_prefill_reqs"], dtype=float)
            + np.asarray(columns["batch.num_decode_reqs"], dtype=float))
    busy = reqs > 0
    out = {"requests_per_step": reqs[busy]}
    if "kv.tokens_in_use" in columns:
        out["context_per_request"] = np.asarray(columns["kv.tokens_in_use"], dtype=float)[busy] / reqs[busy]
    if "batch.scheduled_tokens" in columns:
        out["tokens_per_step"] = np.asarray(columns["batch.scheduled_tokens"], dtype=float)[busy]
    if "arch.tp" in columns:
        out["tensor_parallel"] = np.broadcast_to(np.asarray(columns["arch.tp"], dtype=float), reqs.shape)[busy]
    return {k: v[np.isfinite(v)] for k, v in out.items()}


@dataclass(frozen=True)
class OperatingRange:
    """The range of each quantity over the steps a predictor was fitted on.

    Attributes
    ----------
    bounds : dict of str to (float, float)
        Quantity → (low, high), the central :data:`COVERAGE` of the fitted steps.
    steps : int
        Steps the range was taken from.
    source : str
        Where those steps came from.
    """

    bounds: Mapping[str, tuple[float, float]]
    steps: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"bounds": {Q: [low, high]}, "coverage", "steps", "source"}``."""
        return {"bounds": {k: [float(lo), float(hi)] for k, (lo, hi) in self.bounds.items()},
                "coverage": COVERAGE, "steps": int(self.steps), "source": self.source}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "operating_range") -> "OperatingRange":
        """Read :meth:`to_dict`'s output back (a one-line :class:`StepMLError` when malformed)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("bounds"), Mapping):
            raise StepMLError(f"{where}: expected {{\"bounds\": {{QUANTITY: [low, high]}}, ...}}")
        bounds = {}
        for name, pair in doc["bounds"].items():
            if name not in QUANTITIES:
                raise StepMLError(f"{where}: unknown quantity {name!r}; valid: {', '.join(QUANTITIES)}")
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
            if not ok or pair[0] > pair[1]:
                raise StepMLError(f"{where}: {name} must be [low, high] with finite low <= high, got {pair!r}")
            bounds[name] = (float(pair[0]), float(pair[1]))
        steps = doc.get("steps", 0)
        return cls(bounds, int(steps) if isinstance(steps, (int, float)) else 0, str(doc.get("source", "")))


def fit_range(tables: Iterable[Mapping[str, Any]], source: str) -> OperatingRange | None:
    """The operating range of the steps of ``tables`` (canonical columns each); None when they have no step."""
    pooled: dict[str, list[np.ndarray]] = {}
    for cols in tables:
        for name, values in step_quantities(cols).items():
            pooled.setdefault(name, []).append(values)
    tail = (1.0 - COVERAGE) / 2.0
    bounds, steps = {}, 0
    for name in QUANTITIES:
        values = np.concatenate(pooled.get(name, [np.empty(0)]))
        if values.size:
            lo, hi = np.quantile(values, [tail, 1.0 - tail])
            bounds[name] = (float(lo), float(hi))
            steps = max(steps, int(values.size))
    return OperatingRange(bounds, steps, source) if bounds else None


@dataclass(frozen=True)
class Excursion:
    """How a replay's steps sit against the range of one quantity.

    Attributes
    ----------
    quantity : str
    share_below, share_above : float
        Shares of the replay's steps below and above the range.
    median : float
        The replay's median of the quantity.
    low, high : float
        The range.
    """

    quantity: str
    share_below: float
    share_above: float
    median: float
    low: float
    high: float

    @property
    def share(self) -> float:
        """Share of the replay's steps outside the range."""
        return self.share_below + self.share_above

    def describe(self) -> str:
        """One phrase: ``context_per_request: 96 % of steps above 803 (median 1,790; fitted 471-803)``."""
        side = "above" if self.share_above >= self.share_below else "below"
        return (f"{self.quantity}: {100 * self.share:.0f} % of steps outside the fitted {self.low:,.0f}-"
                f"{self.high:,.0f} ({side}; median {self.median:,.0f})")


@dataclass(frozen=True)
class RangeCheck:
    """A replay's steps against a predictor's operating range (module docstring).

    Attributes
    ----------
    excursions : tuple of Excursion
        One per quantity both the range and the replay have.
    source : str
        Where the range came from.
    """

    excursions: tuple[Excursion, ...]
    source: str = ""

    @property
    def outside(self) -> tuple[Excursion, ...]:
        """The quantities the replay leaves (share above :data:`OUTSIDE_SHARE`)."""
        return tuple(e for e in self.excursions if e.share > OUTSIDE_SHARE)

    @property
    def extrapolates(self) -> bool:
        return bool(self.outside)

    def describe(self) -> str:
        """The quantities left, joined (empty when inside)."""
        return "; ".join(e.describe() for e in self.outside)

    def to_dict(self) -> dict[str, Any]:
        return {"extrapolates": self.extrapolates, "outside_share_limit": OUTSIDE_SHARE, "source": self.source,
                "quantities": {e.quantity: {"share_below": e.share_below, "share_above": e.share_above,
                                            "median": e.median, "fitted": [e.low, e.high]}
                               for e in self.excursions}}


def check_range(rng: OperatingRange, columns: Mapping[str, Any]) -> RangeCheck:
    """Compare the steps of a replay (canonical columns) with ``rng``."""
    out = []
    for name, values in step_quantities(columns).items():
        if name not in rng.bounds or not values.size:
            continue
        lo, hi = rng.bounds[name]
        out.append(Excursion(name, float(np.mean(values < lo)), float(np.mean(values > hi)),
                             float(np.median(values)), lo, hi))
    return RangeCheck(tuple(out), rng.source)


def replay_range_check(predictor: Any, steps: Mapping[str, Any],
                       constants: Mapping[str, Any] | None = None) -> RangeCheck | None:
    """:func:`check_range` of a replay's steps (and its server's ``constants``: ``arch.tp``) against
    ``predictor.operating_range`` (None when it has none)."""
    rng = getattr(predictor, "operating_range", None)
    return check_range(rng, {**(constants or {}), **steps}) if rng is not None else None
