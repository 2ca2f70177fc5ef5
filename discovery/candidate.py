"""The Candidate every engine produces, and the search problem every engine receives."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import sympy

from features import catalog
from features.dataset import Dataset
from features.errors import StepMLError
from features.splits import Split
from search_spaces.spaces import SearchSpace
from search_spaces.transforms import NONE, TargetTransform, parse_transform


@dataclass(frozen=True)
class Candidate:
    """A formula found by an engine.

    Attributes
    ----------
    expr : sympy.Expr
        The formula with its numeric constants in place; symbols are feature names.
    complexity : int
        Operator-table complexity (:func:`search_spaces.objective.complexity`).
    loss : float
        Training loss (mean relative error, a fraction; :mod:`search_spaces.objective`) as the engine measured it.
    engine : str
    provenance : str
        Where it came from (``deap gen 12 island 1``, ``seed``, ``pysr import``…).
    n_constants : int
    """

    expr: sympy.Expr
    complexity: int
    loss: float
    engine: str
    provenance: str = ""
    n_constants: int = 0

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names used by the formula, sorted."""
        return tuple(sorted(str(s) for s in self.expr.free_symbols))

    @property
    def key(self) -> str:
        """A canonical string of the formula (deduplication key)."""
        return sympy.srepr(self.expr)


def count_constants(expr: sympy.Expr) -> int:
    """Numeric constants (Floats) of a formula, counted over its tree."""
    return sum(1 for node in sympy.preorder_traversal(expr) if isinstance(node, sympy.Float))


def tidy(expr: sympy.Expr) -> sympy.Expr:
    """A formula read from an engine's text: ``Abs(Abs(x))`` folded (``sqrt(abs(x))`` printed by Operon or
    PySR parses to the table's ``sqrt`` of ``Abs``) and every number rounded to float64."""
    expr = expr.replace(lambda e: isinstance(e, sympy.Abs) and isinstance(e.args[0], sympy.Abs),
                        lambda e: e.args[0])
    return expr.xreplace({f: sympy.Float(float(f)) for f in expr.atoms(sympy.Float)})


def formula_candidates(exprs: Iterable[sympy.Expr], problem: "Problem", engine: str,
                       provenance: str) -> list[Candidate]:
    """Finished formulas (an engine's output, a PySR import) as candidates on ``problem``: loss by the shared
    objective (training mean relative error with the probe penalty), complexity from the table."""
    from search_spaces.objective import Objective, complexity
    from search_spaces.numeric import lambdify_formula

    objective = Objective(problem)
    out = []
    for expr in exprs:
        loss, _, _ = objective.formula_loss(lambdify_formula(expr, objective.formula_features))
        out.append(Candidate(expr, int(complexity(expr)), float(loss), engine, provenance, count_constants(expr)))
    return out


def refine_candidates(candidates: Iterable[Candidate], problem: "Problem") -> list[Candidate]:
    """Every candidate with its constants refitted on the training rows (:meth:`Objective.refine
    <search_spaces.objective.Objective.refine>`: bounded Levenberg–Marquardt on the relative error of every
    numeric constant); a candidate whose loss does not improve is returned as it was."""
    from search_spaces.objective import Objective, complexity

    objective = Objective(problem)
    out = []
    for c in candidates:
        expr, loss = objective.refine(c.expr)
        if expr is c.expr:
            out.append(c)
        else:
            out.append(Candidate(expr, int(complexity(expr)), float(loss), c.engine, c.provenance,
                                 count_constants(expr)))
    return out


@dataclass(frozen=True)
class Problem:
    """What an engine searches: one space on one split's training part.

    Feature arrays are float64, keyed by feature name. ``probes`` maps a
    monotone axis to (features at lo, features at hi) of probe pairs;
    ``probe_rows`` holds features of the rows used for the positivity check.
    ``floor_train`` is the roofline lower bound (``rl_bound``, µs) of each
    training row when the data has the architecture and hardware to compute
    it: a prediction below it is faster than physics allows. ``transform`` is
    the target transform (:mod:`search_spaces.transforms`) and
    ``scale_train``/``scale_val`` the roofline time of its ``efficiency`` per
    row (None otherwise). ``dropped`` maps each feature of the space left out
    because it is constant over the training rows to its value.
    """

    space: SearchSpace
    features: tuple[str, ...]
    X_train: dict[str, np.ndarray]
    y_train: np.ndarray
    w_train: np.ndarray | None
    X_val: dict[str, np.ndarray]
    y_val: np.ndarray
    w_val: np.ndarray | None
    probes: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=dict)
    seed: int = 0
    floor_train: np.ndarray | None = None
    transform: TargetTransform = NONE
    scale_train: np.ndarray | None = None
    scale_val: np.ndarray | None = None
    dropped: Mapping[str, float] = field(default_factory=dict)

    @property
    def formula_features(self) -> tuple[str, ...]:
        """Features a latency formula may read: the search's, and the roofline time of ``efficiency``."""
        extra = self.transform.feature if self.transform.needs_scale else None
        return self.features + ((extra,) if extra and extra not in self.features else ())


def _features_of(frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    values = catalog.compute_features(frame, names)
    return {k: np.broadcast_to(v, (len(frame),)).astype(float) for k, v in values.items()}


def constant_features(X: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The features whose value is the same on every row (feature → value); NaN-free columns only."""
    out = {}
    for name, column in X.items():
        values = np.asarray(column, dtype=float)
        if values.size and np.all(np.isfinite(values)) and np.all(values == values[0]):
            out[name] = float(values[0])
    return out


def _without(seeds: Iterable[str], dropped: Mapping[str, float]) -> tuple[str, ...]:
    """Seed formulas with every dropped feature written as its constant value (the seed stays usable)."""
    out = []
    for text in seeds:
        for name, value in dropped.items():
            text = re.sub(rf"(?<![\w.]){re.escape(name)}(?![\w.])", repr(value), text)
        out.append(text)
    return tuple(out)


def build_problem(dataset: Dataset, split: Split, space: SearchSpace, seed: int = 0,
                  probe_rows: int = 256, transform: "TargetTransform | str | None" = None) -> Problem:
    """Assemble a :class:`Problem` (features the data can compute, probes from training rows).

    Features constant over the training rows never enter the search: they are
    left out (``Problem.dropped``), and a seed formula using one reads its value
    as a number. ``transform`` (:func:`~search_spaces.transforms.parse_transform`)
    gets its roofline feature from the data (``efficiency``) and adds the
    utilisation form of every seed formula (:meth:`TargetTransform.seeds`).
    """
    from evaluation.probes import probe_pairs

    available = set(dataset.feature_names(("simulator",)))
    transform = parse_transform(transform).resolve(available)
    features = tuple(f for f in space.features if f in available)
    if not features:
        raise StepMLError(f"space '{space.name}': none of its features can be computed from {dataset.label}")
    frame = dataset.frame
    train, val = frame.iloc[split.train], frame.iloc[split.val]
    dropped = constant_features(_features_of(train, features)) if len(train) > 1 else {}
    if dropped and len(dropped) == len(features):
        raise StepMLError(f"space '{space.name}': every feature it can use is constant over the training rows "
                          f"({', '.join(f'{k} = {v:g}' for k, v in dropped.items())}); nothing to search")
    if dropped:
        features = tuple(f for f in features if f not in dropped)
        space = dataclasses.replace(space, seed_formulas=_without(space.seed_formulas, dropped))
    if transform.kind != "none":
        space = dataclasses.replace(space, seed_formulas=transform.seeds(space.seed_formulas))
    weighted = space.loss == "relative_weighted" and dataset.weights is not None
    w = dataset.weights if weighted else None
    rng = np.random.default_rng(seed)
    probes = {}
    monotone = tuple(a for a in space.monotone_in)
    probed = features + ((str(transform.feature),) if transform.needs_scale and transform.feature not in features
                         else ())
    if space.constraint_mode != "off" and len(train):
        for axis, (lo, hi) in probe_pairs(train.reset_index(drop=True), rng, probe_rows, monotone).items():
            probes[axis] = (_features_of(lo, probed), _features_of(hi, probed))
    floor = None
    bound = catalog.get_feature("rl_bound")
    if space.constraint_mode != "off" and space.roofline_floor and bound.available_in(frame.columns) and len(train):
        floor = _features_of(train, ("rl_bound",))["rl_bound"]
    scale_train = scale_val = None
    if transform.needs_scale:
        scale = _features_of(frame, (str(transform.feature),))[str(transform.feature)]
        transform.check_scale(scale, dataset.label)
        scale_train, scale_val = scale[split.train], scale[split.val]
    return Problem(space, features, _features_of(train, features), dataset.y[split.train],
                   None if w is None else w[split.train], _features_of(val, features), dataset.y[split.val],
                   None if w is None else w[split.val], probes, seed, floor, transform, scale_train, scale_val,
                   dropped)
