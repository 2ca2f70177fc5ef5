"""Search spaces, declared once as data and registered by their CLI name.

A :class:`SearchSpace` names the features a formula may use, the operators
(from :mod:`search_spaces.operators`), constants, size limits, loss,
constraints and default data/target/split. Every engine translates the same
declaration into its own options, and export reads the same operator table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from features.errors import StepMLError
from features.registry import Registry

BATCH = ("prefill_tokens", "decode_tokens", "scheduled_tokens", "num_prefill_reqs", "num_decode_reqs",
         "batch_size", "is_mixed")
KV = ("kv_tokens", "kv_per_req", "decode_ctx_sum", "prefill_attn_work")
ARCH = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
        "total_params", "active_params", "bytes_per_param", "tp")
MOE = ("is_moe", "num_experts", "experts_per_token", "active_experts", "tokens_per_expert", "ep_size")
ROOFLINE = ("rl_prefill_compute", "rl_decode_compute", "rl_attn_compute", "rl_weight_load", "rl_kv_read",
            "rl_allreduce", "rl_expert_compute", "rl_expert_weights")
#: The cross-model physics basis (features/catalog.py, group ``physics``): times at peak rates, and counts.
PHYSICS = ("rl_memory", "rl_weight_read", "rl_kv_read", "rl_kv_write", "rl_linear_compute", "rl_prefill_compute",
           "rl_decode_compute", "rl_attn_compute", "rl_allreduce", "rl_tp_comm", "rl_bound", "n_allreduce",
           "allreduce_rounds", "num_layers", "num_moe_layers", "batch_size", "kv_tokens", "num_prefill_reqs",
           "prefill_tokens")
#: Operator tables: sizes that vary between kernels, the roofline terms they can compute, the operator's own.
KERNEL_ARCH = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "tp")
KERNEL_ROOFLINE = ("rl_expert_compute", "rl_expert_weights", "rl_attn_compute", "rl_kv_read")
OPERATOR = ("op_compute", "op_memory", "op_bound", "op_intensity", "op_weight_memory", "op_act_memory")
ARITHMETIC = ("add", "sub", "mul", "div")
#: Features a step-time formula must not decrease in (checked on probe pairs).
MONOTONE = ("prefill_tokens", "decode_tokens", "kv_tokens")
LOSSES = ("relative", "relative_weighted")
CONSTRAINT_MODES = ("penalise", "reject", "off")


@dataclass(frozen=True)
class SearchSpace:
    """One search space (see the module docstring).

    Attributes
    ----------
    name, description : str
    features : tuple of str
        Allowed catalogue features; those the data cannot compute are dropped at run time.
    operators : tuple of str
        Operator names from the operator table.
    max_size : int
        Largest complexity (PySR ``maxsize``; leaves count 1, operators their weight).
    max_depth : int
    constant_range : tuple of float
        Range of random initial constants (constants are then optimised).
    loss : str
        ``relative`` (mean |pred − y| / y) or ``relative_weighted`` (weighted by the cycle gap).
    monotone_in : tuple of str
        Features the prediction must not decrease in (probe pairs).
    constraint_mode : str
        ``penalise`` (default), ``reject`` or ``off``.
    default_data : str or None
        None = the bundled demo data.
    default_target, default_split : str
    seed_formulas : tuple of str
        Formulas placed in the initial population (features by name; constants refitted).
    roofline_floor : bool
        Penalise predictions below the roofline lower bound (``rl_bound``) where the
        data can compute it. Off for spaces whose features cannot express the
        bound (a model-blind ``linear`` space on data of several models).
    """

    name: str
    description: str
    features: tuple[str, ...]
    operators: tuple[str, ...]
    max_size: int = 25
    max_depth: int = 6
    constant_range: tuple[float, float] = (-2.0, 2.0)
    loss: str = "relative"
    monotone_in: tuple[str, ...] = MONOTONE
    constraint_mode: str = "penalise"
    default_data: str | None = None
    default_target: str = "cycle"
    default_split: str = "temporal"
    seed_formulas: tuple[str, ...] = field(default=())
    roofline_floor: bool = True

    def __post_init__(self) -> None:
        from search_spaces.operators import get_operator

        for op in self.operators:
            get_operator(op)
        if self.loss not in LOSSES:
            raise StepMLError(f"space {self.name}: unknown loss '{self.loss}'; valid: {', '.join(LOSSES)}")
        if self.constraint_mode not in CONSTRAINT_MODES:
            raise StepMLError(f"space {self.name}: unknown constraint mode '{self.constraint_mode}'; "
                              f"valid: {', '.join(CONSTRAINT_MODES)}")


def _declare() -> tuple[SearchSpace, ...]:
    blackbox = "c0 + c1*prefill_tokens + c2*decode_tokens"
    return (
        SearchSpace(
            "dense", "batch, KV and architecture features, and the roofline terms built from them "
                     "(simulator-available only)",
            BATCH + KV + ARCH + ROOFLINE, ARITHMETIC + ("max", "min", "square", "sqrt"), max_size=25, max_depth=6,
            seed_formulas=(blackbox, "c0 + c1*prefill_tokens + c2*decode_tokens + c3*kv_tokens")),
        SearchSpace(
            "moe", "dense features plus the MoE routing features",
            BATCH + KV + ARCH + ROOFLINE + MOE, ARITHMETIC + ("max", "min", "square", "sqrt"), max_size=25, max_depth=6,
            seed_formulas=(blackbox, "c0 + c1*scheduled_tokens + c2*active_experts + c3*kv_tokens")),
        SearchSpace(
            "roofline", "roofline basis terms (µs) combined with constants, max and min",
            ROOFLINE, ("add", "mul", "max", "min"), max_size=21, max_depth=5, constant_range=(0.0, 2.0),
            monotone_in=MONOTONE,
            seed_formulas=("c0 + c1*max(rl_prefill_compute + rl_decode_compute, rl_weight_load + rl_kv_read)"
                           " + c2*rl_allreduce",
                           "c0 + c1*rl_weight_load + c2*rl_prefill_compute + c3*rl_kv_read")),
        SearchSpace(
            "physics", "the cross-model physics basis: HBM bytes and GEMM FLOPs of the step at peak rates, "
                       "all-reduce volume, collective, layer, request and context-token counts; positive "
                       "multipliers, so one formula's constants are efficiencies shared by every model and GPU",
            PHYSICS, ("add", "mul", "max"), max_size=25, max_depth=5, constant_range=(0.0, 2.0),
            seed_formulas=(
                "c0 + c1*rl_memory + c2*rl_prefill_compute + c3*num_layers + c4*n_allreduce + c5*batch_size",
                "c0 + c1*max(rl_memory, rl_linear_compute) + c2*num_layers + c3*n_allreduce",
                "c0 + c1*rl_weight_read + c2*rl_kv_read + c3*rl_prefill_compute + c4*num_layers")),
        SearchSpace(
            "kernel", "operator tables (GEMM, attention, MoE, MLP kernels through a column map): token, batch and "
                      "KV counts, layer sizes, routing, and the operator's own roofline terms (op.flops and op.bytes "
                      "at peak rates), with division, square root and log1p",
            BATCH + KV + KERNEL_ARCH + MOE + KERNEL_ROOFLINE + OPERATOR,
            ARITHMETIC + ("max", "min", "square", "sqrt", "log1p"), max_size=25, max_depth=6,
            seed_formulas=("c0 + c1*op_bound", "c0 + c1*op_compute + c2*op_memory",
                           "c0 + c1*max(op_compute, op_memory) + c2*scheduled_tokens",
                           "c0 + c1*op_weight_memory + c2*op_compute + c3*op_act_memory")),
        SearchSpace(
            "linear", "the simulator's blackbox shape (c0 + c1·prefill + c2·decode), as a sanity check",
            ("prefill_tokens", "decode_tokens"), ("add", "mul"), max_size=7, max_depth=2, roofline_floor=False,
            seed_formulas=(blackbox,)),
    )


SPACES: Registry[SearchSpace] = Registry("search space", lambda: ((s.name, s) for s in _declare()))


def spaces() -> Mapping[str, SearchSpace]:
    """The registry: CLI name → space (built on first use)."""
    return SPACES


def get_space(name: str) -> SearchSpace:
    """A space by name; an unknown name lists the valid ones."""
    return SPACES.get(name)
