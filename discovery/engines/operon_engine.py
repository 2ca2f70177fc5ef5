"""Tree GP with Operon (``pyoperon``, C++) over a :class:`~search_spaces.spaces.SearchSpace`.

Translation of the space
------------------------
:func:`operon_options` maps a space, the problem's features and the engine
settings to the options of ``pyoperon.sklearn.SymbolicRegressor`` (same
names) plus the two objectives this engine uses:

=====================  ======================================================
space / settings        Operon
=====================  ======================================================
``operators``           ``allowed_symbols``: the table's ``operon`` spellings
                        (``fmax``, ``fmin``, ``sqrtabs`` …) + ``constant,variable``;
                        operators without an exact Operon equivalent (``cube``,
                        ``log1p``, ``relu``, ``neg``) are left out and reported
``max_size``            ``max_length`` (Operon nodes; every Operon node costs
                        at least 1 in the table, so no tree that fits the
                        space is excluded) **and** a filter on the table
                        complexity of the returned trees (≤ ``max_size``,
                        as DEAP's size limit; the fitted scale/offset come on
                        top, as in DEAP)
``max_depth``           ``max_depth = max_depth + 1`` (Operon counts a leaf as depth 1)
``constant_range``      initial coefficients uniform in the range
``loss``                objective 1: training mean relative error of
                        ``b + a·tree`` with ``a, b`` fitted in closed form to
                        the relative residuals (as DEAP), weighted by the
                        problem's weights for ``relative_weighted``
                        (``objective="relative"``, default); or Operon's own
                        ``r2`` (``objective="r2"``, all C++, relative error
                        only when rescoring: reported as unsupported)
complexity              objective 2: the table complexity of the Operon tree
                        (a weighted variable ``w·x`` costs 3, as ``mul(w, x)``)
``monotone_in`` +       ``objective="relative"``: the probe-pair penalty /
``constraint_mode``     rejection of DEAP inside objective 1; ``r2``:
                        reported as unsupported during search (the returned
                        candidates' losses include it)
``seed_formulas``       not expressible (Operon starts from random trees): reported
budget_s                ``max_time`` (whole seconds, minus the setup time)
                        and a deadline after which objective 1 stops evaluating
generations             ``generations``
population × islands    ``population_size`` (Operon has one population)
seed                    ``random_state``
threads                 ``n_threads``
optimizer_iterations    Levenberg–Marquardt iterations on the coefficients
                        (``optimizer_iterations``; Operon's LM minimises the
                        *absolute* squared error — pyoperon 0.6.2 has no
                        sample weights — so in ``relative`` mode it is a
                        heuristic; 0 switches it off)
=====================  ======================================================

pyoperon 0.6.2 has neither a relative-error objective nor ``sample_weight``
in ``SymbolicRegressor.fit``, so the engine assembles the same algorithm
as ``SymbolicRegressor.fit`` (NSGA-II, balanced tree creator, subtree
crossover, the eight mutations with equal weights, tournament selection,
keep-best reinsertion) from the ``pyoperon`` bindings, with its objectives
as ``UserDefinedEvaluator`` callbacks (Python, numpy on Operon's
evaluation of the tree).

Candidates
----------
Every member of Operon's final Pareto front (``BestFront``) within the
size limit is printed with ``InfixFormatter`` (variables named by
:func:`~search_spaces.operators.symbol_name` of the feature of X column
``i``, 20 decimals) and parsed with the shared
:func:`~search_spaces.operators.parse_formula`; its scale ``a`` and offset
``b`` are refitted in float64 to the relative residuals, the candidate is
``b + a·tree`` with loss = training mean relative error (the constraint
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
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from features.errors import StepMLError
from search_spaces.operators import OPERATORS, symbol_name

if TYPE_CHECKING:
    import sympy

    from discovery.candidate import Candidate, Problem
    from search_spaces.spaces import SearchSpace

__all__ = ["OperonEngine", "OperonSettings", "TrainingScorer", "formula_losses", "node_types", "operon_options",
           "operon_unsupported", "pareto_candidates"]

STATE_VERSION = 1
#: Objective value standing in for an unusable tree (Operon's fitness is float32).
BAD_FITNESS = 1e6
#: Decimals of the coefficients in Operon's model strings.
STRING_PRECISION = 20
OBJECTIVES = ("relative", "r2")
#: Mutations of ``SymbolicRegressor`` (all used, equal weights, as its default).
MUTATIONS = ("onepoint", "multipoint", "discretepoint", "changevar", "changefunc", "insertsubtree",
             "replacesubtree", "removesubtree")


# =============================================================================== settings


@dataclass(frozen=True)
class OperonSettings:
    """Options of :class:`OperonEngine` (``population``, ``islands``, ``generations``, ``budget_s`` and
    ``seed`` are the search CLI's; the rest have defaults).

    Attributes
    ----------
    population, islands : int
        Operon's ``population_size`` = population × islands (one population, the same individuals as DEAP).
    generations : int
    budget_s : float
        Wall-clock budget of one :meth:`OperonEngine.search` call.
    seed : int
    threads : int
        Operon ``n_threads`` (objective callbacks hold the GIL, so more threads help ``r2`` mode most).
    objective : str
        ``relative`` (default) or ``r2`` (see the module docstring).
    optimizer_iterations : int
        Levenberg–Marquardt iterations per individual (0 = no local search).
    tournament_size : int
    crossover_prob, mutation_prob : float
    max_evaluations : int
    """

    population: int = 200
    islands: int = 2
    generations: int = 40
    budget_s: float = 60.0
    seed: int = 0
    threads: int = 1
    objective: str = "relative"
    optimizer_iterations: int = 10
    tournament_size: int = 5
    crossover_prob: float = 1.0
    mutation_prob: float = 0.25
    max_evaluations: int = 1_000_000_000

    def __post_init__(self) -> None:
        problems = []
        if self.population < 1 or self.islands < 1:
            problems.append("population and islands must be >= 1")
        if self.population * self.islands < 2:
            problems.append("population x islands must be >= 2")
        if self.generations < 1:
            problems.append(f"generations must be >= 1 (got {self.generations})")
        if not self.budget_s > 0:
            problems.append(f"budget_s must be > 0 (got {self.budget_s})")
        if self.threads < 1:
            problems.append("threads must be >= 1")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective must be one of {', '.join(OBJECTIVES)} (got {self.objective!r})")
        if self.optimizer_iterations < 0 or self.tournament_size < 1 or self.max_evaluations < 1:
            problems.append("optimizer_iterations must be >= 0, tournament_size and max_evaluations >= 1")
        if not (0 <= self.crossover_prob <= 1 and 0 <= self.mutation_prob <= 1):
            problems.append("crossover_prob and mutation_prob must be in [0, 1]")
        if not 0 <= self.seed < 2 ** 64:
            problems.append("seed must be in [0, 2**64)")
        if problems:
            raise StepMLError("invalid Operon settings: " + "; ".join(problems))


# =============================================================================== translation


def operon_options(space: "SearchSpace", features: Sequence[str], settings: OperonSettings) -> dict[str, Any]:
    """The Operon options of a space (pure; see the module docstring's table).

    Keys are ``pyoperon.sklearn.SymbolicRegressor`` parameter names, except
    ``objectives`` (``["relative", "complexity"]`` are this engine's
    callbacks; ``["r2", "complexity"]`` uses Operon's R²),
    ``coefficient_range`` (uniform initial coefficients) and
    ``max_complexity`` (the table-complexity filter of the result).
    """
    symbols = [OPERATORS[name].operon for name in space.operators if OPERATORS[name].operon is not None]
    if not symbols:
        raise StepMLError(f"space '{space.name}': Operon can express none of its operators "
                          f"({', '.join(space.operators)})")
    if not features:
        raise StepMLError(f"space '{space.name}': the problem has no features")
    lo, hi = (float(v) for v in space.constant_range)
    return {
        "allowed_symbols": ",".join(list(dict.fromkeys(symbols)) + ["constant", "variable"]),
        "max_length": int(space.max_size),
        "max_depth": int(space.max_depth) + 1,
        "max_complexity": int(space.max_size),
        "coefficient_range": (lo, hi),
        "objectives": [settings.objective, "complexity"],
        "population_size": int(settings.population * settings.islands),
        "pool_size": int(settings.population * settings.islands),
        "generations": int(settings.generations),
        "max_time": max(1, int(settings.budget_s)),
        "max_evaluations": int(settings.max_evaluations),
        "random_state": int(settings.seed),
        "n_threads": int(settings.threads),
        "optimizer": "lm",
        "optimizer_iterations": int(settings.optimizer_iterations),
        "tournament_size": int(settings.tournament_size),
        "crossover_probability": float(settings.crossover_prob),
        "crossover_internal_probability": 0.9,
        "mutation_probability": float(settings.mutation_prob),
        "mutation": {name: 1.0 for name in MUTATIONS},
        "offspring_generator": "basic",
        "reinserter": "keep-best",
        "initialization_method": "btc",
        "initialization_max_length": min(10, int(space.max_size)),
        "variable_names": [symbol_name(f) for f in features],
    }


def operon_unsupported(space: "SearchSpace", settings: OperonSettings) -> list[str]:
    """What the space asks that this engine cannot do during an Operon search (one phrase each)."""
    out = []
    missing = [name for name in space.operators if OPERATORS[name].operon is None]
    if missing:
        out.append(f"operators {', '.join(missing)} (no exact Operon equivalent; searched without them)")
    if settings.objective == "r2":
        out.append(f"loss {space.loss} (objective r2: Operon optimises R² of the absolute target; "
                   "candidates are rescored with relative error)")
        if space.constraint_mode != "off" and space.monotone_in:
            out.append(f"monotonicity in {', '.join(space.monotone_in)} (objective r2: not enforced during "
                       "search; applied to the returned candidates' losses)")
    return out


# =============================================================================== losses


class TrainingScorer:
    """Training rows, weights and probe pairs of a problem, for losses of formulas (float64)."""

    def __init__(self, problem: "Problem") -> None:
        self.features = tuple(problem.features)
        self.X = {f: np.asarray(problem.X_train[f], dtype=np.float64) for f in self.features}
        self.y = np.asarray(problem.y_train, dtype=np.float64)
        if self.y.ndim != 1 or self.y.size == 0:
            raise StepMLError("the problem has no training rows")
        if not (np.all(np.isfinite(self.y)) and np.all(self.y > 0)):
            raise StepMLError("training target must be finite and > 0 (relative loss)")
        w = np.ones_like(self.y) if problem.w_train is None else np.asarray(problem.w_train, dtype=np.float64)
        if w.shape != self.y.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.sum(w) > 0:
            raise StepMLError("training weights must be finite, >= 0, not all zero and match the target")
        self.w = w
        self.wn = w / float(np.sum(w))
        self.u = w / (self.y * self.y)
        self.mode = problem.space.constraint_mode
        self.probes = [] if self.mode == "off" else [
            ({f: np.asarray(lo[f], dtype=np.float64) for f in self.features},
             {f: np.asarray(hi[f], dtype=np.float64) for f in self.features})
            for _, (lo, hi) in sorted(problem.probes.items())
            if self.features and len(lo[self.features[0]])]

    def mre(self, pred: np.ndarray) -> float:
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            return math.inf
        return float(np.sum(self.wn * np.abs(pred - self.y) / self.y))

    def scale(self, f: np.ndarray) -> tuple[float, float]:
        from discovery.engines.deap_engine import linear_scaling

        return linear_scaling(f, self.y, self.u)

    def loss(self, fn: Callable[[Mapping[str, np.ndarray]], np.ndarray]) -> tuple[float, float, float]:
        """(constrained loss, plain MRE, violation fraction) of a prediction function of feature columns."""
        from discovery.engines.deap_engine import constrained_loss, violation_fraction

        with np.errstate(all="ignore"):
            mre = self.mre(np.asarray(fn(self.X), dtype=np.float64))
            violation = 0.0
            if self.probes and math.isfinite(mre):
                violation = violation_fraction((fn(lo), fn(hi)) for lo, hi in self.probes)
        return constrained_loss(mre, violation, self.mode), mre, violation


def formula_losses(expr: "sympy.Expr", problem: "Problem") -> tuple[float, float, float]:
    """(loss as DEAP and Operon report it, training MRE, probe violation fraction) of a formula on ``problem``."""
    from search_spaces.operators import lambdify_formula

    return TrainingScorer(problem).loss(lambdify_formula(expr, problem.features))


def pareto_candidates(candidates: Iterable["Candidate"]) -> list["Candidate"]:
    """The candidates not dominated in (loss, complexity), by complexity; infinite losses dropped."""
    ordered = sorted((c for c in candidates if math.isfinite(c.loss)),
                     key=lambda c: (c.complexity, c.loss, c.key))
    front, best = [], math.inf
    for cand in ordered:
        if cand.loss < best:
            front.append(cand)
            best = cand.loss
    return front


def _tidy(expr: "sympy.Expr") -> "sympy.Expr":
    """Operon's ``sqrt(abs(x))`` parsed by the table (``sqrt`` is already of ``|x|``) gives
    ``Abs(Abs(x))``: fold those; and round every number to float64 (the strings carry 20 decimals)."""
    import sympy

    expr = expr.replace(lambda e: isinstance(e, sympy.Abs) and isinstance(e.args[0], sympy.Abs),
                        lambda e: e.args[0])
    return expr.xreplace({f: sympy.Float(float(f)) for f in expr.atoms(sympy.Float)})


def _n_constants(expr: "sympy.Expr") -> int:
    import sympy

    return sum(1 for node in sympy.preorder_traversal(expr) if isinstance(node, sympy.Float))


# =============================================================================== objectives


_ARITHMETIC_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


def node_types(op: Any) -> dict[str, Any]:
    """``allowed_symbols`` spelling → ``pyoperon.NodeType``, resolved by the C++ node's own name.

    Not by the enum's labels: in pyoperon 0.6.2 ``NodeType.Fmax`` builds the C++ ``fmin`` node and
    ``NodeType.Fmin`` the ``fmax`` node (``Node(NodeType.Fmax).Name == "fmin"``, and it evaluates as a
    minimum), so ``allowed_symbols="fmax"`` through the labels would give Operon a minimum.
    """
    out: dict[str, Any] = {}
    for member in op.NodeType:
        try:
            name = op.Node(member).Name
        except Exception:  # a type that cannot be built alone
            continue
        out.setdefault(_ARITHMETIC_NAMES.get(name, name), member)
    return out


def _tree_complexity_table(op: Any) -> dict[Any, int]:
    """Operon node type → table complexity of the node (variables and constants handled apart)."""
    types = node_types(op)
    return {types[tab.operon]: tab.complexity for tab in OPERATORS.values() if tab.operon is not None}


class _Objectives:
    """The two objective callbacks of the Operon search (relative loss, table complexity)."""

    def __init__(self, op: Any, scorer: TrainingScorer, dtable: Any, train: Any, train_range: Any,
                 probe_sets: list[tuple[Any, Any, Any]], deadline: float) -> None:
        self.op = op
        self.scorer = scorer
        self.dtable = dtable
        self.train = train
        self.train_range = train_range
        self.probe_sets = probe_sets
        self.deadline = deadline
        self.weights = _tree_complexity_table(op)
        self.calls = 0
        self.skipped = 0
        self.best = math.inf
        u = scorer.u
        self._su = float(np.sum(u))
        self._ym = float(np.dot(u, scorer.y)) / self._su
        self._yc = scorer.y - self._ym

    def complexity(self, _rng: Any, ind: Any) -> list[float]:
        return [float(self.tree_complexity(ind.Genotype))]

    def tree_complexity(self, tree: Any) -> int:
        total = 0
        for node in tree.Nodes:
            if node.IsVariable:
                total += 1 if node.Value == 1.0 else 3
            elif node.IsConstant:
                total += 1
            else:
                total += self.weights.get(node.Type, 1)
        return total

    def relative(self, _rng: Any, ind: Any) -> list[float]:
        from discovery.engines.deap_engine import _scale, constrained_loss, violation_fraction

        if time.perf_counter() > self.deadline:
            self.skipped += 1
            return [BAD_FITNESS]
        self.calls += 1
        op, s = self.op, self.scorer
        with np.errstate(all="ignore"):
            f = np.asarray(op.Evaluate(self.dtable, ind.Genotype, self.train, self.train_range), dtype=np.float64)
            if not np.all(np.isfinite(f)):
                return [BAD_FITNESS]
            a, b = _scale(f, s.u, self._su, self._ym, self._yc)
            mre = s.mre(a * f + b)
            violation = 0.0
            if self.probe_sets and math.isfinite(mre):
                pairs = []
                for data, rng_lo, rng_hi in self.probe_sets:
                    lo = np.asarray(op.Evaluate(self.dtable, ind.Genotype, data, rng_lo), dtype=np.float64)
                    hi = np.asarray(op.Evaluate(self.dtable, ind.Genotype, data, rng_hi), dtype=np.float64)
                    pairs.append((a * lo + b, a * hi + b))
                violation = violation_fraction(pairs)
        loss = constrained_loss(mre, violation, s.mode)
        if not math.isfinite(loss):
            return [BAD_FITNESS]
        self.best = min(self.best, loss)
        return [min(float(loss), BAD_FITNESS)]


# =============================================================================== seeds

_CONSTANT_NAME = re.compile(r"\bc\d+\b")


class _Inexpressible(Exception):
    pass


def _seed_trees(op: Any, formulas: Sequence[str], features: Sequence[str], inputs: Sequence[int],
                options: Mapping[str, Any]) -> tuple[list[Any], list[str]]:
    """Operon trees of the space's seed formulas (constants ``c0…cN`` start at 1.0, as in DEAP),
    and the formulas that cannot be expressed (operator not allowed, unknown feature, too long/deep)."""
    import sympy

    from search_spaces.operators import parse_formula

    allowed = set(options["allowed_symbols"].split(","))
    types = node_types(op)
    hashes = {sympy.Symbol(symbol_name(f)): h for f, h in zip(features, inputs)}
    trees, bad = [], []
    for text in formulas:
        source = _CONSTANT_NAME.sub(lambda m: m.group(0) if m.group(0) in features else "1.0", text)
        try:
            nodes = _to_nodes(op, parse_formula(source, features), hashes, allowed, types)
            tree = op.Tree(nodes).UpdateNodes()
        except (StepMLError, _Inexpressible):
            bad.append(repr(text))
            continue
        if tree.Length > options["max_length"] or tree.Depth > options["max_depth"]:
            bad.append(repr(text))
            continue
        trees.append(tree)
    return trees, bad


def _to_nodes(op: Any, e: Any, hashes: Mapping[Any, int], allowed: set[str],
              types: Mapping[str, Any]) -> list[Any]:
    """Postfix Operon nodes of a sympy expression (Operon stores ``A op B`` as ``B, A, op``)."""
    import sympy

    def node(symbol: str) -> Any:
        if symbol not in allowed:
            raise _Inexpressible(symbol)
        return op.Node(types[symbol])

    def binary(symbol: str, a: list[Any], b: list[Any]) -> list[Any]:
        return b + a + [node(symbol)]

    def fold(symbol: str, parts: list[list[Any]]) -> list[Any]:
        if len(parts) == 1:
            return parts[0]
        mid = len(parts) // 2  # balanced, to keep the depth low
        return binary(symbol, fold(symbol, parts[:mid]), fold(symbol, parts[mid:]))

    def walk(x: Any, weight: float = 1.0) -> list[Any]:
        if x.is_Symbol:
            if x not in hashes:
                raise _Inexpressible(str(x))
            leaf = op.Node.Variable(weight)
            leaf.HashValue = hashes[x]
            leaf.CalculatedHashValue = hashes[x]
            return [leaf]
        if x.is_Number:
            return [op.Node.Constant(float(x))]
        if x.is_Add:
            return fold("add", [walk(t) for t in x.args])
        if x.is_Mul and len(x.args) == 2 and x.args[0].is_Number and x.args[1] in hashes:
            return walk(x.args[1], float(x.args[0]))  # c·x is one weighted Operon variable
        if x.is_Mul:
            num, den = [], []
            for factor in x.args:
                if factor.is_Pow and factor.exp.is_Number and factor.exp < 0:
                    den.append(walk(factor.base ** (-factor.exp)))
                else:
                    num.append(walk(factor))
            top = fold("mul", num) if num else [op.Node.Constant(1.0)]
            return binary("div", top, fold("mul", den)) if den else top
        if x.is_Pow:
            base, exp = x.args
            if exp == 2 and "square" in allowed:
                return walk(base) + [node("square")]
            if exp == 2:
                return fold("mul", [walk(base), walk(base)])
            if exp == sympy.Rational(1, 2):
                inner = base.args[0] if isinstance(base, sympy.Abs) else base
                return walk(inner) + [node("sqrtabs")]
            if exp.is_Number and exp < 0:
                return binary("div", [op.Node.Constant(1.0)], walk(base ** (-exp)))
            raise _Inexpressible(str(x))
        if isinstance(x, (sympy.Max, sympy.Min)):
            return fold("fmax" if isinstance(x, sympy.Max) else "fmin", [walk(a) for a in x.args])
        raise _Inexpressible(type(x).__name__)

    return walk(e)


# =============================================================================== engine


class OperonEngine:
    """Operon search of a problem (see the module docstring). ``stats_`` after :meth:`search`:
    ``generations``, ``evaluations``, ``wall_s``, ``stopped_by``, ``front_size``, ``candidates``,
    ``over_max_size`` (front members dropped by the size filter), ``unsupported``, ``notes``, ``options``."""

    name = "operon"

    def __init__(self, settings: OperonSettings | None = None) -> None:
        self.settings = settings if settings is not None else OperonSettings()
        self.stats_: dict[str, Any] = {}

    # -- public -------------------------------------------------------------------------------
    def search(self, problem: "Problem", mapper: Callable[..., Iterable[Any]] | None = None,
               progress: Callable[[int, float, int, float], None] | None = None,
               checkpoint: Callable[[dict[str, Any]], None] | None = None,
               resume_state: Mapping[str, Any] | None = None) -> list["Candidate"]:
        """Search ``problem``; returns the Pareto set (loss × complexity), sorted by complexity.

        ``mapper`` is ignored (Operon evaluates in C++ with ``threads`` threads). ``progress`` is
        called after every generation; ``checkpoint`` once, with the finished result; a
        ``resume_state`` holding a finished result of the same problem returns it without searching.
        """
        t0 = time.perf_counter()
        s = self.settings
        space = problem.space
        features = tuple(problem.features)
        options = operon_options(space, features, s)
        unsupported = operon_unsupported(space, s)
        fingerprint = self._fingerprint(problem, options)
        if resume_state is not None:
            done = self._restore(resume_state, fingerprint, problem)
            if done is not None:
                return done
        import pyoperon as op

        scorer = TrainingScorer(problem)
        X = np.column_stack([scorer.X[f] for f in features])
        data = np.asfortranarray(np.column_stack([X, scorer.y]))
        ds = op.Dataset(data)
        ordered = sorted(ds.Variables, key=lambda v: v.Index)
        target = ordered[-1]
        inputs = [v.Hash for v in ordered[:-1]]
        names = {h: options["variable_names"][i] for i, h in enumerate(inputs)}
        train_range = op.Range(0, ds.Rows)
        problem_op = op.Problem(ds)
        problem_op.TrainingRange = train_range
        problem_op.TestRange = op.Range(ds.Rows - 1, ds.Rows)
        problem_op.Target = target
        problem_op.InputHashes = inputs
        types = node_types(op)
        config_bits = 0
        for sym in options["allowed_symbols"].split(","):
            config_bits |= int(types[sym])
        problem_op.ConfigurePrimitiveSet(config_bits)
        pset = problem_op.PrimitiveSet

        # Probe pairs as Operon datasets (lo rows then hi rows), for the constraint in objective 1.
        probe_sets = []
        if s.objective == "relative":
            for lo, hi in scorer.probes:
                block = np.column_stack([np.concatenate([lo[f], hi[f]]) for f in features] +
                                        [np.ones(2 * len(lo[features[0]]))])
                pds = op.Dataset(np.asfortranarray(block))
                n = len(lo[features[0]])
                probe_sets.append((pds, op.Range(0, n), op.Range(n, 2 * n)))

        max_length, max_depth = options["max_length"], options["max_depth"]
        seed_trees, unexpressed = _seed_trees(op, space.seed_formulas, features, inputs, options)
        if unexpressed:
            unsupported.append(f"seed formula(s) {'; '.join(unexpressed)} (not expressible with the "
                               "space's Operon operators or limits)")
        if unsupported:
            print(f"warning: operon engine cannot express: {'; '.join(unsupported)}", file=sys.stderr)
        creator = op.BalancedTreeCreator(pset, inputs, 0.0)
        coeff_init = op.UniformRealCoefficientAnalyzer()
        coeff_init.ParameterizeDistribution(*options["coefficient_range"])
        dtable = op.DispatchTable()

        setup = time.perf_counter() - t0
        remaining = s.budget_s - setup
        max_time = max(1, int(remaining - 0.5))
        options["max_time"] = max_time
        deadline = t0 + s.budget_s - 0.25
        objectives = _Objectives(op, scorer, dtable, ds, train_range, probe_sets, deadline)
        keep: list[Any] = []  # pyoperon holds raw pointers: keep every component alive during Run
        if s.objective == "relative":
            first = op.UserDefinedEvaluator(problem_op, objectives.relative)
        else:
            first = op.Evaluator(problem_op, dtable, op.R2(), True)
        second = op.UserDefinedEvaluator(problem_op, objectives.complexity)
        evaluator = op.MultiEvaluator(problem_op)
        for e in (first, second):
            e.Budget = options["max_evaluations"]
            evaluator.Add(e)
        evaluator.Budget = options["max_evaluations"]
        keep += [first, second]

        comparison = op.CrowdedComparison()
        female = op.TournamentSelector(comparison)
        female.TournamentSize = options["tournament_size"]
        male = op.TournamentSelector(comparison)
        male.TournamentSize = options["tournament_size"]
        reinserter = op.KeepBestReinserter(comparison)
        crossover = op.SubtreeCrossover(options["crossover_internal_probability"], max_depth, max_length)
        mutation = op.MultiMutation()
        for name, weight in options["mutation"].items():
            m = self._mutation(op, name, inputs, pset, creator, coeff_init, max_depth, max_length)
            mutation.Add(m, weight)
            keep.append(m)
        optimizer = op.LMOptimizer(dtable, problem_op, options["optimizer_iterations"], 0)
        coeff_optimizer = op.CoefficientOptimizer(optimizer)
        generator = op.BasicOffspringGenerator(evaluator, crossover, mutation, female, male, coeff_optimizer)
        min_arity, _ = pset.FunctionArityLimits()
        tree_init = op.UniformLengthTreeInitializer(creator)
        tree_init.ParameterizeDistribution(min_arity + 1, options["initialization_max_length"])
        tree_init.MinDepth = 1
        tree_init.MaxDepth = 1000
        config = op.GeneticAlgorithmConfig(
            generations=options["generations"], max_evaluations=options["max_evaluations"],
            local_iterations=options["optimizer_iterations"], population_size=options["population_size"],
            pool_size=options["pool_size"], p_crossover=options["crossover_probability"],
            p_mutation=options["mutation_probability"], p_local=1.0, p_lamarck=1.0, epsilon=1e-5,
            seed=options["random_state"], max_time=max_time)
        sorter = op.RankSorter()
        gp = op.NSGA2Algorithm(config, problem_op, tree_init, coeff_init, generator, reinserter, sorter)
        rng = op.RandomGenerator(np.uint64(options["random_state"]))
        # The initial population (seed formulas first, then Operon's random trees), handed to Operon
        # as a warm start: parents + offspring slots, as RestoreIndividuals requires.
        seeds = [t for t in seed_trees if t.Length <= max_length and t.Depth <= max_depth]
        seeds = seeds[:options["population_size"]]
        individuals = []
        for i in range(options["population_size"] + options["pool_size"]):
            ind = op.Individual(2)
            if i < len(seeds):
                ind.Genotype = seeds[i]
            else:
                tree = tree_init(rng)
                coeff_init(rng, tree)
                ind.Genotype = tree
            individuals.append(ind)
        gp.RestoreIndividuals(op.IndividualCollection(individuals))
        gp.IsFitted = True
        del individuals

        def report() -> None:
            if progress is not None:
                progress(int(gp.Generation), objectives.best, len(gp.BestFront), time.perf_counter() - t0)

        gp.Run(rng, report if progress is not None else None, options["n_threads"], True)
        generations = int(gp.Generation)
        front = list(gp.BestFront)
        strings, over = [], 0
        for ind in front:
            if objectives.tree_complexity(ind.Genotype) > options["max_complexity"]:
                over += 1
                continue
            strings.append(op.InfixFormatter.Format(ind.Genotype, names, STRING_PRECISION))
        evaluations = int(objectives.calls if s.objective == "relative" else first.CallCount)
        # release the C++ objects (and the callbacks they hold) before building candidates
        del gp, front, generator, evaluator, first, second, keep, mutation, optimizer, coeff_optimizer
        candidates = self._candidates(strings, problem, scorer, generations)
        wall = time.perf_counter() - t0
        stopped = "generations" if generations >= s.generations else (
            "budget" if wall >= s.budget_s - 1.0 or objectives.skipped else "evaluations")
        notes = [f"population_size = population x islands = {options['population_size']} (one population)",
                 "max_length counts Operon nodes (a weighted variable is one node); the returned trees are "
                 f"filtered to table complexity <= {options['max_complexity']}"]
        if s.objective == "relative" and options["optimizer_iterations"]:
            notes.append("Levenberg-Marquardt local search fits coefficients to absolute squared error "
                         "(pyoperon has no sample weights); selection uses the relative objective")
        self.stats_ = {
            "generations": generations, "evaluations": evaluations,
            "skipped_after_deadline": objectives.skipped,
            "wall_s": wall, "stopped_by": stopped, "best_loss": min((c.loss for c in candidates), default=math.inf),
            "front_size": len(strings) + over, "over_max_size": over, "candidates": len(candidates),
            "unsupported": unsupported, "notes": notes,
            "options": {k: v for k, v in options.items() if k != "variable_names"},
        }
        if checkpoint is not None:
            checkpoint(self._state(fingerprint, candidates))
        return candidates

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _mutation(op: Any, name: str, inputs: list[Any], pset: Any, creator: Any, coeff_init: Any,
                  max_depth: int, max_length: int) -> Any:
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
            return op.ChangeVariableMutation(inputs)
        if name == "changefunc":
            return op.ChangeFunctionMutation(pset)
        if name == "replacesubtree":
            return op.ReplaceSubtreeMutation(creator, coeff_init, max_depth, max_length)
        if name == "insertsubtree":
            return op.InsertSubtreeMutation(creator, coeff_init, max_depth, max_length)
        if name == "removesubtree":
            return op.RemoveSubtreeMutation(pset)
        raise StepMLError(f"unknown Operon mutation {name!r}")

    def _candidates(self, strings: list[str], problem: "Problem", scorer: TrainingScorer,
                    generations: int) -> list["Candidate"]:
        import sympy

        from discovery.candidate import Candidate
        from search_spaces.operators import complexity, lambdify_formula, parse_formula

        out = []
        for text in dict.fromkeys(strings):
            try:
                body = _tidy(parse_formula(text, problem.features))
            except StepMLError:
                continue  # e.g. a non-finite coefficient
            with np.errstate(all="ignore"):
                f = np.asarray(lambdify_formula(body, problem.features)(scorer.X), dtype=np.float64)
            if not np.all(np.isfinite(f)):
                continue
            a, b = scorer.scale(f)
            expr = sympy.Float(b) if a == 0.0 else _tidy(sympy.Float(b) + sympy.Float(a) * body)
            loss, _, _ = scorer.loss(lambdify_formula(expr, problem.features))
            if not math.isfinite(loss):
                continue
            out.append(Candidate(expr, int(complexity(expr)), float(loss), "operon",
                                 f"operon front gen {generations}", _n_constants(expr)))
        return pareto_candidates(out)

    def _fingerprint(self, problem: "Problem", options: Mapping[str, Any]) -> str:
        digest = hashlib.sha256(np.asarray(problem.y_train, dtype=np.float64).tobytes())
        for f in problem.features:
            digest.update(f.encode())
            digest.update(np.asarray(problem.X_train[f], dtype=np.float64).tobytes())
        digest.update(repr(sorted((k, v) for k, v in options.items() if k != "max_time")).encode())
        digest.update(repr((problem.space.name, problem.space.constraint_mode, problem.space.loss)).encode())
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
            found = [Candidate(parse_formula(e, problem.features, indexed=False), int(cx), float(loss), "operon",
                               str(prov), int(k)) for e, cx, loss, prov, k in state["candidates"]]
            self.stats_ = dict(state.get("stats", {}), resumed=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise StepMLError(f"resume state is malformed ({type(exc).__name__}: {exc})") from None
        return found
