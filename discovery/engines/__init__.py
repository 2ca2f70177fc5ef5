"""Search engines behind one protocol, registered by their CLI name.

An engine is a :class:`SearchEngine`: ``name``, ``search(problem, mapper=None,
progress=None, checkpoint=None, resume_state=None) -> list[Candidate]`` and,
after a search, a ``stats_`` dict (generations, evaluations, wall time, …).
:data:`ENGINES` maps each CLI name to a factory taking the settings as a
mapping; engines are imported only when made.

Adding an engine: a module with a class following :class:`SearchEngine` that
measures candidates with :mod:`search_spaces.objective` and reads seeds through
:mod:`search_spaces.prefix`, plus one entry in :data:`ENGINES`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

from features.errors import StepMLError
from features.registry import Registry

if TYPE_CHECKING:
    from discovery.candidate import Candidate, Problem

__all__ = ["ENGINES", "Checkpoint", "Mapper", "Progress", "SearchEngine", "check_engines", "make_engine",
           "parse_engines"]

#: ``map``-like evaluation of a function over items, in order (:mod:`discovery.engines.parallel`).
Mapper = Callable[..., Iterable[Any]]
#: ``progress(generation, best_loss, front_size, elapsed_s[, best_val_loss])`` after a generation.
Progress = Callable[..., None]
#: ``checkpoint(state)``: a JSON-ready state to continue from.
Checkpoint = Callable[[dict[str, Any]], None]


@runtime_checkable
class SearchEngine(Protocol):
    """What every engine provides (DEAP, Operon, PySR)."""

    name: str
    stats_: dict[str, Any]

    def search(self, problem: "Problem", mapper: Mapper | None = None, progress: Progress | None = None,
               checkpoint: Checkpoint | None = None,
               resume_state: Mapping[str, Any] | None = None) -> list["Candidate"]:
        """Search ``problem``; the Pareto set (training loss × complexity) found, by complexity."""
        ...  # pragma: no cover - protocol


def _deap(settings: Mapping[str, Any]) -> SearchEngine:
    from discovery.engines.deap_engine import DeapEngine, DeapSettings

    return DeapEngine(DeapSettings(**settings))


def _operon(settings: Mapping[str, Any]) -> SearchEngine:
    from discovery.engines.operon_engine import OperonEngine, OperonSettings

    return OperonEngine(OperonSettings(**settings))


def _pysr(settings: Mapping[str, Any]) -> SearchEngine:
    from discovery.engines.pysr_engine import PySREngine

    return PySREngine(settings)


def _check_pysr() -> None:
    from discovery.engines.pysr_engine import check_available

    check_available()


#: CLI name → factory taking a mapping of settings.
ENGINES: Registry[Callable[[Mapping[str, Any]], SearchEngine]] = Registry(
    "engine", lambda: {"deap": _deap, "operon": _operon, "pysr": _pysr})
#: Engines that need something outside Python (checked before a run creates anything).
_AVAILABILITY: dict[str, Callable[[], None]] = {"pysr": _check_pysr}


def make_engine(name: str, settings: Mapping[str, Any]) -> SearchEngine:
    """Instantiate an engine by CLI name; an unknown name lists the valid ones."""
    return ENGINES.get(name)(settings)


def parse_engines(spec: str) -> list[str]:
    """``deap`` or ``deap,operon`` → validated list of names."""
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise StepMLError(f"no engine given; valid: {', '.join(ENGINES)}")
    for name in names:
        ENGINES.get(name)
    if len(set(names)) != len(names):
        raise StepMLError(f"engine list {spec!r} names an engine twice")
    return names


def check_engines(names: Iterable[str]) -> None:
    """Raise a one-line :class:`StepMLError` if an engine cannot run here (PySR without Julia)."""
    for name in names:
        if name in _AVAILABILITY:
            _AVAILABILITY[name]()
