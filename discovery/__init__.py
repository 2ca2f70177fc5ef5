"""StepML Discovery: closed-form step-time formulas for LLM inference servers.

The Python API (imported on first use, so ``import discovery`` does no work)::

    from discovery import StepTimeRegressor, run_search

    model = StepTimeRegressor(space="dense", generations=10).fit(X, y)   # a scikit-learn estimator
    model.equations_, model.sympy(), model.latex(), model.predict(X)

    result = run_search(space="moe", generations=5)       # what `python -m discovery.search` does
    result.run_dir, result.front, result.pick("best")
"""
from __future__ import annotations

from typing import Any

__all__ = ["SearchConfig", "SearchResult", "StepTimeRegressor", "run_search"]

_EXPORTS = {"SearchConfig": "discovery.config", "SearchResult": "discovery.pipeline",
            "run_search": "discovery.pipeline", "StepTimeRegressor": "discovery.regressor"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'discovery' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
