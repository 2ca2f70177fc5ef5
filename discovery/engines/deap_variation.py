"""DEAP individuals and the variation operators of :mod:`discovery.engines.deap_engine`.

The operators are small ports of DEAP's (``genHalfAndHalf``, ``cxOnePoint``,
``mutUniform``, ``mutNodeReplacement``, ``mutInsert``, ``mutShrink``) that
draw from the run's own ``random.Random`` (structure) and
``numpy.random.Generator`` (constant values), so nothing reads or advances
the module-level ``random``. Selection is NSGA-II on (loss, complexity):
tournaments on (non-domination rank, crowding distance), survivors by
``deap.tools.selNSGA2`` over distinct trees.
"""
from __future__ import annotations

import copy
import random
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
from deap import base, gp, tools

from search_spaces.operators import OPERATORS
from search_spaces.prefix import CONST, parse_prefix

if TYPE_CHECKING:
    from discovery.engines.deap_engine import DeapSettings
    from discovery.engines.deap_trees import EvalResult
    from search_spaces.spaces import SearchSpace

__all__ = ["MUTATIONS", "Fitness", "Individual", "Variation"]

#: Mutation kinds, in the order of :attr:`DeapSettings.mutation_weights`.
MUTATIONS = ("subtree", "point", "insert", "shrink")


class Fitness(base.Fitness):
    """(loss, complexity), both minimised."""

    weights = (-1.0, -1.0)


class Individual(gp.PrimitiveTree):
    """A tree with its fitness, evaluation result and provenance."""

    def __init__(self, content: Iterable[Any]) -> None:
        super().__init__(content)
        self.fitness = Fitness()
        self.result: EvalResult | None = None
        self.provenance = ""
        self.rank = 0


class Variation:
    """Trees of one run: the primitive set, the size limits, the generators and the variation operators.

    Parameters
    ----------
    settings : DeapSettings
    space : SearchSpace
    symbols : sequence of str
        The problem's feature symbols (the primitive set's arguments, in order).
    """

    def __init__(self, settings: "DeapSettings", space: "SearchSpace", symbols: Sequence[str]) -> None:
        self.s = settings
        self.space = space
        self.symbols = tuple(symbols)
        self._symset = frozenset(self.symbols)
        self.arity = {name: OPERATORS[name].arity for name in space.operators}
        self.weight = {name: OPERATORS[name].complexity for name in space.operators}
        self.max_depth = int(space.max_depth)
        self.max_size = int(space.max_size)
        lo, hi = space.constant_range
        self.const_lo, self.const_hi = float(lo), float(hi)
        self.pset = self._primitive_set()
        self.prims = list(self.pset.primitives[self.pset.ret])
        self.args = [self.pset.mapping[sym] for sym in self.symbols]
        self.rng = random.Random(settings.seed)
        self.nprng = np.random.default_rng(settings.seed)

    def _primitive_set(self) -> gp.PrimitiveSet:
        pset = gp.PrimitiveSet("stepml", len(self.symbols))
        pset.renameArguments(**{f"ARG{i}": sym for i, sym in enumerate(self.symbols)})
        for name in self.space.operators:
            op = OPERATORS[name]
            pset.addPrimitive(op.numpy, op.arity, name=op.name)
        return pset

    # -- trees ---------------------------------------------------------------------------------
    def const(self, value: float) -> gp.Terminal:
        return gp.Terminal(float(value), False, gp.__type__)

    def tree(self, text: str) -> Individual:
        """The individual of a tree string."""
        nodes = []
        for kind, value in parse_prefix(text, self.arity, self._symset):
            nodes.append(self.const(value) if kind == CONST else self.pset.mapping[value])
        return Individual(nodes)

    def complexity(self, tree: Sequence[Any]) -> int:
        """Table complexity of a tree (leaves 1, operators their weight)."""
        return sum(self.weight[n.name] if n.arity else 1 for n in tree)

    def fits(self, tree: gp.PrimitiveTree) -> bool:
        """Within the space's height and complexity limits."""
        return tree.height <= self.max_depth and self.complexity(tree) <= self.max_size

    def leaf(self) -> gp.Terminal:
        if self.rng.random() < self.s.constant_prob:
            return self.const(self.nprng.uniform(self.const_lo, self.const_hi))
        return self.rng.choice(self.args)

    def generate(self, min_: int, max_: int, grow: bool) -> list[Any]:
        """Port of ``deap.gp.generate`` (genGrow / genFull) drawing from the run's generators."""
        ratio = len(self.args) / (len(self.args) + len(self.prims))
        height = self.rng.randint(min_, max_)
        expr: list[Any] = []
        stack = [0]
        while stack:
            depth = stack.pop()
            if depth == height or (grow and depth >= min_ and self.rng.random() < ratio):
                expr.append(self.leaf())
            else:
                prim = self.rng.choice(self.prims)
                expr.append(prim)
                stack.extend([depth + 1] * prim.arity)
        return expr

    def half_and_half(self, min_: int, max_: int) -> list[Any]:
        return self.generate(min_, max_, grow=self.rng.random() < 0.5)

    # -- variation -----------------------------------------------------------------------------
    def crossover(self, ind1: Individual, ind2: Individual) -> Individual:
        """``cxOnePoint``: ``ind1`` with a random subtree replaced by a random subtree of ``ind2``."""
        child = copy.deepcopy(ind1)
        if len(child) < 2 or len(ind2) < 2:
            return child
        i1 = self.rng.randrange(1, len(child))
        i2 = self.rng.randrange(1, len(ind2))
        child[child.searchSubtree(i1)] = ind2[ind2.searchSubtree(i2)]
        return child

    def mutate(self, ind: Individual) -> Individual:
        """One of the four mutations, chosen by ``mutation_weights``."""
        child = copy.deepcopy(ind)
        kind = self.rng.choices(MUTATIONS, weights=self.s.mutation_weights)[0]
        if kind == "subtree":  # mutUniform with genHalfAndHalf
            index = self.rng.randrange(len(child))
            child[child.searchSubtree(index)] = self.half_and_half(0, self.s.mutation_max_depth)
        elif kind == "point":  # mutNodeReplacement (the root included)
            index = self.rng.randrange(len(child))
            node = child[index]
            if node.arity == 0:
                child[index] = self.leaf()
            else:
                child[index] = self.rng.choice([p for p in self.prims if p.arity == node.arity])
        elif kind == "insert":
            self._insert(child)
        else:
            self._shrink(child)
        return child

    def _insert(self, child: Individual) -> None:
        """mutInsert: a new primitive above a node, its other arguments new subtrees."""
        index = self.rng.randrange(len(child))
        slice_ = child.searchSubtree(index)
        prim = self.rng.choice(self.prims)
        position = self.rng.randrange(prim.arity)
        new: list[Any] = [prim]
        for i in range(prim.arity):
            if i == position:
                new.extend(child[slice_])
            else:
                new.extend(self.half_and_half(0, max(0, self.s.mutation_max_depth - 1)))
        child[slice_] = new

    def _shrink(self, child: Individual) -> None:
        """mutShrink: a primitive replaced by one of its argument subtrees (the root included)."""
        prims = [i for i, node in enumerate(child) if node.arity > 0]
        if prims:
            index = self.rng.choice(prims)
            arg = self.rng.randrange(child[index].arity)
            start = index + 1
            for _ in range(arg):
                start = child.searchSubtree(start).stop
            sub = child[child.searchSubtree(start)]
            child[child.searchSubtree(index)] = sub

    def offspring(self, pop: list[Individual], generation: int, island: int) -> list[Individual]:
        """Tournament parents, then crossover / mutation / copy; over-limit children keep the parent."""
        self.rank(pop)
        parents = [self.tournament(pop) for _ in range(len(pop))]
        children = []
        for k, parent in enumerate(parents):
            r = self.rng.random()
            if r < self.s.crossover_prob + self.s.mutation_prob:
                crossover = r < self.s.crossover_prob
                mate = parents[(k + 1) % len(parents)]
                for _ in range(self.s.variation_attempts):
                    child = self.crossover(parent, mate) if crossover else self.mutate(parent)
                    if self.fits(child):
                        break
                else:
                    child = copy.deepcopy(parent)  # staticLimit: keep the parent
                if str(child) != parent.result.tree:  # type: ignore[union-attr]
                    child.result = None
                    child.fitness = Fitness()
                    child.provenance = f"deap gen {generation} island {island}"
            else:
                child = copy.deepcopy(parent)
            children.append(child)
        return children

    # -- selection -----------------------------------------------------------------------------
    @staticmethod
    def rank(pop: list[Individual]) -> None:
        for rank, front in enumerate(tools.sortNondominated(pop, len(pop))):
            tools.emo.assignCrowdingDist(front)
            for ind in front:
                ind.rank = rank

    def tournament(self, pop: list[Individual]) -> Individual:
        aspirants = [pop[self.rng.randrange(len(pop))] for _ in range(self.s.tournament_size)]
        return min(aspirants, key=lambda ind: (ind.rank, -ind.fitness.crowding_dist))

    def survive(self, individuals: list[Individual], k: int) -> list[Individual]:
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

    def migrate(self, islands: list[list[Individual]]) -> None:
        """Each island's ``migration_size`` lowest-loss individuals replace the next island's worst (a ring)."""
        m, n = self.s.migration_size, len(islands)
        emigrants = [[copy.deepcopy(ind) for ind in sorted(isl, key=lambda i: i.fitness.values)[:m]]
                     for isl in islands]
        for i in range(n):
            target = islands[(i + 1) % n]
            target[len(target) - m:] = emigrants[i]
