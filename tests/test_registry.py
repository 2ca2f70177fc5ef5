"""The one registry helper, and the four registries built on it."""
from __future__ import annotations

import pytest

from features.errors import StepMLError
from features.registry import Registry


def test_registry_is_built_once_on_first_use_and_lists_valid_names():
    calls = []

    def build():
        calls.append(1)
        return [("b", 2), ("a", 1)]

    reg = Registry("widget", build)
    assert calls == []  # nothing at construction (no work at import time)
    assert reg.get("a") == 1 and reg.names() == ("b", "a") and list(reg) == ["b", "a"] and len(reg) == 2
    assert "a" in reg and reg["b"] == 2 and dict(reg.items()) == {"b": 2, "a": 1}
    with pytest.raises(StepMLError, match=r"^unknown widget 'c'; valid: b, a$"):
        reg.get("c")
    assert calls == [1]


def test_a_name_declared_twice_is_an_error():
    with pytest.raises(StepMLError, match="declared twice"):
        Registry("widget", lambda: [("a", 1), ("a", 2)]).names()


@pytest.mark.parametrize("lookup, message", [
    ("discovery.engines:make_engine", "unknown engine 'x'; valid: deap, operon, pysr"),
    ("search_spaces.spaces:get_space", "unknown search space 'x'; valid: dense, moe, roofline, physics, kernel, linear"),
    ("features.catalog:get_feature", "unknown feature 'x'; valid: prefill_tokens"),
    ("evaluation.baselines:make_baseline", "unknown baseline 'x'; valid: naive, blackbox"),
])
def test_every_registry_gives_the_same_error(lookup, message):
    import importlib

    module, name = lookup.split(":")
    fn = getattr(importlib.import_module(module), name)
    with pytest.raises(StepMLError, match=message):
        fn("x", {}) if name == "make_engine" else fn("x")


def test_engines_follow_the_protocol():
    from discovery.engines import ENGINES, SearchEngine, make_engine

    for name in ENGINES:
        engine = make_engine(name, {"generations": 2})
        assert isinstance(engine, SearchEngine) and engine.name == name
