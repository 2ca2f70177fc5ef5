"""Feature names as formula symbols: ``batch.prefill_tokens`` ↔ ``batch__prefill_tokens``.

Feature names contain dots and are not Python identifiers, so sympy symbols
(and the variables of generated code, PySR's ``variable_names``) are named
with :func:`symbol_name`; :func:`feature_from_symbol` reverses it.
"""
from __future__ import annotations

import keyword
from typing import TYPE_CHECKING

from features.errors import StepMLError

if TYPE_CHECKING:
    import sympy

__all__ = ["feature_from_symbol", "symbol_name"]


def symbol_name(feature: str) -> str:
    """The safe identifier naming a feature in sympy and generated code.

    Every ``.`` becomes ``__``: ``"batch.prefill_tokens"`` →
    ``"batch__prefill_tokens"``. :func:`feature_from_symbol` reverses it.

    Parameters
    ----------
    feature : str
        Feature (column) name: dot-separated segments of letters, digits and
        ``_``.

    Returns
    -------
    str
        A Python identifier that is not a keyword.

    Raises
    ------
    StepMLError
        If the name cannot be mapped reversibly: empty, leading/trailing or
        doubled dots, ``__`` or ``_`` next to ``.`` (ambiguous after
        encoding), or characters that make no identifier.
    """
    if not isinstance(feature, str) or not feature:
        raise StepMLError(f"feature name must be a non-empty string, got {feature!r}")
    safe = feature.replace(".", "__")
    if (
        feature.startswith(".")
        or feature.endswith(".")
        or ".." in feature
        or safe.replace("__", ".") != feature
        or not safe.isascii()
        or not safe.isidentifier()
        or keyword.iskeyword(safe)
    ):
        raise StepMLError(
            f"feature name {feature!r} cannot be a formula symbol: use dot-separated "
            "segments of ASCII letters, digits and single '_' (no '__', no '_' next to "
            "'.', not starting with a digit)"
        )
    return safe


def feature_from_symbol(name: str | sympy.Symbol) -> str:
    """The feature name behind a symbol made by :func:`symbol_name`.

    Parameters
    ----------
    name : str or sympy.Symbol
        Safe identifier, e.g. ``"batch__prefill_tokens"``.

    Returns
    -------
    str
        The feature name, e.g. ``"batch.prefill_tokens"``.

    Raises
    ------
    StepMLError
        If ``name`` is not the :func:`symbol_name` of any feature.
    """
    import sympy
    text = name.name if isinstance(name, sympy.Symbol) else name
    if not isinstance(text, str):
        raise StepMLError(f"symbol name must be a string, got {name!r}")
    feature = text.replace("__", ".")
    try:
        ok = symbol_name(feature) == text
    except StepMLError:
        ok = False
    if not ok:
        raise StepMLError(f"{text!r} is not a feature symbol name")
    return feature
