"""Tree GP with Operon (``pyoperon``, C++) over a :class:`~search_spaces.spaces.SearchSpace`.

The translation of a space (operators, limits, objectives, seeds) is
:mod:`discovery.engines.operon_translate`.

pyoperon 0.6.2 has neither a relative-error objective nor ``sample_weight``
in ``SymbolicRegressor.fit``, so the engine assembles the same algorithm
as ``SymbolicRegressor.fit`` (NSGA-II, balanced tree creator, subtree
crossover, the eight mutations with equal weights, tournament selection,
keep-best reinsertion) from the ``pyoperon`` bindings, with its objectives
as ``UserDefinedEvaluator`` callbacks (Python, numpy on Operon's
evaluation of the tree, scored by the shared
:class:`~search_spaces.objective.Objective`).

Candidates
----------
Every member of Operon's final Pareto front (``BestFront``) within the
size limit is printed with ``InfixFormatter`` (variables named by
:func:`~search_spaces.operators.symbol_name` of the feature of X column
``i``, 20 decimals) and parsed with the shared
:func:`~search_spaces.operators.parse_formula`; its scale ``a`` and offset
``b`` are refitted in float64 to the relative residuals, the candidate is
``b + a·tree`` (mapped back to the latency through the problem's target
transform; Operon's dataset target is the transformed target) with loss = training mean relative error (the constraint
penalty applied as in DEAP), complexity from the table; candidates
dominated in (loss, complexity) are dropped.

Reproducibility: single-threaded runs stopped by ``generations`` are
deterministic for a seed; a run stopped by the budget is not (where the
clock stops it differs). ``stats_`` holds ``unsupported`` (what the space
asks that Operon cannot do; also printed as one warning line on stderr)
and ``notes``.

Checkpoints: Operon cannot be suspended mid-run; the engine checkpoints its
finished result, so ``--resume`` of a multi-engine run does not repeat a
finished Operon search (an unfinished one starts again).
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from discovery.engines.operon_translate import (BAD_FITNESS, MUTATIONS, OBJECTIVES, OperonObjectives, OperonSettings,
                                                node_types, operon_options, operon_unsupported, seed_trees)
from features.errors import StepMLError
from search_spaces.objective import Objective

if TYPE_CHECKING:
    from discovery.candidate import Candidate, Problem

__all__ = ["BAD_FITNESS", "MUTATIONS", "OBJECTIVES", "OperonEngine", "OperonSettings", "node_types", "operon_options",
           "operon_unsupported", "seed_trees"]

STATE_VERSION = 1
#: Decimals of the coefficients in Operon's model strings.
STRING_PRECISION = 20


class OperonEngine:
    """Operon search of a problem (see the module docstring). ``stats_`` after :meth:`search`:
    ``generations``, ``evaluations``, ``wall_s``, ``stopped_by``, ``front_size``, ``candidates``,
    ``over_max_size`` (front members dropped by the size filter), ``unsupported``, ``notes``, ``options``."""

    name = "operon"

    def __init__(self, settings: OperonSettings | None = None) -> None:
        self.settings = settings if settings is not None else OperonSettings()
        self.stats_: dict[str, Any] = {}

    def search(self, problem: "Problem", mapper: Callable[..., Iterable[Any]] | None = None,
               progress: Callable[..., None] | None = None,
               checkpoint: Callable[[dict[str, Any]], None] | None = None,
               resume_state: Mapping[str, Any] | None = None) -> list["Candidate"]:
        """Search ``problem``; returns the Pareto set (loss × complexity), sorted by complexity.

        ``mapper`` is ignored (Operon evaluates in C++ with ``threads`` threads). ``progress`` is
        called after every generation; ``checkpoint`` once, with the finished result; a
        ``resume_state`` holding a finished result of the same problem returns it without searching.
        """
        t0 = time.perf_counter()
        s = self.settings
        options = operon_options(problem.space, tuple(problem.features), s)
        unsupported = operon_unsupported(problem.space, s)
        fingerprint = self._fingerprint(problem, options)
        if resume_state is not None:
            done = self._restore(resume_state, fingerprint, problem)
            if done is not None:
                return done
        import pyoperon as op

        objective = Objective(problem)
        parts = _data(op, objective, options, with_probes=s.objective == "relative")
        seeds, unexpressed = seed_trees(op, problem.space.seed_formulas, objective.features, parts.inputs, options)
        if unexpressed:
            unsupported.append(f"seed formula(s) {'; '.join(unexpressed)} (not expressible with the "
                               "space's Operon operators or limits)")
        if unsupported:
            print(f"warning: operon engine cannot express: {'; '.join(unsupported)}", file=sys.stderr)
        options["max_time"] = max(1, int(s.budget_s - (time.perf_counter() - t0) - 0.5))
        objectives = OperonObjectives(op, objective, parts.dtable, parts.ds, parts.train_range, parts.probe_sets,
                                      deadline=t0 + s.budget_s - 0.25)
        _algorithm(op, parts, options, objectives, s.objective)
        _warm_start(op, parts, seeds, options)

        def report() -> None:
            progress(int(parts.gp.Generation), objectives.best, len(parts.gp.BestFront),  # type: ignore[misc]
                     time.perf_counter() - t0)

        parts.gp.Run(parts.rng, report if progress is not None else None, options["n_threads"], True)
        generations = int(parts.gp.Generation)
        strings, over = _front_strings(op, parts, objectives, options)
        evaluations = int(objectives.calls if s.objective == "relative" else parts.first.CallCount)
        _release(parts)  # the C++ objects (and the callbacks they hold) go before candidates are built
        del parts
        candidates = self._candidates(strings, problem, objective, generations)
        self.stats_ = self._stats(t0, generations, evaluations, objectives, candidates, strings, over, unsupported,
                                  options)
        if checkpoint is not None:
            checkpoint(self._state(fingerprint, candidates))
        return candidates

    # -- result ---------------------------------------------------------------------------------
    def _stats(self, t0: float, generations: int, evaluations: int, objectives: OperonObjectives,
               candidates: list["Candidate"], strings: list[str], over: int, unsupported: list[str],
               options: Mapping[str, Any]) -> dict[str, Any]:
        s = self.settings
        wall = time.perf_counter() - t0
        stopped = "generations" if generations >= s.generations else (
            "budget" if wall >= s.budget_s - 1.0 or objectives.skipped else "evaluations")
        notes = [f"population_size = population x islands = {options['population_size']} (one population)",
                 "max_length counts Operon nodes (a weighted variable is one node); the returned trees are "
                 f"filtered to table complexity <= {options['max_complexity']}"]
        if s.objective == "relative" and options["optimizer_iterations"]:
            notes.append("Levenberg-Marquardt local search fits coefficients to absolute squared error "
                         "(pyoperon has no sample weights); selection uses the relative objective")
        return {
            "generations": generations, "evaluations": evaluations,
            "skipped_after_deadline": objectives.skipped,
            "wall_s": wall, "stopped_by": stopped, "best_loss": min((c.loss for c in candidates), default=math.inf),
            "front_size": len(strings) + over, "over_max_size": over, "candidates": len(candidates),
            "unsupported": unsupported, "notes": notes,
            "options": {k: v for k, v in options.items() if k != "variable_names"},
        }

    def _candidates(self, strings: list[str], problem: "Problem", objective: Objective,
                    generations: int) -> list["Candidate"]:
        """Operon's formulas parsed, re-scaled in float64 and scored; the dominated ones dropped."""
        import sympy

        from discovery.candidate import Candidate, count_constants, tidy
        from search_spaces.objective import complexity, pareto_front
        from search_spaces.numeric import lambdify_formula
        from search_spaces.operators import parse_formula

        X = dict(zip(objective.features, objective.X))
        features = objective.formula_features
        out = []
        for text in dict.fromkeys(strings):
            try:
                body = tidy(parse_formula(text, problem.features))
            except StepMLError:
                continue  # e.g. a non-finite coefficient
            with np.errstate(all="ignore"):
                f = np.asarray(lambdify_formula(body, problem.features)(X), dtype=np.float64)
            if not np.all(np.isfinite(f)):
                continue
            a, b = objective.scale(f)
            scaled = sympy.Float(b) if a == 0.0 else tidy(sympy.Float(b) + sympy.Float(a) * body)
            expr = problem.transform.to_latency(scaled)
            loss, _, _ = objective.formula_loss(lambdify_formula(expr, features))
            if not math.isfinite(loss):
                continue
            out.append(Candidate(expr, int(complexity(expr)), float(loss), "operon",
                                 f"operon front gen {generations}", count_constants(expr)))
        return pareto_front(sorted(out, key=lambda c: c.key))

    # -- checkpoints ----------------------------------------------------------------------------
    def _fingerprint(self, problem: "Problem", options: Mapping[str, Any]) -> str:
        digest = hashlib.sha256(np.asarray(problem.y_train, dtype=np.float64).tobytes())
        for f in problem.features:
            digest.update(f.encode())
            digest.update(np.asarray(problem.X_train[f], dtype=np.float64).tobytes())
        digest.update(repr(sorted((k, v) for k, v in options.items() if k != "max_time")).encode())
        digest.update(repr((problem.space.name, problem.space.constraint_mode, problem.space.loss,
                            problem.transform.spec)).encode())
        digest.update(repr(asdict(self.settings) | {"budget_s": None}).encode())
        return digest.hexdigest()[:16]

    def _state(self, fingerprint: str, candidates: list["Candidate"]) -> dict[str, Any]:
        import sympy

        return {"version": STATE_VERSION, "engine": "operon", "finished": True, "fingerprint": fingerprint,
                "candidates": [(sympy.srepr(c.expr), c.complexity, c.loss, c.provenance, c.n_constants)
                               for c in candidates],
                "stats": dict(self.stats_)}

    def _restore(self, state: Mapping[str, Any], fingerprint: str, problem: "Problem") -> list["Candidate"] | None:
        from discovery.candidate import Candidate

        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION or state.get("engine") != "operon":
            raise StepMLError("resume state is not an Operon engine checkpoint of this version")
        if state.get("fingerprint") != fingerprint:
            raise StepMLError("resume state was made with a different problem, space or Operon settings")
        if not state.get("finished"):
            return None
        from search_spaces.operators import parse_formula

        try:
            found = [Candidate(parse_formula(e, problem.formula_features, indexed=False), int(cx), float(loss), "operon",
                               str(prov), int(k)) for e, cx, loss, prov, k in state["candidates"]]
            self.stats_ = dict(state.get("stats", {}), resumed=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise StepMLError(f"resume state is malformed ({type(exc).__name__}: {exc})") from None
        return found


# =============================================================================== phases of a search
# pyoperon holds raw pointers: every component lives in one namespace (``parts``) until the run is read.


def _data(op: Any, objective: Objective, options: Mapping[str, Any], with_probes: bool) -> SimpleNamespace:
    """Operon's dataset (features then target), problem and primitive set; the probe pairs as datasets."""
    features = objective.features
    data = np.asfortranarray(np.column_stack([np.column_stack(objective.X), objective.t]))
    ds = op.Dataset(data)
    ordered = sorted(ds.Variables, key=lambda v: v.Index)
    inputs = [v.Hash for v in ordered[:-1]]
    train_range = op.Range(0, ds.Rows)
    problem_op = op.Problem(ds)
    problem_op.TrainingRange = train_range
    problem_op.TestRange = op.Range(ds.Rows - 1, ds.Rows)
    problem_op.Target = ordered[-1]
    problem_op.InputHashes = inputs
    types = node_types(op)
    config_bits = 0
    for sym in options["allowed_symbols"].split(","):
        config_bits |= int(types[sym])
    problem_op.ConfigurePrimitiveSet(config_bits)
    probe_sets = []  # lo rows then hi rows, for the constraint in the relative objective
    for lo, hi in (objective.probe_pairs() if with_probes else []):
        block = np.column_stack([np.concatenate([lo[f], hi[f]]) for f in features] +
                                [np.ones(2 * len(lo[features[0]]))])
        pds = op.Dataset(np.asfortranarray(block))
        n = len(lo[features[0]])
        probe_sets.append((pds, op.Range(0, n), op.Range(n, 2 * n)))
    return SimpleNamespace(ds=ds, inputs=inputs, train_range=train_range, problem=problem_op,
                           pset=problem_op.PrimitiveSet, probe_sets=probe_sets, dtable=op.DispatchTable(),
                           names={h: options["variable_names"][i] for i, h in enumerate(inputs)})


def _algorithm(op: Any, parts: SimpleNamespace, options: Mapping[str, Any], objectives: OperonObjectives,
               objective: str) -> None:
    """NSGA-II as ``SymbolicRegressor.fit`` assembles it, with this engine's objectives (into ``parts``)."""
    max_length, max_depth = options["max_length"], options["max_depth"]
    parts.creator = op.BalancedTreeCreator(parts.pset, parts.inputs, 0.0)
    parts.coeff_init = op.UniformRealCoefficientAnalyzer()
    parts.coeff_init.ParameterizeDistribution(*options["coefficient_range"])
    if objective == "relative":
        parts.first = op.UserDefinedEvaluator(parts.problem, objectives.relative)
    else:
        parts.first = op.Evaluator(parts.problem, parts.dtable, op.R2(), True)
    parts.second = op.UserDefinedEvaluator(parts.problem, objectives.complexity)
    parts.evaluator = op.MultiEvaluator(parts.problem)
    for e in (parts.first, parts.second):
        e.Budget = options["max_evaluations"]
        parts.evaluator.Add(e)
    parts.evaluator.Budget = options["max_evaluations"]
    comparison = op.CrowdedComparison()
    parts.female = op.TournamentSelector(comparison)
    parts.female.TournamentSize = options["tournament_size"]
    parts.male = op.TournamentSelector(comparison)
    parts.male.TournamentSize = options["tournament_size"]
    parts.reinserter = op.KeepBestReinserter(comparison)
    parts.crossover = op.SubtreeCrossover(options["crossover_internal_probability"], max_depth, max_length)
    parts.mutation = op.MultiMutation()
    parts.mutations = []
    for name, weight in options["mutation"].items():
        m = _mutation(op, name, parts, max_depth, max_length)
        parts.mutation.Add(m, weight)
        parts.mutations.append(m)
    parts.optimizer = op.LMOptimizer(parts.dtable, parts.problem, options["optimizer_iterations"], 0)
    parts.coeff_optimizer = op.CoefficientOptimizer(parts.optimizer)
    parts.generator = op.BasicOffspringGenerator(parts.evaluator, parts.crossover, parts.mutation, parts.female,
                                                 parts.male, parts.coeff_optimizer)
    min_arity, _ = parts.pset.FunctionArityLimits()
    parts.tree_init = op.UniformLengthTreeInitializer(parts.creator)
    parts.tree_init.ParameterizeDistribution(min_arity + 1, options["initialization_max_length"])
    parts.tree_init.MinDepth = 1
    parts.tree_init.MaxDepth = 1000
    parts.config = op.GeneticAlgorithmConfig(
        generations=options["generations"], max_evaluations=options["max_evaluations"],
        local_iterations=options["optimizer_iterations"], population_size=options["population_size"],
        pool_size=options["pool_size"], p_crossover=options["crossover_probability"],
        p_mutation=options["mutation_probability"], p_local=1.0, p_lamarck=1.0, epsilon=1e-5,
        seed=options["random_state"], max_time=options["max_time"])
    parts.sorter = op.RankSorter()
    parts.gp = op.NSGA2Algorithm(parts.config, parts.problem, parts.tree_init, parts.coeff_init, parts.generator,
                                 parts.reinserter, parts.sorter)
    parts.rng = op.RandomGenerator(np.uint64(options["random_state"]))


def _mutation(op: Any, name: str, parts: SimpleNamespace, max_depth: int, max_length: int) -> Any:
    if name == "onepoint":
        m = op.NormalOnePointMutation()
        m.ParameterizeDistribution(0, 1)
        return m
    if name == "multipoint":
        m = op.NormalMultiPointMutation()
        m.ParameterizeDistribution(0, 1)
        return m
    if name == "discretepoint":
        m = op.DiscretePointMutation()
        for c in op.Math.Constants:
            m.Add(c, 1.0)
        return m
    if name == "changevar":
        return op.ChangeVariableMutation(parts.inputs)
    if name == "changefunc":
        return op.ChangeFunctionMutation(parts.pset)
    if name == "replacesubtree":
        return op.ReplaceSubtreeMutation(parts.creator, parts.coeff_init, max_depth, max_length)
    if name == "insertsubtree":
        return op.InsertSubtreeMutation(parts.creator, parts.coeff_init, max_depth, max_length)
    if name == "removesubtree":
        return op.RemoveSubtreeMutation(parts.pset)
    raise StepMLError(f"unknown Operon mutation {name!r}")


def _warm_start(op: Any, parts: SimpleNamespace, seeds: list[Any], options: Mapping[str, Any]) -> None:
    """The initial population (seed formulas first, then Operon's random trees), handed to Operon as a
    warm start: parents + offspring slots, as ``RestoreIndividuals`` requires."""
    fitting = [t for t in seeds if t.Length <= options["max_length"] and t.Depth <= options["max_depth"]]
    fitting = fitting[:options["population_size"]]
    individuals = []
    for i in range(options["population_size"] + options["pool_size"]):
        ind = op.Individual(2)
        if i < len(fitting):
            ind.Genotype = fitting[i]
        else:
            tree = parts.tree_init(parts.rng)
            parts.coeff_init(parts.rng, tree)
            ind.Genotype = tree
        individuals.append(ind)
    parts.gp.RestoreIndividuals(op.IndividualCollection(individuals))
    parts.gp.IsFitted = True


def _front_strings(op: Any, parts: SimpleNamespace, objectives: OperonObjectives,
                   options: Mapping[str, Any]) -> tuple[list[str], int]:
    """Operon's final front as infix strings (members over the size limit counted and left out)."""
    strings, over = [], 0
    for ind in list(parts.gp.BestFront):
        if objectives.tree_complexity(ind.Genotype) > options["max_complexity"]:
            over += 1
            continue
        strings.append(op.InfixFormatter.Format(ind.Genotype, parts.names, STRING_PRECISION))
    return strings, over


def _release(parts: SimpleNamespace) -> None:
    """Drop the algorithm first, then what it points to (pyoperon objects hold raw pointers to each other)."""
    for name in ("gp", "generator", "evaluator", "first", "second", "mutation", "mutations", "optimizer",
                 "coeff_optimizer", "tree_init", "config", "sorter", "reinserter", "crossover", "female", "male",
                 "creator", "coeff_init"):
        parts.__dict__.pop(name, None)
