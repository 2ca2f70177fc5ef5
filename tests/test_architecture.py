"""Structure rules checked on the source: engines share nothing private, dependencies point one way."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINES = sorted((ROOT / "discovery" / "engines").glob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in a file, at any depth (function-level imports too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def family(module: str) -> str:
    """``deap`` for deap_engine / deap_trees / deap_variation: an engine and its helper modules."""
    return module.rsplit(".", 1)[-1].split("_")[0]


@pytest.mark.parametrize("path", ENGINES, ids=lambda p: p.stem)
def test_engine_modules_import_nothing_private_from_each_other(path):
    me = f"discovery.engines.{path.stem}"
    for module, names in imports(path):
        if module.startswith("discovery.engines.") and module != me:
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{me} imports private {private} from {module}"


@pytest.mark.parametrize("path", [p for p in ENGINES if p.stem != "__init__"], ids=lambda p: p.stem)
def test_engines_import_no_other_engine(path):
    me = f"discovery.engines.{path.stem}"
    for module, _ in imports(path):
        if module.startswith("discovery.engines.") and module.rsplit(".", 1)[-1] not in ("parallel",):
            assert family(module) == family(me), f"{me} imports {module}"


def test_replay_does_not_import_review():
    for path in (ROOT / "evaluation").glob("*.py"):
        for module, _ in imports(path):
            assert module not in ("discovery.review", "discovery.export", "discovery.search"), \
                f"{path.name} imports {module}: evaluation must not depend on the CLIs above it"


def test_pysr_works_without_operon(tmp_path):
    """With Operon's modules and pyoperon unimportable, PySR's translation and import still work."""
    code = """
import sys
for name in ("pyoperon", "discovery.engines.operon_engine", "discovery.engines.operon_translate"):
    sys.modules[name] = None
import numpy as np
from discovery.candidate import Problem
from discovery.engines.pysr_engine import equations_to_candidates, pysr_kwargs
from discovery.pysr_import import read_pysr_table
from search_spaces.spaces import get_space
space = get_space("linear")
feats = ("prefill_tokens", "decode_tokens")
x = np.linspace(1, 100, 50)
problem = Problem(space, feats, {"prefill_tokens": x, "decode_tokens": x[::-1]}, 1000 + 3 * x, None,
                  {"prefill_tokens": x, "decode_tokens": x[::-1]}, 1000 + 3 * x, None)
assert pysr_kwargs(space, feats)["guesses"]
cands, skipped = equations_to_candidates(["1000.0 + 3.0*x0", "x1 *"], problem, "pysr", "test")
assert len(cands) == 1 and skipped["unparsable"] == 1 and cands[0].loss < 1e-12
open(sys.argv[1], "w").write("Complexity,Loss,Equation\\n5,0.1,1000.0 + 3.0*prefill_tokens\\n")
table = read_pysr_table(sys.argv[1], feats)
assert table.candidates(problem)[0].loss < 1e-12
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hof.csv")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
