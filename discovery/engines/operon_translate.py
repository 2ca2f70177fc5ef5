"""How a search space becomes an Operon search: options, objectives, seed trees (pure translation, no search).

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

Seed formulas reach Operon through the canonical prefix form
(:func:`search_spaces.prefix.seed_nodes`): :func:`seed_trees` turns each
prefix list into Operon's postfix nodes (``A op B`` stored as ``B, A, op``;
``c·x`` as one weighted variable).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from discovery.config import DEFAULTS, UNLIMITED_GENERATIONS
from features.errors import StepMLError
from search_spaces.objective import Objective
from search_spaces.operators import OPERATORS, symbol_name
from search_spaces.prefix import CONST, OP, VAR, Node, seed_nodes

if TYPE_CHECKING:
    from search_spaces.spaces import SearchSpace

__all__ = ["BAD_FITNESS", "MUTATIONS", "OBJECTIVES", "OperonObjectives", "OperonSettings", "node_types",
           "operon_options", "operon_unsupported", "seed_trees"]

#: Objective value standing in for an unusable tree (Operon's fitness is float32).
BAD_FITNESS = 1e6
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

    population: int = DEFAULTS.population
    islands: int = DEFAULTS.islands
    generations: int = UNLIMITED_GENERATIONS if DEFAULTS.generations is None else DEFAULTS.generations
    budget_s: float = DEFAULTS.budget_s
    seed: int = DEFAULTS.seed
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


# =============================================================================== node types


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


def tree_complexity_table(op: Any) -> dict[Any, int]:
    """Operon node type → table complexity of the node (variables and constants handled apart)."""
    types = node_types(op)
    return {types[tab.operon]: tab.complexity for tab in OPERATORS.values() if tab.operon is not None}



class OperonObjectives:
    """The two objective callbacks of the Operon search: the shared relative loss, the table complexity.

    ``relative`` evaluates the tree with Operon, then scores the outputs with
    :meth:`~search_spaces.objective.Objective.scaled_loss` (linear scaling,
    mean relative error, the probe penalty on the probe datasets).
    """

    def __init__(self, op: Any, objective: Objective, dtable: Any, train: Any, train_range: Any,
                 probe_sets: list[tuple[Any, Any, Any]], deadline: float) -> None:
        self.op = op
        self.objective = objective
        self.dtable = dtable
        self.train = train
        self.train_range = train_range
        self.probe_sets = probe_sets
        self.deadline = deadline
        self.weights = tree_complexity_table(op)
        self.calls = 0
        self.skipped = 0
        self.best = math.inf

    def complexity(self, _rng: Any, ind: Any) -> list[float]:
        return [float(self.tree_complexity(ind.Genotype))]

    def tree_complexity(self, tree: Any) -> int:
        """Table complexity of an Operon tree (a weighted variable ``w·x`` costs 3, as ``mul(w, x)``)."""
        total = 0
        for node in tree.Nodes:
            if node.IsVariable:
                total += 1 if node.Value == 1.0 else 3
            elif node.IsConstant:
                total += 1
            else:
                total += self.weights.get(node.Type, 1)
        return total

    def _evaluate(self, tree: Any, data: Any, rows: Any) -> np.ndarray:
        return np.asarray(self.op.Evaluate(self.dtable, tree, data, rows), dtype=np.float64)

    def relative(self, _rng: Any, ind: Any) -> list[float]:
        if time.perf_counter() > self.deadline:
            self.skipped += 1
            return [BAD_FITNESS]
        self.calls += 1
        tree = ind.Genotype

        def probes() -> list[tuple[np.ndarray, np.ndarray]]:
            return [(self._evaluate(tree, data, lo), self._evaluate(tree, data, hi))
                    for data, lo, hi in self.probe_sets]

        with np.errstate(all="ignore"):
            _, _, loss, _, _ = self.objective.scaled_loss(self._evaluate(tree, self.train, self.train_range),
                                                          probes if self.probe_sets else None)
        if not math.isfinite(loss):
            return [BAD_FITNESS]
        self.best = min(self.best, loss)
        return [min(float(loss), BAD_FITNESS)]


# =============================================================================== seeds


def seed_trees(op: Any, formulas: Sequence[str], features: Sequence[str], inputs: Sequence[int],
               options: Mapping[str, Any]) -> tuple[list[Any], list[str]]:
    """Operon trees of the space's seed formulas (constants ``c0…cN`` start at 1.0, as in DEAP),
    and the formulas that cannot be expressed (operator not allowed, unknown feature, too long/deep)."""
    allowed = set(options["allowed_symbols"].split(","))
    operators = [name for name, tab in OPERATORS.items() if tab.operon in allowed]
    types = node_types(op)
    hashes = {symbol_name(f): h for f, h in zip(features, inputs)}
    trees, bad = [], []
    for text in formulas:
        nodes = seed_nodes(text, features, operators, hashes)
        if nodes is None:
            bad.append(repr(text))
            continue
        tree = op.Tree(operon_postfix(op, nodes, hashes, types)).UpdateNodes()
        if tree.Length > options["max_length"] or tree.Depth > options["max_depth"]:
            bad.append(repr(text))
            continue
        trees.append(tree)
    return trees, bad


def operon_postfix(op: Any, nodes: Sequence[Node], hashes: Mapping[str, int], types: Mapping[str, Any]) -> list[Any]:
    """Postfix Operon nodes of a prefix list (Operon stores ``A op B`` as ``B, A, op``; ``mul`` of a constant
    and a variable is one weighted variable)."""
    pos = 0

    def variable(name: str, weight: float) -> Any:
        leaf = op.Node.Variable(weight)
        leaf.HashValue = hashes[name]
        leaf.CalculatedHashValue = hashes[name]
        return leaf

    def walk() -> list[Any]:
        nonlocal pos
        kind, value = nodes[pos]
        pos += 1
        if kind == VAR:
            return [variable(value, 1.0)]
        if kind == CONST:
            return [op.Node.Constant(float(value))]
        if kind != OP:
            raise StepMLError(f"{value} has no Operon node")
        if value == "mul" and pos + 1 < len(nodes) and {nodes[pos].kind, nodes[pos + 1].kind} == {CONST, VAR}:
            a, b = nodes[pos], nodes[pos + 1]
            pos += 2
            const, var = (a, b) if a.kind == CONST else (b, a)
            return [variable(var.value, float(const.value))]  # c·x is one weighted Operon variable
        args = [walk() for _ in range(OPERATORS[value].arity)]
        out = [x for arg in reversed(args) for x in arg]
        return out + [op.Node(types[OPERATORS[value].operon])]

    return walk()
