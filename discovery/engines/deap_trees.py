"""Evaluating DEAP tree strings: :class:`TreeEvaluator` (picklable; what worker processes run).

A tree is identified by its DEAP string (``str(individual)``, e.g.
``add(mul(1.25, rl_weight_load), rl_kv_read)``), which is the text of the
canonical prefix form (:func:`search_spaces.prefix.format_prefix`); constants
print with ``repr`` and so round-trip exactly. :class:`TreeEvaluator` compiles
the tree once into a numpy function of the feature arrays (whole columns, no
per-row Python) and hands it to the shared :class:`~search_spaces.objective.Objective`
(linear scaling, Levenberg–Marquardt on the constants with ``a, b`` projected
out, mean relative error, probe penalty). Optimised constants are written back
into the tree string (Lamarckian).

This module imports only numpy and the operator table at import time: it is
what dask/process workers unpickle.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from features.errors import StepMLError
from search_spaces.objective import Objective
from search_spaces.operators import OPERATORS, symbol_name
from search_spaces.prefix import CONST, Node, format_prefix, parse_prefix, render

if TYPE_CHECKING:
    from discovery.candidate import Problem

__all__ = ["EvalResult", "TreeEvaluator", "pin_worker_blas"]


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


_BLAS_PINNED = False


def pin_worker_blas() -> None:
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
        self.objective = Objective(problem, max_nfev)
        self._setup()

    # -- per-process state (not pickled) ---------------------------------------------------
    def _setup(self) -> None:
        self._namespace = {"__builtins__": {}}
        self._namespace.update({name: OPERATORS[name].numpy for name in self.operators})
        self._symset = frozenset(self.symbols)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()
        pin_worker_blas()

    # -- trees ------------------------------------------------------------------------------
    def parse(self, tree: str) -> list[Node]:
        """The prefix nodes of a tree string of this problem."""
        return parse_prefix(tree, self.arity, self._symset)

    def compile(self, nodes: Sequence[tuple[int, Any]]) -> Callable[..., Any]:
        """``fn(c, *feature_arrays)`` of a prefix tree; constants are read from the sequence ``c``."""
        body = render(nodes, self.arity, lambda kind, value, k: f"c[{k}]" if kind == CONST else value)
        return eval(f"lambda c, {', '.join(self.symbols) or '*_'}: {body}", self._namespace)

    def __call__(self, tree: str) -> EvalResult:
        nodes = self.parse(tree)
        consts = [v for k, v in nodes if k == CONST]
        fit = self.objective.fit(self.compile(nodes), consts)
        size = len(nodes)
        node_evals = size * (fit.rows + fit.probe_rows)
        if consts:
            it = iter(fit.consts)
            tree = format_prefix([Node(k, next(it)) if k == CONST else Node(k, v) for k, v in nodes], self.arity)
        return EvalResult(tree, float(fit.a), float(fit.b), float(fit.loss), float(fit.mre), float(fit.violation),
                          int(node_evals))
