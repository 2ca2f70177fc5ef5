"""Tree-GP search over a :class:`~search_spaces.spaces.SearchSpace` with DEAP.

The primitive set is built from the operator table: one ``deap.gp`` primitive
per operator of the space (its numpy implementation, its arity), the
problem's features as the renamed arguments, and ephemeral constants drawn
uniformly from ``space.constant_range``.

Evaluation
----------
Trees are evaluated by :class:`~discovery.engines.deap_trees.TreeEvaluator`
(picklable; it carries the training arrays) with the shared objective
(:class:`~search_spaces.objective.Objective`): linear scaling, constant fitting
for every new individual, mean relative error, probe-constraint penalty. The
engine never evaluates a tree string twice: results are cached by the string
(before and after constant optimisation), and only unseen strings are sent to
the ``mapper``.

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
``deap.tools.selNSGA2`` (:mod:`discovery.engines.deap_variation`). Every
``migration_interval`` generations each island sends copies of its
``migration_size`` lowest-loss individuals to the next island in a ring,
replacing that island's worst. Initial populations hold the space's
``seed_formulas`` (translated through the canonical prefix form,
:func:`search_spaces.prefix.seed_nodes`; constants ``c0…cN`` start at 1.0) and
ramped half-and-half random trees.

Reproducibility
---------------
Every random choice of a run comes from one ``random.Random(seed)``
instance (structure) and one ``numpy.random.Generator`` seeded with the same
seed (constant values), both private to the run, so nothing reads or advances
the module-level ``random`` (which dask's scheduler threads also draw from).
Evaluation is deterministic and happens wherever the mapper sends it, so
serial, process and dask mappers give identical results; a run resumed from a
checkpoint gives the same result as an uninterrupted one. A run stopped by its
wall-clock budget is not reproducible (where the clock stops it differs); one
stopped by ``generations`` or ``early_stop_generations`` is.

The result is the Pareto set over the whole run: a hall of fame keeps the
lowest-loss tree of every tree complexity seen; those become
:class:`~discovery.candidate.Candidate` objects (``expr = b + a·tree`` with
the fitted numbers, complexity recomputed on the sympy expression), and the
candidates dominated in (loss, complexity) are dropped.
"""
from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from discovery.engines.deap_trees import EvalResult, TreeEvaluator
from discovery.engines.deap_variation import MUTATIONS, Individual, Variation
from discovery.config import DEFAULTS
from features.errors import StepMLError
from search_spaces.objective import pareto_mask, relative_error
from search_spaces.prefix import CONST

if TYPE_CHECKING:  # the engine module is imported by worker processes: keep it light
    import sympy

    from discovery.candidate import Candidate, Problem

__all__ = ["DeapEngine", "DeapSettings"]

STATE_VERSION = 1
#: Selection value standing in for an infinite loss (NSGA-II crowding needs finite values).
BIG_LOSS = 1e100


# =============================================================================== settings


@dataclass(frozen=True)
class DeapSettings:
    """Options of :class:`DeapEngine`.

    Attributes
    ----------
    population : int
        Individuals per island.
    generations : int or None
        Generations after the initial one (generation 0); None = no limit (the budget stops the search).
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
        Non-dominated sort of ``deap.tools.selNSGA2``: ``log`` (default; the same fronts as ``standard``,
        about 30 times faster on 400 individuals with two objectives) or ``standard``.
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

    population: int = DEFAULTS.population
    generations: int | None = DEFAULTS.generations
    islands: int = DEFAULTS.islands
    migration_interval: int = 5
    migration_size: int = 5
    budget_s: float = DEFAULTS.budget_s
    early_stop_generations: int = DEFAULTS.early_stop
    const_opt_max_nfev: int = 50
    crossover_prob: float = 0.6
    mutation_prob: float = 0.4
    mutation_weights: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1)
    tournament_size: int = 2
    nsga2_nd: str = "log"
    init_min_depth: int = 1
    init_max_depth: int = 3
    mutation_max_depth: int = 2
    constant_prob: float = 0.2
    variation_attempts: int = 5
    seed: int = DEFAULTS.seed

    def __post_init__(self) -> None:
        problems = []
        if self.population < 2:
            problems.append(f"population must be >= 2 (got {self.population})")
        if self.islands < 1:
            problems.append(f"islands must be >= 1 (got {self.islands})")
        if self.generations is not None and self.generations < 0:
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
            ``checkpoint(state)`` after every generation with a JSON-ready state dict.
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
        self.var = Variation(settings, self.space, self.evaluator.symbols)
        if not self.var.args:
            raise StepMLError(f"space '{self.space.name}': the problem has no features")
        if not self.var.prims:
            raise StepMLError(f"space '{self.space.name}' has no operators")
        self.cache: dict[str, EvalResult] = {}
        self.hof: dict[int, tuple[str, EvalResult, str]] = {}
        self.islands: list[list[Individual]] = []
        self.generation = 0
        self.best = math.inf
        self.stall = 0
        self.evaluations = 0
        self.cache_hits = 0
        self.node_evals = 0
        self.t0 = time.perf_counter()
        self.stats: dict[str, Any] = {}
        self._fp: dict[str, Any] | None = None

    def _fingerprint(self) -> dict[str, Any]:
        if self._fp is not None:
            return self._fp
        import hashlib

        objective = self.evaluator.objective
        digest = hashlib.sha256(objective.t.tobytes())
        for column in objective.X:
            digest.update(column.tobytes())
        keep = ("population", "islands", "seed", "crossover_prob", "mutation_prob", "mutation_weights",
                "tournament_size", "constant_prob", "const_opt_max_nfev", "migration_interval", "migration_size")
        fingerprint = {"features": self.evaluator.symbols, "operators": tuple(self.space.operators),
                       "max_size": self.var.max_size, "max_depth": self.var.max_depth,
                       "constraint_mode": objective.mode, "data": digest.hexdigest()[:16],
                       "transform": objective.transform.spec,
                       "settings": {k: v for k, v in asdict(self.s).items() if k in keep}}
        self._fp = json.loads(json.dumps(fingerprint))  # the form it has after a JSON checkpoint
        return self._fp

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, individuals: list[Individual]) -> list[Individual]:
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
            ind = old if result.tree == key else self.var.tree(result.tree)
            ind.provenance = old.provenance
            self._set(ind, result)
            individuals[i] = ind
        return individuals

    def _set(self, ind: Individual, result: EvalResult) -> None:
        ind.result = result
        loss = result.loss if math.isfinite(result.loss) else BIG_LOSS
        ind.fitness.values = (min(loss, BIG_LOSS), float(self.var.complexity(ind)))

    def _remember(self, individuals: Iterable[Individual]) -> None:
        for ind in individuals:
            r = ind.result
            if r is None or not math.isfinite(r.loss):
                continue
            cx = self.var.complexity(ind)
            if cx not in self.hof or r.loss < self.hof[cx][1].loss:
                self.hof[cx] = (r.tree, r, ind.provenance)

    def _best_val_loss(self) -> float:
        """Validation mean relative error of the best training entry (shown by progress bars)."""
        if not self.hof or not len(self.problem.y_val):
            return math.inf
        tree, r, _ = min(self.hof.values(), key=lambda entry: entry[1].loss)
        ev = self.evaluator
        nodes = ev.parse(tree)
        consts = [v for k, v in nodes if k == CONST]
        y = np.asarray(self.problem.y_val, dtype=np.float64)
        X = [np.asarray(self.problem.X_val[f], dtype=np.float64) for f in self.problem.features]
        with np.errstate(all="ignore"):
            z = r.a * ev.objective.run(ev.compile(nodes), consts, X, y.shape[0]) + r.b
            pred = self.problem.transform.inverse(z, self.problem.scale_val)
        return relative_error(pred, y)

    def _front_size(self) -> int:
        cxs = sorted(self.hof)
        return int(pareto_mask(cxs, [self.hof[cx][1].loss for cx in cxs]).sum())

    # -- initial population ----------------------------------------------------------------------
    def _seed_trees(self) -> list[Individual]:
        from search_spaces.prefix import format_prefix, seed_nodes

        out = []
        for text in self.space.seed_formulas:
            nodes = seed_nodes(text, self.problem.features, self.space.operators, self.evaluator.symbols)
            if nodes is None:
                continue
            ind = self.var.tree(format_prefix(nodes, self.var.arity))
            if self.var.fits(ind):
                ind.provenance = "seed"
                out.append(ind)
        return out

    def _initial(self) -> None:
        seeds = self._seed_trees()
        hi = max(0, min(self.s.init_max_depth, self.var.max_depth))
        lo = min(self.s.init_min_depth, hi)
        for island in range(self.s.islands):
            pop = [copy.deepcopy(t) for t in seeds[:self.s.population]]
            while len(pop) < self.s.population:
                for _ in range(100):
                    ind = Individual(self.var.half_and_half(lo, hi))
                    if self.var.fits(ind):
                        break
                else:
                    ind = Individual([self.var.rng.choice(self.var.args)])
                ind.provenance = f"deap gen 0 island {island}"
                pop.append(ind)
            self.islands.append(pop)
        self._evaluate_islands(self.islands)
        for i, pop in enumerate(self.islands):
            self.islands[i] = self.var.survive(pop, len(pop))

    def _evaluate_islands(self, groups: list[list[Individual]]) -> None:
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
            "random_state": list(self.var.rng.getstate()),
            "numpy_state": copy.deepcopy(self.var.nprng.bit_generator.state),
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
                ind = self.var.tree(tree)
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
        self.var.rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
        self.var.nprng.bit_generator.state = copy.deepcopy(dict(state["numpy_state"]))

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

    def _stop_reason(self) -> str | None:
        s = self.s
        if s.generations is not None and self.generation >= s.generations:
            return "generations"
        if s.early_stop_generations and self.stall >= s.early_stop_generations:
            return "early_stop"
        if time.perf_counter() - self.t0 >= s.budget_s:
            return "budget"
        return None

    def _generation(self) -> None:
        s = self.s
        self.generation += 1
        offspring = [self.var.offspring(pop, self.generation, i) for i, pop in enumerate(self.islands)]
        self._evaluate_islands(offspring)
        for i, pop in enumerate(self.islands):
            self.islands[i] = self.var.survive(pop + offspring[i], s.population)
        if s.migration_interval and s.migration_size and len(self.islands) > 1 \
                and self.generation % s.migration_interval == 0:
            self.var.migrate(self.islands)
        self._end_generation()

    def execute(self, resume_state: Mapping[str, Any] | None) -> list["Candidate"]:
        if resume_state is None:
            self._initial()
            self.stall = -1  # generation 0 sets the first best without counting as stagnation
            self._end_generation()
        else:
            self.restore(resume_state)
        while (stopped := self._stop_reason()) is None:
            self._generation()
        wall = time.perf_counter() - self.t0
        self.stats = {"generations": self.generation, "evaluations": self.evaluations,
                      "cache_hits": self.cache_hits, "node_evals": self.node_evals,
                      "node_evals_per_s": self.node_evals / wall if wall > 0 else 0.0,
                      "wall_s": wall, "stopped_by": stopped, "best_loss": self.best}
        return self.candidates()

    # -- result ----------------------------------------------------------------------------------
    def candidates(self) -> list["Candidate"]:
        """The hall of fame as candidates, the dominated ones dropped."""
        from discovery.candidate import Candidate, count_constants
        from search_spaces.objective import complexity, pareto_front

        raw = []
        for cx in sorted(self.hof):
            tree, result, provenance = self.hof[cx]
            expr = self.to_sympy(tree, result)
            raw.append(Candidate(expr, int(complexity(expr)), float(result.loss), "deap", provenance,
                                 count_constants(expr)))
        return pareto_front(raw)

    def to_sympy(self, tree: str, result: EvalResult) -> "sympy.Expr":
        """The latency formula: ``b + a·tree`` as sympy (the operator table's builders and symbols), mapped
        back through the problem's target transform (``roofline / (b + a·tree)``, ``exp(b + a·tree)``)."""
        import sympy

        from search_spaces.prefix import to_sympy

        body = to_sympy(self.evaluator.parse(tree))
        scaled = sympy.Float(result.b) if result.a == 0.0 else sympy.Float(result.b) + sympy.Float(result.a) * body
        return self.problem.transform.to_latency(scaled)
