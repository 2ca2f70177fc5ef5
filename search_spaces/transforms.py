"""Target transforms: the space a search models, mapped back to the step time the harness scores.

``--target-transform`` chooses what the engines' trees model; the formula a
search returns, the rescoring, the hall of fame, export and audit are always
about the original target (the latency, µs):

``none`` (default)
    The tree models the latency: ``latency = b + a·tree``.
``efficiency[:FEATURE]``
    The tree models the *utilisation* ``u = roofline time / latency``
    (dimensionless, ~(0, 1]), as aiconfigurator's interpolation engine does
    (``docs/design/perf_interp_design.md``: latency = speed-of-light time ÷
    utilisation; the utilisation is smooth and bounded, and it carries over to
    sizes outside the data where the latency does not). ``FEATURE`` is the
    roofline time, a catalogue feature in µs: ``rl_bound`` (the step's GEMM
    FLOPs at peak FLOP/s or its HBM bytes at peak bandwidth, whichever is
    larger) when the data can compute it, else ``op_bound`` (an operator
    table's own FLOPs and bytes, ``op.flops`` / ``op.bytes`` in a column map).
    The formula is ``latency = FEATURE / (b + a·tree)``.
``log``
    The tree models ``log(latency)``: ``latency = exp(b + a·tree)``; the
    absolute error in log space is the relative error for small errors.

Inside the search the linear scaling and the constant fit work in the
transformed space (relative residuals ``(z − t)/t`` for ``none`` and
``efficiency``, absolute residuals ``z − t`` for ``log``); the loss every
engine selects on is the mean relative error of the *latency* prediction
(:class:`search_spaces.objective.Objective`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np

from features.errors import StepMLError

if TYPE_CHECKING:
    import sympy

__all__ = ["KINDS", "NONE", "TargetTransform", "parse_transform"]

#: Transform names accepted by ``--target-transform``.
KINDS = ("none", "efficiency", "log")
#: Roofline features tried, in order, by ``efficiency`` without a feature.
DEFAULT_ROOFLINES = ("rl_bound", "op_bound")


@dataclass(frozen=True)
class TargetTransform:
    """One target transform (see the module docstring).

    Attributes
    ----------
    kind : str
        ``none``, ``efficiency`` or ``log``.
    feature : str or None
        The roofline-time feature of ``efficiency`` (None: chosen from the data,
        :meth:`resolve`).
    """

    kind: str = "none"
    feature: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StepMLError(f"unknown --target-transform '{self.kind}'; valid: none, efficiency[:FEATURE], log")
        if self.feature is not None and self.kind != "efficiency":
            raise StepMLError(f"--target-transform {self.kind} takes no feature (only efficiency:FEATURE does)")

    @property
    def spec(self) -> str:
        """The ``--target-transform`` text (``efficiency:rl_bound``)."""
        return f"{self.kind}:{self.feature}" if self.feature else self.kind

    @property
    def needs_scale(self) -> bool:
        """Whether the transform reads a per-row roofline time."""
        return self.kind == "efficiency"

    @property
    def relative(self) -> bool:
        """True when the transformed space uses relative residuals (``none``, ``efficiency``); False for ``log``."""
        return self.kind != "log"

    def resolve(self, available: Iterable[str]) -> "TargetTransform":
        """The transform with its roofline feature chosen from the data's ``available`` features.

        Raises
        ------
        StepMLError
            When ``efficiency`` has no roofline time on this data, or the named
            feature is not a time in µs the data can compute.
        """
        if self.kind != "efficiency":
            return self
        from features import catalog

        have = set(available)
        if self.feature is None:
            for name in DEFAULT_ROOFLINES:
                if name in have:
                    return TargetTransform("efficiency", name)
            raise StepMLError("--target-transform efficiency needs a roofline time: the data computes neither "
                              f"{' nor '.join(DEFAULT_ROOFLINES)} (a column map gives an operator's FLOPs and bytes "
                              "as op.flops and op.bytes); or name one with efficiency:FEATURE")
        feature = catalog.get_feature(self.feature)  # an unknown name lists the valid ones
        if feature.unit != "us":
            raise StepMLError(f"--target-transform efficiency:{self.feature}: the roofline time must be a feature in "
                              f"µs, '{self.feature}' is in {feature.unit}")
        if self.feature not in have:
            raise StepMLError(f"--target-transform efficiency:{self.feature}: the data cannot compute "
                              f"'{self.feature}' (it needs {', '.join(feature.inputs)})")
        return self

    # -- numbers ----------------------------------------------------------------------------------
    def forward(self, y: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """The transformed target ``t`` of latencies ``y`` (``scale``: the roofline time per row)."""
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "efficiency":
            return np.asarray(scale, dtype=np.float64) / y
        if self.kind == "log":
            return np.log(y)
        return y

    def inverse(self, z: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """Latency predictions of transformed-space outputs ``z`` (non-finite where ``z`` cannot be inverted)."""
        z = np.asarray(z, dtype=np.float64)
        if self.kind == "efficiency":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(z > 0, np.asarray(scale, dtype=np.float64) / np.where(z > 0, z, 1.0), np.nan)
        if self.kind == "log":
            with np.errstate(over="ignore"):
                return np.exp(np.minimum(z, 700.0))
        return z

    def to_latency(self, expr: "sympy.Expr") -> "sympy.Expr":
        """The latency formula of a transformed-space formula."""
        import sympy

        from search_spaces.operators import symbol_name

        if self.kind == "efficiency":
            return sympy.Symbol(symbol_name(str(self.feature))) / expr
        if self.kind == "log":
            return sympy.exp(expr)
        return expr

    def seeds(self, formulas: Iterable[str]) -> tuple[str, ...]:
        """Seed formulas for the transformed target: each latency seed ``L`` as it is (a shape for the
        transformed target too) and, for ``efficiency``, also as the utilisation ``FEATURE / (L)`` it
        implies (skipped by an engine whose space lacks division or the feature)."""
        formulas = tuple(formulas)
        if self.kind != "efficiency":
            return formulas
        return formulas + tuple(f"{self.feature} / ({text})" for text in formulas)

    def check_scale(self, scale: np.ndarray, where: str) -> None:
        """One line if the roofline time is not finite and > 0 on every row (the latency divides by it)."""
        bad = ~(np.isfinite(scale) & (scale > 0))
        if bad.any():
            raise StepMLError(f"--target-transform {self.spec}: the roofline time '{self.feature}' is not finite and "
                              f"> 0 on {int(bad.sum())} row(s) of {where}")


#: No transform.
NONE = TargetTransform()


def parse_transform(spec: "str | TargetTransform | None") -> TargetTransform:
    """``none``, ``efficiency``, ``efficiency:FEATURE`` or ``log`` as a :class:`TargetTransform`."""
    if spec is None:
        return NONE
    if isinstance(spec, TargetTransform):
        return spec
    if not isinstance(spec, str):
        raise StepMLError(f"--target-transform must be text, got {spec!r}")
    kind, _, feature = spec.strip().partition(":")
    return TargetTransform(kind, feature or None)
