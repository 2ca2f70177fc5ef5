"""Search engines behind one interface, registered by their CLI name.

An engine has ``name`` and ``search(problem, mapper=None, progress=None,
checkpoint=None, resume_state=None) -> list[Candidate]``; after a search its
``stats_`` dict holds generations, evaluations and wall time.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

from features.errors import StepMLError


def _deap(settings: dict[str, Any]) -> Any:
    from discovery.engines.deap_engine import DeapEngine, DeapSettings

    return DeapEngine(DeapSettings(**settings))


def _operon(settings: dict[str, Any]) -> Any:
    from discovery.engines.operon_engine import OperonEngine, OperonSettings

    return OperonEngine(OperonSettings(**settings))


def _pysr(settings: dict[str, Any]) -> Any:
    from discovery.engines.pysr_engine import PySREngine

    return PySREngine(settings)


#: CLI name → factory taking a dict of settings.
ENGINES: Mapping[str, Callable[[dict[str, Any]], Any]] = MappingProxyType({
    "deap": _deap,
    "operon": _operon,
    "pysr": _pysr,
})


def make_engine(name: str, settings: dict[str, Any]) -> Any:
    """Instantiate an engine by CLI name; an unknown name lists the valid ones."""
    if name not in ENGINES:
        raise StepMLError(f"unknown engine '{name}'; valid: {', '.join(ENGINES)}")
    return ENGINES[name](settings)


def parse_engines(spec: str) -> list[str]:
    """``deap`` or ``deap,operon`` → validated list of names."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise StepMLError(f"no engine given; valid: {', '.join(ENGINES)}")
    for name in names:
        if name not in ENGINES:
            raise StepMLError(f"unknown engine '{name}'; valid: {', '.join(ENGINES)}")
    return names


def check_engines(names: list[str]) -> None:
    """Raise a one-line :class:`StepMLError` if an engine cannot run here (PySR without Julia)."""
    if "pysr" in names:
        from discovery.engines.pysr_engine import check_available

        check_available()
