"""One registry helper: a read-only, lazily built mapping of CLI names with one error for unknown names.

Engines, search spaces, features and baselines are each one :class:`Registry`::

    SPACES = Registry("search space", _declare)      # _declare() → {name: space} or [(name, space), ...]
    SPACES.get("moe")                                 # the space
    SPACES.get("nope")   # StepMLError: unknown search space 'nope'; valid: dense, moe, roofline, linear
    SPACES.names()                                    # ('dense', 'moe', 'roofline', 'linear')

Nothing is built at import time: the entries are made on first use and kept.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Generic, Iterable, Iterator, TypeVar, Union

from features.errors import StepMLError

__all__ = ["Registry"]

T = TypeVar("T")
Entries = Union[Mapping[str, T], Iterable[tuple[str, T]]]


class Registry(Mapping[str, T], Generic[T]):
    """A read-only ``name → item`` mapping built on first use (see the module docstring).

    Parameters
    ----------
    what : str
        What an entry is, for error messages (``"engine"``, ``"search space"``).
    build : callable
        Returns the entries, in the order :meth:`names` lists them, as a mapping
        or as ``(name, item)`` pairs. Called once.
    """

    def __init__(self, what: str, build: Callable[[], Entries[T]]) -> None:
        self.what = what
        self._build = build
        self._items: dict[str, T] | None = None

    def _entries(self) -> dict[str, T]:
        if self._items is None:
            built = self._build()
            pairs = built.items() if isinstance(built, Mapping) else built
            items: dict[str, T] = {}
            for name, item in pairs:
                if name in items:
                    raise StepMLError(f"{self.what} '{name}' is declared twice")
                items[name] = item
            self._items = items
        return self._items

    def get(self, name: str) -> T:  # type: ignore[override]
        """The entry called ``name``; an unknown name is a one-line error listing the valid ones
        (unlike ``dict.get``, there is no default: a name from a user is either valid or an error).

        Raises
        ------
        StepMLError
            ``unknown <what> '<name>'; valid: a, b, c``.
        """
        items = self._entries()
        if not isinstance(name, str) or name not in items:
            raise StepMLError(f"unknown {self.what} '{name}'; valid: {', '.join(items)}")
        return items[name]

    def names(self) -> tuple[str, ...]:
        """Every name, in declaration order."""
        return tuple(self._entries())

    def __getitem__(self, name: str) -> T:
        return self._entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries()) if self._items is not None else '<not built>'})"
