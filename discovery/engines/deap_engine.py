"""Tree-GP search over a :class:`~search_spaces.spaces.SearchSpace` with DEAP.

The primitive set is built from the operator table: one ``deap.gp`` primitive
per operator of the space (its numpy implementation, its arity), the
problem's features as the renamed arguments, and ephemeral constants drawn
uniformly from ``space.constant_range``.

Evaluation
----------
A tree is identified by its DEAP string (``str(individual)``, e.g.
``add(mul(1.25, rl_weight_load), rl_kv_read)``); constants print with
``repr`` and so round-trip exactly. :class:`TreeEvaluator` (picklable, it
carries the training arrays) turns such a string into an :class:`EvalResult`:

1. the tree is compiled once into a numpy function of the feature arrays
   (whole columns, no per-row Python) and evaluated on the training rows;
2. **linear scaling**: the slope ``a`` and intercept ``b`` minimising
   ``Σ w·((a·f + b − y)/y)²`` are computed in closed form (``w`` = the
   problem's training weights, or 1);
3. if the tree has numeric constants, ``scipy.optimize.least_squares``
   refines them (relative residuals, with ``a, b`` re-solved in closed form
   at every step — variable projection — at most ``const_opt_max_nfev``
   evaluations); the result is kept only if it lowers the loss, and the
   optimised constants are written back into the tree (Lamarckian);
4. **loss** = mean relative error ``|pred − y| / y`` of ``pred = b + a·f``
   on the training rows (weighted by ``w``); NaN, ±inf or ``pred <= 0`` on
   any training row gives ``inf``;
5. **constraints** (unless ``space.constraint_mode == "off"``): on the
   problem's probe pairs, the fraction of pairs where the prediction
   decreases (``pred(hi) < pred(lo) − 1e-9·|pred(lo)|``) or either
   prediction is not finite and positive. ``penalise`` multiplies the loss by
   ``1 + 10·fraction``; ``reject`` makes it ``inf`` if the fraction is > 0.

The engine never evaluates a tree string twice: results are cached by the
string (before and after constant optimisation), and only unseen strings are
sent to the ``mapper``.

Search
------
NSGA-II on (loss, complexity), complexity being the operator-table weight
of the tree (leaves 1, operators their table weight). Each island
(``islands`` of ``population``) selects parents by tournament on
(non-domination rank, crowding distance), produces offspring by one-point
crossover or one of four mutations (subtree, point, insert, shrink), rejects
children over ``space.max_depth`` (tree height) or ``space.max_size``
(complexity) the way ``deap.gp.staticLimit`` does (the parent is kept), and
keeps the best ``population`` of parents + offspring (duplicates last) with
``deap.tools.selNSGA2``. Every ``migration_interval`` generations each
island sends copies of its ``migration_size`` lowest-loss individuals to the
next island in a ring, replacing that island's worst. Initial populations
hold the space's ``seed_formulas`` (constants ``c0…cN`` start at 1.0) and
ramped half-and-half random trees.

Reproducibility
---------------
Every random choice of a run comes from one ``random.Random(seed)``
instance (structure) and one ``numpy.random.Generator`` seeded with the same
seed (constant values), both private to the run: the variation operators
are small ports of DEAP's (``genHalfAndHalf``, ``cxOnePoint``,
``mutUniform``, ``mutNodeReplacement``, ``mutInsert``, ``mutShrink``) that
take the generator explicitly, so nothing reads or advances the module-level
``random`` (which dask's scheduler threads also draw from). Evaluation is
deterministic and happens wherever the mapper sends it, so serial, process
and dask mappers give identical results; a run resumed from a checkpoint
gives the same result as an uninterrupted one.

The result is the Pareto set over the whole run: a hall of fame keeps the
lowest-loss tree of every tree complexity seen; those become
:class:`~discovery.candidate.Candidate` objects (``expr = b + a·tree`` with
the fitted numbers, complexity recomputed on the sympy expression), and the
candidates dominated in (loss, complexity) are dropped.
"""
from __future__ import annotations

import copy
import math
import random
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from deap import base, gp, tools

from features.errors import StepMLError
from search_spaces.operators import OPERATORS, symbol_name

if TYPE_CHECKING:  # the engine module is imported by worker processes: keep it light
    import sympy

    from discovery.candidate import Candidate, Problem

__all__ = [
    "DeapEngine",
    "DeapSettings",
    "EvalResult",
    "TreeEvaluator",
    "constrained_loss",
    "linear_scaling",
    "violation_fraction",
]

STATE_VERSION = 1
#: Selection value standing in for an infinite loss (NSGA-II crowding needs finite values).
BIG_LOSS = 1e100
#: Relative slack of the monotonicity check: ``pred(hi) < pred(lo) − PROBE_RTOL·|pred(lo)|`` violates.
PROBE_RTOL = 1e-9
#: Penalty factor of ``constraint_mode = "penalise"``: loss × (1 + PENALTY·violation fraction).
PENALTY = 10.0
#: Ridge on the change of a tree's constants during their optimisation (see TreeEvaluator._optimise).
CONST_RIDGE = 1e-8
#: Forward-difference step of the constants' Jacobian (relative to max(1, |c|)).
_FD_STEP = math.sqrt(np.finfo(float).eps)
#: Mutation kinds, in the order of :attr:`DeapSettings.mutation_weights`.
MUTATIONS = ("subtree", "point", "insert", "shrink")


# =============================================================================== settings


@dataclass(frozen=True)
class DeapSettings:
    """Options of :class:`DeapEngine`.

    Attributes
    ----------
    population : int
        Individuals per island.
    generations : int
        Generations after the initial one (generation 0).
    islands : int
    migration_interval : int
        Generations between ring migrations (0 = never).
    migration_size : int
        Emigrants per island per migration.
    budget_s : float
        Wall-clock budget of one :meth:`DeapEngine.search` call, checked between generations.
    early_stop_generations : int
        Stop after this many generations without improving the best training loss (0 = never).
    const_opt_max_nfev : int
        ``max_nfev`` of ``scipy.optimize.least_squares`` on a tree's constants (0 = linear scaling only).
    crossover_prob, mutation_prob : float
        Per offspring: crossover with probability ``crossover_prob``, else mutation with
        ``mutation_prob``, else a copy of the parent (sum ≤ 1).
    mutation_weights : tuple of 4 float
        Relative weights of the subtree, point, insert and shrink mutations.
    tournament_size : int
        Parent tournament on (NSGA-II rank, −crowding distance).
    nsga2_nd : str
        Non-dominated sort of ``deap.tools.selNSGA2``: ``standard`` or ``log``.
    init_min_depth, init_max_depth : int
        Height range of the ramped half-and-half initial trees (capped by ``space.max_depth``).
    mutation_max_depth : int
        Largest height of a subtree grown by the subtree/insert mutations.
    constant_prob : float
        Probability that a generated leaf is a constant rather than a feature.
    variation_attempts : int
        Tries to produce a child within the size/depth limits before keeping the parent.
    seed : int
    """

    population: int = 200
    generations: int = 40
    islands: int = 2
    migration_interval: int = 5
    migration_size: int = 5
    budget_s: float = 60.0
    early_stop_generations: int = 10
    const_opt_max_nfev: int = 50
    crossover_prob: float = 0.6
    mutation_prob: float = 0.4
    mutation_weights: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1)
    tournament_size: int = 2
    nsga2_nd: str = "standard"
    init_min_depth: int = 1
    init_max_depth: int = 3
    mutation_max_depth: int = 2
    constant_prob: float = 0.2
    variation_attempts: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.population < 2:
            problems.append(f"population must be >= 2 (got {self.population})")
        if self.islands < 1:
            problems.append(f"islands must be >= 1 (got {self.islands})")
        if self.generations < 0:
            problems.append(f"generations must be >= 0 (got {self.generations})")
        if self.migration_interval < 0 or self.migration_size < 0:
            problems.append("migration_interval and migration_size must be >= 0")
        if self.migration_size >= self.population:
            problems.append(f"migration_size ({self.migration_size}) must be < population ({self.population})")
        if not self.budget_s > 0:
            problems.append(f"budget_s must be > 0 (got {self.budget_s})")
        if self.early_stop_generations < 0 or self.const_opt_max_nfev < 0:
            problems.append("early_stop_generations and const_opt_max_nfev must be >= 0")
        if not (0 <= self.crossover_prob <= 1 and 0 <= self.mutation_prob <= 1
                and self.crossover_prob + self.mutation_prob <= 1 + 1e-12):
            problems.append("crossover_prob and mutation_prob must be in [0, 1] with sum <= 1")
        if len(self.mutation_weights) != len(MUTATIONS) or min(self.mutation_weights) < 0 \
                or sum(self.mutation_weights) <= 0:
            problems.append(f"mutation_weights needs {len(MUTATIONS)} non-negative weights ({', '.join(MUTATIONS)})"
                            " with a positive sum")
        if self.tournament_size < 1:
            problems.append("tournament_size must be >= 1")
        if self.nsga2_nd not in ("standard", "log"):
            problems.append(f"nsga2_nd must be 'standard' or 'log' (got {self.nsga2_nd!r})")
        if not 0 <= self.init_min_depth <= self.init_max_depth:
            problems.append("need 0 <= init_min_depth <= init_max_depth")
        if self.mutation_max_depth < 0 or self.variation_attempts < 1:
            problems.append("mutation_max_depth must be >= 0 and variation_attempts >= 1")
        if not 0 <= self.constant_prob <= 1:
            problems.append("constant_prob must be in [0, 1]")
        if problems:
            raise StepMLError("invalid DEAP settings: " + "; ".join(problems))


# =============================================================================== tree strings

_OP, _VAR, _CONST = 0, 1, 2
_TOKEN = re.compile(r"[^\s(),]+")


def _parse(text: str, arity: Mapping[str, int], symbols: Iterable[str]) -> list[tuple[int, Any]]:
    """Prefix node list ``[(kind, value)]`` of a DEAP tree string (operators, features, floats)."""
    symbols = symbols if isinstance(symbols, (set, frozenset, dict)) else set(symbols)
    nodes: list[tuple[int, Any]] = []
    for token in _TOKEN.findall(text):
        if token in arity:
            nodes.append((_OP, token))
        elif token in symbols:
            nodes.append((_VAR, token))
        else:
            try:
                value = float(token)
            except ValueError:
                raise StepMLError(f"tree {text!r}: unknown token {token!r}") from None
            nodes.append((_CONST, value))
    need = 1
    for kind, value in nodes:
        if need <= 0:
            break
        need += (arity[value] if kind == _OP else 0) - 1
    if need != 0 or not nodes:
        raise StepMLError(f"tree {text!r} is not a complete prefix expression")
    return nodes


def _render(nodes: Sequence[tuple[int, Any]], arity: Mapping[str, int],
            leaf: Callable[[int, Any, int], str]) -> str:
    """Render prefix nodes as ``op(arg, arg)`` text; ``leaf(kind, value, const_index)`` renders leaves."""
    stack: list[tuple[str, int, list[str]]] = []
    k = 0
    for kind, value in nodes:
        if kind == _OP:
            stack.append((value, arity[value], []))
            continue
        text = leaf(kind, value, k)
        if kind == _CONST:
            k += 1
        while True:
            if not stack:
                return text
            stack[-1][2].append(text)
            name, n, args = stack[-1]
            if len(args) < n:
                break
            stack.pop()
            text = f"{name}({', '.join(args)})"
    raise StepMLError("incomplete tree")


def _format(nodes: Sequence[tuple[int, Any]], arity: Mapping[str, int]) -> str:
    """The DEAP string of prefix nodes (constants as ``repr(float)``, as ``str(PrimitiveTree)`` prints them)."""
    return _render(nodes, arity, lambda kind, value, _: repr(float(value)) if kind == _CONST else value)


# =============================================================================== evaluation


class EvalResult(NamedTuple):
    """What evaluating one tree string gives.

    ``tree`` is the string with the optimised constants (equal to the input
    when nothing changed); ``loss`` the selection loss (constraints applied),
    ``mre`` the plain training mean relative error, ``violation`` the
    fraction of violated probe pairs; ``node_evals`` = nodes × rows evaluated.
    """

    tree: str
    a: float
    b: float
    loss: float
    mre: float
    violation: float
    node_evals: int


def linear_scaling(f: np.ndarray, y: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    """Slope and intercept minimising ``Σ u·(a·f + b − y)²`` (``u = w / y²`` for relative residuals).

    A constant ``f`` (or non-finite moments) gives ``a = 0`` and the ``u``-weighted mean of ``y``.
    """
    u = np.asarray(u, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    su = float(np.sum(u))
    ym = float(np.dot(u, y)) / su
    return _scale(np.asarray(f, dtype=np.float64), u, su, ym, y - ym)


def _scale(f: np.ndarray, u: np.ndarray, su: float, ym: float, yc: np.ndarray) -> tuple[float, float]:
    """:func:`linear_scaling` with the target's moments precomputed (``yc = y − ym``)."""
    fm = float(np.dot(u, f)) / su
    if not math.isfinite(fm):
        return 0.0, ym
    df = f - fm
    ud = u * df
    sff = float(np.dot(ud, df))
    if not math.isfinite(sff) or sff <= 1e-300 or sff <= 1e-24 * su * fm * fm:
        return 0.0, ym
    a = float(np.dot(ud, yc)) / sff
    b = ym - a * fm
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0, ym
    return a, b


def violation_fraction(pairs: Iterable[tuple[np.ndarray, np.ndarray]], rtol: float = PROBE_RTOL) -> float:
    """Fraction of probe pairs ``(pred_lo, pred_hi)`` (pooled over all pairs given) that violate.

    A pair violates when ``pred_hi < pred_lo − rtol·|pred_lo|`` (the
    prediction decreases though the batch grew) or when either prediction is
    not finite and positive. No pairs → 0.
    """
    bad = total = 0
    for lo, hi in pairs:
        lo = np.asarray(lo, dtype=float)
        hi = np.asarray(hi, dtype=float)
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi > 0) & ~(hi < lo - rtol * np.abs(lo))
        bad += int(lo.size - np.count_nonzero(ok))
        total += int(lo.size)
    return bad / total if total else 0.0


def constrained_loss(loss: float, violation: float, mode: str) -> float:
    """The selection loss: ``penalise`` → loss·(1 + 10·violation); ``reject`` → inf if any violation; ``off`` → loss."""
    if mode == "off" or not math.isfinite(loss):
        return loss
    if mode == "reject":
        return math.inf if violation > 0 else loss
    if mode == "penalise":
        return loss * (1.0 + PENALTY * violation)
    raise StepMLError(f"unknown constraint mode '{mode}'; valid: penalise, reject, off")


_BLAS_PINNED = False


def _pin_worker_blas() -> None:
    """In a worker process, limit BLAS to one thread (once), as :meth:`DeapEngine.search` does around
    in-process evaluation: dot products then round identically wherever a tree is evaluated."""
    global _BLAS_PINNED
    import multiprocessing

    if _BLAS_PINNED or multiprocessing.parent_process() is None:
        return
    _BLAS_PINNED = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional
        return
    threadpool_limits(limits=1)


class TreeEvaluator:
    """Evaluates DEAP tree strings on a problem's training rows (picklable; see the module docstring).

    Parameters
    ----------
    problem : Problem
    max_nfev : int
        ``least_squares`` evaluations for the constants (0 = linear scaling only).
    """

    def __init__(self, problem: "Problem", max_nfev: int = 50) -> None:
        features = tuple(problem.features)
        self.symbols = tuple(symbol_name(f) for f in features)
        self.operators = tuple(problem.space.operators)
        self.arity = {name: OPERATORS[name].arity for name in self.operators}
        clash = sorted(set(self.symbols) & (set(self.arity) | {"c", "lambda"}))
        if clash:
            raise StepMLError(f"feature symbol(s) {', '.join(clash)} collide with operator names")
        self.X = tuple(np.ascontiguousarray(problem.X_train[f], dtype=np.float64) for f in features)
        self.y = np.ascontiguousarray(problem.y_train, dtype=np.float64)
        if self.y.ndim != 1 or any(x.shape != self.y.shape for x in self.X):
            raise StepMLError("training features and target differ in length")
        if not (np.all(np.isfinite(self.y)) and np.all(self.y > 0)):
            raise StepMLError("training target must be finite and > 0 (relative loss)")
        w = None if problem.w_train is None else np.ascontiguousarray(problem.w_train, dtype=np.float64)
        if w is not None and (w.shape != self.y.shape or not np.all(np.isfinite(w)) or np.any(w < 0)
                              or not np.sum(w) > 0):
            raise StepMLError("training weights must be finite, >= 0, not all zero and match the target")
        self.w = w
        self.mode = problem.space.constraint_mode
        blocks_lo: list[list[np.ndarray]] = []
        blocks_hi: list[list[np.ndarray]] = []
        sizes = []
        if self.mode != "off":
            for axis in sorted(problem.probes):
                lo, hi = problem.probes[axis]
                n = len(lo[features[0]]) if features else 0
                if n == 0:
                    continue
                blocks_lo.append([np.asarray(lo[f], dtype=np.float64) for f in features])
                blocks_hi.append([np.asarray(hi[f], dtype=np.float64) for f in features])
                sizes.append(n)
        self.probe_sizes = tuple(sizes)
        self.P = tuple(np.ascontiguousarray(np.concatenate([b[j] for b in blocks_lo] + [b[j] for b in blocks_hi]))
                       for j in range(len(features))) if sizes else ()
        self.max_nfev = int(max_nfev)
        self._setup()

    # -- per-process state (not pickled) ---------------------------------------------------
    def _setup(self) -> None:
        self._namespace = {"__builtins__": {}}
        self._namespace.update({name: OPERATORS[name].numpy for name in self.operators})
        self._symset = frozenset(self.symbols)
        w = np.ones_like(self.y) if self.w is None else self.w
        self._wsum = float(np.sum(w))
        self._wn = w / self._wsum  # normalised weights of the mean relative error
        self._u = w / (self.y * self.y)  # weights of the squared relative residual
        self._su = float(np.sum(self._u))
        self._ym = float(np.dot(self._u, self.y)) / self._su
        self._yc = self.y - self._ym
        self._rel_scale = np.sqrt(w / self._wsum) / self.y  # Σ r² = weighted mean squared relative error
        self._bad = np.full(self.y.shape, 1e3)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()
        _pin_worker_blas()

    # -- evaluation --------------------------------------------------------------------------
    def compile(self, nodes: Sequence[tuple[int, Any]]) -> Callable[..., Any]:
        """``fn(c, *feature_arrays)`` of a prefix tree; constants are read from the sequence ``c``."""
        body = _render(nodes, self.arity, lambda kind, value, k: f"c[{k}]" if kind == _CONST else value)
        return eval(f"lambda c, {', '.join(self.symbols) or '*_'}: {body}", self._namespace)

    @staticmethod
    def _run(fn: Callable[..., Any], c: Sequence[float], arrays: Sequence[np.ndarray], n: int) -> np.ndarray:
        out = np.asarray(fn(c, *arrays), dtype=np.float64)
        return out if out.shape == (n,) else np.broadcast_to(out, (n,))

    def _mre(self, pred: np.ndarray) -> float:
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            return math.inf
        return float(np.sum(self._wn * np.abs(pred - self.y) / self.y))

    def __call__(self, tree: str) -> EvalResult:
        nodes = _parse(tree, self.arity, self._symset)
        consts = [v for k, v in nodes if k == _CONST]
        fn = self.compile(nodes)
        n = self.y.shape[0]
        size = len(nodes)
        evals = 0
        with np.errstate(all="ignore"):
            f = self._run(fn, consts, self.X, n)
            evals += 1
            if not np.all(np.isfinite(f)):
                return EvalResult(tree, 0.0, 0.0, math.inf, math.inf, 1.0, size * n)
            a, b = _scale(f, self._u, self._su, self._ym, self._yc)
            mre = self._mre(a * f + b)
            if consts and self.max_nfev > 0:
                opt = self._optimise(fn, consts, n)
                evals += opt[1]
                if opt[0] is not None:
                    c2 = opt[0]
                    f2 = self._run(fn, c2, self.X, n)
                    evals += 1
                    if np.all(np.isfinite(f2)):
                        a2, b2 = _scale(f2, self._u, self._su, self._ym, self._yc)
                        mre2 = self._mre(a2 * f2 + b2)
                        if mre2 < mre:
                            consts, f, a, b, mre = c2, f2, a2, b2, mre2
            node_evals = evals * size * n
            violation = 0.0
            if self.probe_sizes and math.isfinite(mre):
                m = sum(self.probe_sizes)
                fp = self._run(fn, consts, self.P, 2 * m)
                node_evals += size * 2 * m
                pred = a * fp + b
                pairs, start = [], 0
                for k in self.probe_sizes:
                    pairs.append((pred[start:start + k], pred[m + start:m + start + k]))
                    start += k
                violation = violation_fraction(pairs)
        if consts:
            it = iter(consts)
            tree = _format([(k, next(it)) if k == _CONST else (k, v) for k, v in nodes], self.arity)
        loss = constrained_loss(mre, violation, self.mode)
        return EvalResult(tree, float(a), float(b), float(loss), float(mre), float(violation), int(node_evals))

    def _optimise(self, fn: Callable[..., Any], consts: list[float], n: int) -> tuple[list[float] | None, int]:
        """Levenberg–Marquardt (``least_squares(method="lm")``) on the constants, ``a, b`` projected out.

        The residuals are the relative errors scaled by ``sqrt(w / Σw)`` plus a tiny ridge
        ``sqrt(CONST_RIDGE)·(c − c₀)/max(1, |c₀|)`` that pins the directions the fit does not
        determine (an additive constant or a common factor of the tree, absorbed by ``a, b``).
        """
        from scipy.optimize import least_squares

        calls = 0
        u, su, ym, yc, y, sw = self._u, self._su, self._ym, self._yc, self.y, self._rel_scale
        c0 = np.asarray(consts, dtype=np.float64)
        k = c0.shape[0]
        ridge = math.sqrt(CONST_RIDGE) / np.maximum(1.0, np.abs(c0))
        bad = np.concatenate([self._bad, np.zeros(k)])
        last: list[Any] = [None, None]

        def residual(c: np.ndarray) -> np.ndarray:
            nonlocal calls
            calls += 1
            f = self._run(fn, c, self.X, n)
            a, b = _scale(f, u, su, ym, yc)
            r = np.concatenate([sw * (a * f + b - y), ridge * (c - c0)])
            if not math.isfinite(float(np.dot(r, r))):
                r = bad
            last[0], last[1] = c.copy(), r
            return r

        def jacobian(c: np.ndarray) -> np.ndarray:
            r0 = last[1] if last[0] is not None and np.array_equal(last[0], c) else residual(c)
            jac = np.empty((n + k, k))
            for j in range(k):
                step = c.copy()
                step[j] += _FD_STEP * max(1.0, abs(c[j]))
                jac[:, j] = (residual(step) - r0) / (step[j] - c[j])
            return jac

        try:
            fit = least_squares(residual, c0, jac=jacobian, method="lm", max_nfev=self.max_nfev)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            return None, calls
        c = [float(v) for v in fit.x]
        if not all(math.isfinite(v) for v in c) or c == consts:
            return None, calls
        return c, calls


# =============================================================================== DEAP individuals


class _Fitness(base.Fitness):
    """(loss, complexity), both minimised."""

    weights = (-1.0, -1.0)


class _Individual(gp.PrimitiveTree):
    """A tree with its fitness, evaluation result and provenance."""

    def __init__(self, content: Iterable[Any]) -> None:
        super().__init__(content)
        self.fitness = _Fitness()
        self.result: EvalResult | None = None
        self.provenance = ""
        self.rank = 0


# =============================================================================== engine


class DeapEngine:
    """Tree GP over a search space with DEAP (see the module docstring).

    ``stats_`` after :meth:`search`: ``generations`` (last generation
    completed), ``evaluations`` (tree strings evaluated in this call),
    ``cache_hits``, ``node_evals`` (nodes × rows), ``node_evals_per_s``
    (over the call's wall time), ``wall_s``, ``stopped_by``
    (``generations``, ``early_stop`` or ``budget``).
    """

    name = "deap"

    def __init__(self, settings: DeapSettings | None = None) -> None:
        self.settings = settings if settings is not None else DeapSettings()
        self.stats_: dict[str, Any] = {}

    def search(self, problem: "Problem", mapper: Callable[..., Iterable[Any]] | None = None,
               progress: Callable[..., None] | None = None,
               checkpoint: Callable[[dict[str, Any]], None] | None = None,
               resume_state: Mapping[str, Any] | None = None) -> list["Candidate"]:
        """Search ``problem``; returns the Pareto set (loss × complexity) as candidates sorted by complexity.

        Parameters
        ----------
        problem : Problem
        mapper : callable, optional
            ``map``-like callable for fitness evaluation (default: builtin ``map``);
            see :mod:`discovery.engines.parallel`.
        progress : callable, optional
            ``progress(generation, best_loss, front_size, elapsed_s, best_val_loss)`` after every
            generation (``best_val_loss``: validation mean relative error of the best training entry).
        checkpoint : callable, optional
            ``checkpoint(state)`` after every generation with a picklable state dict.
        resume_state : mapping, optional
            A state given to ``checkpoint``: the run continues from it.
        """
        run = _Run(self.settings, problem, mapper or map, progress, checkpoint)
        try:
            from threadpoolctl import threadpool_limits
            limits = threadpool_limits(limits=1)  # identical BLAS numerics in-process and in workers
        except ImportError:  # optional
            limits = nullcontext()
        with limits:
            candidates = run.execute(resume_state)
        self.stats_ = run.stats
        return candidates


class _Run:
    """State of one search call."""

    def __init__(self, settings: DeapSettings, problem: "Problem", mapper: Callable[..., Iterable[Any]],
                 progress: Callable[..., None] | None, checkpoint: Callable[..., None] | None) -> None:
        self.s = settings
        self.problem = problem
        self.space = problem.space
        self.mapper = mapper
        self.progress = progress
        self.checkpoint = checkpoint
        self.evaluator = TreeEvaluator(problem, settings.const_opt_max_nfev)
        self.arity = self.evaluator.arity
        self.weight = {name: OPERATORS[name].complexity for name in self.space.operators}
        self.max_depth = int(self.space.max_depth)
        self.max_size = int(self.space.max_size)
        lo, hi = self.space.constant_range
        self.const_lo, self.const_hi = float(lo), float(hi)
        self.pset = self._primitive_set()
        self.prims = list(self.pset.primitives[self.pset.ret])
        self.args = [self.pset.mapping[sym] for sym in self.evaluator.symbols]
        if not self.args:
            raise StepMLError(f"space '{self.space.name}': the problem has no features")
        if not self.prims:
            raise StepMLError(f"space '{self.space.name}' has no operators")
        self.cache: dict[str, EvalResult] = {}
        self.hof: dict[int, tuple[str, EvalResult, str]] = {}
        self.islands: list[list[_Individual]] = []
        self.rng = random.Random(settings.seed)
        self.nprng = np.random.default_rng(settings.seed)
        self.generation = 0
        self.best = math.inf
        self.stall = 0
        self.evaluations = 0
        self.cache_hits = 0
        self.node_evals = 0
        self.t0 = time.perf_counter()
        self.stats: dict[str, Any] = {}
        self._fp: dict[str, Any] | None = None

    # -- setup ---------------------------------------------------------------------------------
    def _primitive_set(self) -> gp.PrimitiveSet:
        symbols = self.evaluator.symbols
        pset = gp.PrimitiveSet("stepml", len(symbols))
        pset.renameArguments(**{f"ARG{i}": sym for i, sym in enumerate(symbols)})
        for name in self.space.operators:
            op = OPERATORS[name]
            pset.addPrimitive(op.numpy, op.arity, name=op.name)
        return pset

    def _fingerprint(self) -> dict[str, Any]:
        if self._fp is not None:
            return self._fp
        import hashlib

        digest = hashlib.sha256(self.evaluator.y.tobytes())
        for column in self.evaluator.X:
            digest.update(column.tobytes())
        keep = ("population", "islands", "seed", "crossover_prob", "mutation_prob", "mutation_weights",
                "tournament_size", "constant_prob", "const_opt_max_nfev", "migration_interval", "migration_size")
        import json

        fingerprint = {"features": self.evaluator.symbols, "operators": tuple(self.space.operators),
                       "max_size": self.max_size, "max_depth": self.max_depth, "constraint_mode": self.evaluator.mode,
                       "data": digest.hexdigest()[:16],
                       "settings": {k: v for k, v in asdict(self.s).items() if k in keep}}
        self._fp = json.loads(json.dumps(fingerprint))  # the form it has after a JSON checkpoint
        return self._fp

    # -- trees ---------------------------------------------------------------------------------
    def _const(self, value: float) -> gp.Terminal:
        return gp.Terminal(float(value), False, gp.__type__)

    def _tree(self, text: str) -> _Individual:
        nodes = []
        for kind, value in _parse(text, self.arity, self.evaluator._symset):
            nodes.append(self._const(value) if kind == _CONST else self.pset.mapping[value])
        return _Individual(nodes)

    def _complexity(self, tree: Sequence[Any]) -> int:
        return sum(self.weight[n.name] if n.arity else 1 for n in tree)

    def _fits(self, tree: gp.PrimitiveTree) -> bool:
        return tree.height <= self.max_depth and self._complexity(tree) <= self.max_size

    def _leaf(self) -> gp.Terminal:
        if self.rng.random() < self.s.constant_prob:
            return self._const(self.nprng.uniform(self.const_lo, self.const_hi))
        return self.rng.choice(self.args)

    def _generate(self, min_: int, max_: int, grow: bool) -> list[Any]:
        """Port of ``deap.gp.generate`` (genGrow / genFull) drawing from the run's generators."""
        ratio = len(self.args) / (len(self.args) + len(self.prims))
        height = self.rng.randint(min_, max_)
        expr: list[Any] = []
        stack = [0]
        while stack:
            depth = stack.pop()
            if depth == height or (grow and depth >= min_ and self.rng.random() < ratio):
                expr.append(self._leaf())
            else:
                prim = self.rng.choice(self.prims)
                expr.append(prim)
                stack.extend([depth + 1] * prim.arity)
        return expr

    def _half_and_half(self, min_: int, max_: int) -> list[Any]:
        return self._generate(min_, max_, grow=self.rng.random() < 0.5)

    # -- variation (ports of DEAP's operators with an explicit generator) ------------------------
    def _crossover(self, ind1: _Individual, ind2: _Individual) -> _Individual:
        """``cxOnePoint``: ``ind1`` with a random subtree replaced by a random subtree of ``ind2``."""
        child = copy.deepcopy(ind1)
        if len(child) < 2 or len(ind2) < 2:
            return child
        i1 = self.rng.randrange(1, len(child))
        i2 = self.rng.randrange(1, len(ind2))
        child[child.searchSubtree(i1)] = ind2[ind2.searchSubtree(i2)]
        return child

    def _mutate(self, ind: _Individual) -> _Individual:
        child = copy.deepcopy(ind)
        kind = self.rng.choices(MUTATIONS, weights=self.s.mutation_weights)[0]
        if kind == "subtree":  # mutUniform with genHalfAndHalf
            index = self.rng.randrange(len(child))
            child[child.searchSubtree(index)] = self._half_and_half(0, self.s.mutation_max_depth)
        elif kind == "point":  # mutNodeReplacement (the root included)
            index = self.rng.randrange(len(child))
            node = child[index]
            if node.arity == 0:
                child[index] = self._leaf()
            else:
                child[index] = self.rng.choice([p for p in self.prims if p.arity == node.arity])
        elif kind == "insert":  # mutInsert: a new primitive above a node, other arguments new subtrees
            index = self.rng.randrange(len(child))
            slice_ = child.searchSubtree(index)
            prim = self.rng.choice(self.prims)
            position = self.rng.randrange(prim.arity)
            new: list[Any] = [prim]
            for i in range(prim.arity):
                if i == position:
                    new.extend(child[slice_])
                else:
                    new.extend(self._half_and_half(0, max(0, self.s.mutation_max_depth - 1)))
            child[slice_] = new
        else:  # mutShrink: a primitive replaced by one of its argument subtrees (the root included)
            prims = [i for i, node in enumerate(child) if node.arity > 0]
            if prims:
                index = self.rng.choice(prims)
                arg = self.rng.randrange(child[index].arity)
                start = index + 1
                for _ in range(arg):
                    start = child.searchSubtree(start).stop
                sub = child[child.searchSubtree(start)]
                child[child.searchSubtree(index)] = sub
        return child

    def _offspring(self, pop: list[_Individual], island: int) -> list[_Individual]:
        """Tournament parents, then crossover / mutation / copy; over-limit children keep the parent."""
        self._rank(pop)
        parents = [self._tournament(pop) for _ in range(len(pop))]
        children = []
        for k, parent in enumerate(parents):
            r = self.rng.random()
            if r < self.s.crossover_prob + self.s.mutation_prob:
                crossover = r < self.s.crossover_prob
                mate = parents[(k + 1) % len(parents)]
                for _ in range(self.s.variation_attempts):
                    child = self._crossover(parent, mate) if crossover else self._mutate(parent)
                    if self._fits(child):
                        break
                else:
                    child = copy.deepcopy(parent)  # staticLimit: keep the parent
                if str(child) != parent.result.tree:  # type: ignore[union-attr]
                    child.result = None
                    child.fitness = _Fitness()
                    child.provenance = f"deap gen {self.generation} island {island}"
            else:
                child = copy.deepcopy(parent)
            children.append(child)
        return children

    def _rank(self, pop: list[_Individual]) -> None:
        for rank, front in enumerate(tools.sortNondominated(pop, len(pop))):
            tools.emo.assignCrowdingDist(front)
            for ind in front:
                ind.rank = rank

    def _tournament(self, pop: list[_Individual]) -> _Individual:
        aspirants = [pop[self.rng.randrange(len(pop))] for _ in range(self.s.tournament_size)]
        return min(aspirants, key=lambda ind: (ind.rank, -ind.fitness.crowding_dist))

    def _survive(self, individuals: list[_Individual], k: int) -> list[_Individual]:
        """selNSGA2 over the distinct trees; duplicates only fill remaining places."""
        seen: set[str] = set()
        unique, extra = [], []
        for ind in individuals:
            key = ind.result.tree  # type: ignore[union-attr]
            (extra if key in seen else unique).append(ind)
            seen.add(key)
        if len(unique) >= k:
            return tools.selNSGA2(unique, k, nd=self.s.nsga2_nd)
        return tools.selNSGA2(unique, len(unique), nd=self.s.nsga2_nd) + extra[:k - len(unique)]

    def _migrate(self) -> None:
        m, n = self.s.migration_size, len(self.islands)
        emigrants = [[copy.deepcopy(ind) for ind in sorted(isl, key=lambda i: i.fitness.values)[:m]]
                     for isl in self.islands]
        for i in range(n):
            target = self.islands[(i + 1) % n]
            target[len(target) - m:] = emigrants[i]

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, individuals: list[_Individual]) -> list[_Individual]:
        """Evaluate the individuals without a result (unseen strings go to the mapper); returns them updated."""
        pending = [i for i, ind in enumerate(individuals) if ind.result is None]
        keys = [str(individuals[i]) for i in pending]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        self.cache_hits += len(keys) - len(todo)
        if todo:
            results = list(self.mapper(self.evaluator, todo))
            if len(results) != len(todo):
                raise StepMLError(f"mapper returned {len(results)} results for {len(todo)} trees")
            for key, result in zip(todo, results):
                self.cache[key] = result
                self.cache.setdefault(result.tree, result)
                self.evaluations += 1
                self.node_evals += result.node_evals
        for i, key in zip(pending, keys):
            old = individuals[i]
            result = self.cache[key]
            ind = old if result.tree == key else self._tree(result.tree)
            ind.provenance = old.provenance
            self._set(ind, result)
            individuals[i] = ind
        return individuals

    def _set(self, ind: _Individual, result: EvalResult) -> None:
        ind.result = result
        loss = result.loss if math.isfinite(result.loss) else BIG_LOSS
        ind.fitness.values = (min(loss, BIG_LOSS), float(self._complexity(ind)))

    def _remember(self, individuals: Iterable[_Individual]) -> None:
        for ind in individuals:
            r = ind.result
            if r is None or not math.isfinite(r.loss):
                continue
            cx = self._complexity(ind)
            if cx not in self.hof or r.loss < self.hof[cx][1].loss:
                self.hof[cx] = (r.tree, r, ind.provenance)

    def _best_val_loss(self) -> float:
        """Validation mean relative error of the best training entry (shown by progress bars)."""
        if not self.hof or not len(self.problem.y_val):
            return math.inf
        tree, r, _ = min(self.hof.values(), key=lambda entry: entry[1].loss)
        ev = self.evaluator
        nodes = _parse(tree, ev.arity, ev._symset)
        consts = [v for k, v in nodes if k == _CONST]
        y = np.asarray(self.problem.y_val, dtype=np.float64)
        X = [np.asarray(self.problem.X_val[f], dtype=np.float64) for f in self.problem.features]
        with np.errstate(all="ignore"):
            pred = r.a * ev._run(ev.compile(nodes), consts, X, y.shape[0]) + r.b
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            return math.inf
        return float(np.mean(np.abs(pred - y) / y))

    def _front_size(self) -> int:
        size, best = 0, math.inf
        for cx in sorted(self.hof):
            if self.hof[cx][1].loss < best:
                best = self.hof[cx][1].loss
                size += 1
        return size

    # -- initial population ----------------------------------------------------------------------
    def _seed_trees(self) -> list[_Individual]:
        out = []
        for text in self.space.seed_formulas:
            tree_text = _seed_to_tree(text, self.problem.features, self.evaluator.symbols, self.arity)
            if tree_text is None:
                continue
            ind = self._tree(tree_text)
            if self._fits(ind):
                ind.provenance = "seed"
                out.append(ind)
        return out

    def _initial(self) -> None:
        seeds = self._seed_trees()
        hi = max(0, min(self.s.init_max_depth, self.max_depth))
        lo = min(self.s.init_min_depth, hi)
        for island in range(self.s.islands):
            pop = [copy.deepcopy(t) for t in seeds[:self.s.population]]
            while len(pop) < self.s.population:
                for _ in range(100):
                    ind = _Individual(self._half_and_half(lo, hi))
                    if self._fits(ind):
                        break
                else:
                    ind = _Individual([self.rng.choice(self.args)])
                ind.provenance = f"deap gen 0 island {island}"
                pop.append(ind)
            self.islands.append(pop)
        self._evaluate_islands(self.islands)
        for i, pop in enumerate(self.islands):
            self.islands[i] = self._survive(pop, len(pop))

    def _evaluate_islands(self, groups: list[list[_Individual]]) -> None:
        flat = [ind for group in groups for ind in group]
        self._evaluate(flat)
        k = 0
        for group in groups:
            group[:] = flat[k:k + len(group)]
            k += len(group)
        self._remember(flat)

    # -- checkpoint state ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A snapshot taken at the end of a generation: JSON data only (numbers, strings, lists, dicts)."""
        return {
            "version": STATE_VERSION,
            "engine": "deap",
            "generation": self.generation,
            "fingerprint": self._fingerprint(),
            "islands": [[(ind.result.tree, tuple(ind.fitness.values), ind.provenance, tuple(ind.result))  # type: ignore[union-attr]
                         for ind in pop] for pop in self.islands],
            "hall_of_fame": {str(cx): (tree, tuple(r), prov) for cx, (tree, r, prov) in self.hof.items()},
            "best_loss": self.best,
            "stall": self.stall,
            "random_state": list(self.rng.getstate()),
            "numpy_state": copy.deepcopy(self.nprng.bit_generator.state),
            "cache": {k: tuple(v) for k, v in self.cache.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state` snapshot (as read back from a JSON checkpoint)."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION or state.get("engine") != "deap":
            raise StepMLError("resume state is not a DEAP engine checkpoint of this version")
        if state.get("fingerprint") != self._fingerprint():
            raise StepMLError("resume state was made with a different problem, space or settings "
                              "(features, operators, limits, population, islands, seed or variation options)")
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, StepMLError) as exc:
            raise StepMLError(f"resume state is malformed ({type(exc).__name__}: {exc})") from None

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.generation = int(state["generation"])
        self.cache = {str(k): EvalResult(*v) for k, v in state["cache"].items()}
        self.islands = []
        for pop in state["islands"]:
            island = []
            for tree, values, provenance, result in pop:
                ind = self._tree(tree)
                ind.result = EvalResult(*result)
                ind.fitness.values = tuple(float(v) for v in values)
                ind.provenance = str(provenance)
                island.append(ind)
            self.islands.append(island)
        self.hof = {int(cx): (str(tree), EvalResult(*r), str(prov))
                    for cx, (tree, r, prov) in state["hall_of_fame"].items()}
        self.best = float(state["best_loss"])
        self.stall = int(state["stall"])
        version, internal, gauss = state["random_state"]
        self.rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
        self.nprng.bit_generator.state = copy.deepcopy(dict(state["numpy_state"]))

    # -- main loop -------------------------------------------------------------------------------
    def _end_generation(self) -> None:
        best = min((r.loss for _, r, _ in self.hof.values()), default=math.inf)
        if best < self.best * (1 - 1e-9) or (math.isinf(self.best) and math.isfinite(best)):
            self.stall = 0
        else:
            self.stall += 1
        self.best = min(self.best, best)
        if self.progress is not None:
            self.progress(self.generation, self.best, self._front_size(), time.perf_counter() - self.t0,
                          self._best_val_loss())
        if self.checkpoint is not None:
            self.checkpoint(self.state())

    def execute(self, resume_state: Mapping[str, Any] | None) -> list["Candidate"]:
        if resume_state is None:
            self._initial()
            self.stall = -1  # generation 0 sets the first best without counting as stagnation
            self._end_generation()
        else:
            self.restore(resume_state)
        s = self.s
        while True:
            if self.generation >= s.generations:
                stopped = "generations"
                break
            if s.early_stop_generations and self.stall >= s.early_stop_generations:
                stopped = "early_stop"
                break
            if time.perf_counter() - self.t0 >= s.budget_s:
                stopped = "budget"
                break
            self.generation += 1
            offspring = [self._offspring(pop, i) for i, pop in enumerate(self.islands)]
            self._evaluate_islands(offspring)
            for i, pop in enumerate(self.islands):
                self.islands[i] = self._survive(pop + offspring[i], s.population)
            if s.migration_interval and s.migration_size and len(self.islands) > 1 \
                    and self.generation % s.migration_interval == 0:
                self._migrate()
            self._end_generation()
        wall = time.perf_counter() - self.t0
        self.stats = {"generations": self.generation, "evaluations": self.evaluations,
                      "cache_hits": self.cache_hits, "node_evals": self.node_evals,
                      "node_evals_per_s": self.node_evals / wall if wall > 0 else 0.0,
                      "wall_s": wall, "stopped_by": stopped, "best_loss": self.best}
        return self.candidates()

    # -- result ----------------------------------------------------------------------------------
    def candidates(self) -> list["Candidate"]:
        import sympy

        from discovery.candidate import Candidate
        from search_spaces.operators import complexity

        raw = []
        for cx in sorted(self.hof):
            tree, result, provenance = self.hof[cx]
            expr = self.to_sympy(tree, result)
            n_const = sum(1 for node in sympy.preorder_traversal(expr) if isinstance(node, sympy.Float))
            raw.append(Candidate(expr, int(complexity(expr)), float(result.loss), "deap", provenance, n_const))
        raw.sort(key=lambda c: (c.complexity, c.loss))
        front, best = [], math.inf
        for cand in raw:
            if cand.loss < best:
                front.append(cand)
                best = cand.loss
        return front

    def to_sympy(self, tree: str, result: EvalResult) -> "sympy.Expr":
        """``b + a·tree`` as sympy, with the operator table's builders and symbols."""
        import sympy

        nodes = _parse(tree, self.arity, self.evaluator._symset)
        symbols = {sym: sympy.Symbol(sym) for sym in self.evaluator.symbols}
        stack: list[Any] = []
        for kind, value in reversed(nodes):
            if kind == _OP:
                args = [stack.pop() for _ in range(self.arity[value])]
                stack.append(OPERATORS[value].sympy(*args))
            elif kind == _VAR:
                stack.append(symbols[value])
            else:
                stack.append(sympy.Float(value))
        (body,) = stack
        if result.a == 0.0:
            return sympy.Float(result.b)
        return sympy.Float(result.b) + sympy.Float(result.a) * body


# =============================================================================== seeds

_CONSTANT_NAME = re.compile(r"\bc\d+\b")


def _seed_to_tree(text: str, features: Sequence[str], symbols: Sequence[str],
                  arity: Mapping[str, int]) -> str | None:
    """A seed formula (constants ``c0…cN``) as a DEAP tree string, or None if the problem cannot express it."""
    import sympy

    from search_spaces.operators import parse_formula

    names = sorted(set(_CONSTANT_NAME.findall(text)) - set(features) - set(symbols))
    try:
        expr = parse_formula(text, list(features) + names)
    except StepMLError:
        return None
    constants = {sympy.Symbol(n) for n in names}
    allowed = {sympy.Symbol(s) for s in symbols}

    class Unsupported(Exception):
        pass

    def need(op: str) -> None:
        if op not in arity:
            raise Unsupported(op)

    def fold(op: str, parts: list[list[tuple[int, Any]]]) -> list[tuple[int, Any]]:
        if len(parts) == 1:
            return parts[0]
        need(op)
        mid = len(parts) // 2  # balanced, to keep the height low
        return [(_OP, op)] + fold(op, parts[:mid]) + fold(op, parts[mid:])

    def const(value: float) -> list[tuple[int, Any]]:
        return [(_CONST, float(value))]

    def walk(e: Any) -> list[tuple[int, Any]]:
        if e in constants:
            return const(1.0)
        if e.is_Symbol:
            if e not in allowed:
                raise Unsupported(str(e))
            return [(_VAR, e.name)]
        if e.is_Number:
            return const(float(e))
        if e.is_Add:
            pos, neg = [], []
            for term in e.args:
                if term.is_Mul and term.args[0] == sympy.S.NegativeOne and "sub" in arity:
                    neg.append(walk(-term))
                else:
                    pos.append(walk(term))
            if not pos:
                raise Unsupported("negated sum")
            out = fold("add", pos)
            for part in neg:
                out = [(_OP, "sub")] + out + part
            return out
        if e.is_Mul:
            num, den = [], []
            for factor in e.args:
                if factor.is_Pow and factor.exp.is_Number and factor.exp < 0:
                    den.append(walk(factor.base ** (-factor.exp)))
                else:
                    num.append(walk(factor))
            top = fold("mul", num) if num else const(1.0)
            if den:
                need("div")
                return [(_OP, "div")] + top + fold("mul", den)
            return top
        if e.is_Pow:
            base, exp = e.args
            if exp == 2 and "square" in arity:
                return [(_OP, "square")] + walk(base)
            if exp == 2:
                return fold("mul", [walk(base), walk(base)])
            if exp == 3:
                need("cube")
                return [(_OP, "cube")] + walk(base)
            if exp == sympy.Rational(1, 2):
                need("sqrt")
                return [(_OP, "sqrt")] + walk(base.args[0] if isinstance(base, sympy.Abs) else base)
            if exp.is_Number and exp < 0:
                need("div")
                return [(_OP, "div")] + const(1.0) + walk(base ** (-exp))
            raise Unsupported(str(e))
        if isinstance(e, (sympy.Max, sympy.Min)):
            op = "max" if isinstance(e, sympy.Max) else "min"
            return fold(op, [walk(a) for a in e.args])
        if isinstance(e, sympy.log) and len(e.args) == 1 and e.args[0].is_Add:
            inner = [a for a in e.args[0].args if a != sympy.S.One]
            if len(inner) == 1 and isinstance(inner[0], sympy.Abs) and len(e.args[0].args) == 2:
                need("log1p")
                return [(_OP, "log1p")] + walk(inner[0].args[0])
        raise Unsupported(type(e).__name__)

    try:
        return _format(walk(expr), arity)
    except Unsupported:
        return None
