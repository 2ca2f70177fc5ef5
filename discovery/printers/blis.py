"""The overlay folder BLIS is built with: the StepML model, its tests, and a small checked patch.

``../shared/blis/build.sh OUT [OVERLAY_DIR]`` copies an overlay over a
temporary copy of BLIS's source snapshot before building. :func:`write_overlay`
writes one::

    sim/latency/stepml.go        the StepML latency model (discovery.printers.go_source)
    sim/latency/stepml_test.go   its invariants and test vectors (discovery.printers.go_tests)
    sim/latency/latency.go       the snapshot's file + the factory branch for backend "stepml"
    sim/bundle.go                the snapshot's file + "stepml" among the valid backend names
    cmd/root.go                  the snapshot's file + "stepml" resolves the model and hardware
                                 configuration like BLIS's analytical backends do
    STEPML_OVERLAY.md            what the overlay holds and the unified diff of the three patches

The patched files are produced by :data:`EDITS`: exact text replacements,
each of which must match the snapshot exactly once (BLIS commit f90a1e3);
a snapshot that differs gives a one-line error instead of a wrong build. The
``cmd/root.go`` edit is needed because only the backends it names get a
parsed ``ModelConfig``/``HWConfig``: without it the StepML model would see an
empty configuration.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from features.errors import StepMLError
from features.io import atomic_write_text

__all__ = ["Edit", "EDITS", "BACKEND", "blis_home", "check_overlay_target", "patched_files", "write_overlay"]

#: The backend name BLIS's ``--latency-model`` takes for the StepML model.
BACKEND = "stepml"


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path`` of the snapshot."""

    path: str
    old: str
    new: str
    why: str


EDITS: tuple[Edit, ...] = (
    Edit("sim/bundle.go",
         '"trained-physics": true}',
         f'"trained-physics": true, "{BACKEND}": true}}',
         "accept --latency-model stepml"),
    Edit("sim/latency/latency.go",
         "\tdefault:\n\t\treturn nil, fmt.Errorf(\"latency model: unknown backend %q; valid options: %s\",",
         f'\tcase "{BACKEND}":\n'
         "\t\t// StepML Discovery's exported formula (stepml.go, generated).\n"
         "\t\tmodel, err := NewStepMLModel(hw)\n"
         "\t\tif err != nil {\n\t\t\treturn nil, err\n\t\t}\n"
         "\t\tmodel.adapterCost = o.adapterCost\n"
         "\t\treturn model, nil\n"
         "\tdefault:\n\t\treturn nil, fmt.Errorf(\"latency model: unknown backend %q; valid options: %s\",",
         "construct the StepML model for backend stepml"),
    Edit("cmd/root.go",
         '\tif backend == "roofline" {\n\t\tvar missing []string',
         f'\tif backend == "roofline" || backend == "{BACKEND}" {{\n\t\tvar missing []string',
         "stepml needs --hardware and --tp and resolves the model and hardware config paths like roofline"),
    Edit("cmd/root.go",
         '\tif backend == "roofline" || backend == "trained-physics" {\n\t\thfPath :=',
         f'\tif backend == "roofline" || backend == "trained-physics" || backend == "{BACKEND}" {{\n\t\thfPath :=',
         "stepml gets the parsed ModelConfig and HWConfig (and KV/max-model-len auto-derivation)"),
)


def blis_home() -> Path:
    """The shared BLIS folder (``build.sh``, ``src/``).

    ``$STEPML_BLIS`` if set, else ``../shared/blis`` beside the project, else
    ``blis`` beside the data root (``$STEPML_DATA/..``).
    """
    from features.metadata import default_data_root

    env = os.environ.get("STEPML_BLIS")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[3] / "shared" / "blis"
    if beside.is_dir():
        return beside
    return default_data_root().parent / "blis"


def patched_files(src: Path) -> dict[str, tuple[str, str]]:
    """``path → (snapshot text, patched text)`` of every file :data:`EDITS` touches.

    Raises
    ------
    StepMLError
        If a file is missing or an edit's text does not occur exactly once.
    """
    out: dict[str, tuple[str, str]] = {}
    for edit in EDITS:
        file = src / edit.path
        if edit.path not in out:
            if not file.is_file():
                raise StepMLError(f"BLIS snapshot {src}: {edit.path} not found (expected commit f90a1e3)")
            text = file.read_text(encoding="utf-8")
            out[edit.path] = (text, text)
        original, current = out[edit.path]
        count = current.count(edit.old)
        if count != 1:
            first = edit.old.strip().splitlines()[0]
            raise StepMLError(f"BLIS snapshot {src}: {edit.path} holds {first!r} {count} times, expected once "
                              "(the snapshot is not commit f90a1e3); cannot patch it")
        out[edit.path] = (original, current.replace(edit.old, edit.new))
    return out


def _overlay_readme(patches: Mapping[str, tuple[str, str]], name: str) -> str:
    lines = [f"# StepML overlay for BLIS: `{name}`", "",
             "Build: `../shared/blis/build.sh OUT_BINARY THIS_FOLDER`; run with `blis run --latency-model stepml`.",
             "", "Generated by `python -m discovery.export ... --blis DIR`; do not edit.", "", "## Patches", ""]
    lines += [f"- `{e.path}`: {e.why}" for e in EDITS]
    lines += ["", "```diff"]
    for path, (old, new) in sorted(patches.items()):
        lines += [d.rstrip("\n") for d in difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                                 f"a/{path}", f"b/{path}", n=2)]
    lines += ["```", ""]
    return "\n".join(lines)


def check_overlay_target(out_dir: Path) -> None:
    """Refuse an overlay folder that already holds an overlay (never overwrite one)."""
    if (Path(out_dir) / "sim" / "latency" / "stepml.go").exists():
        raise StepMLError(f"{out_dir} already holds a BLIS overlay; choose another --blis folder")


def write_overlay(out_dir: Path, model_source: str, test_source: str, name: str, src: Path | None = None) -> Path:
    """Write the overlay folder (see the module docstring); return it.

    Raises
    ------
    StepMLError
        If the snapshot cannot be patched (nothing is written then) or
        ``out_dir`` already holds an overlay.
    """
    src = Path(src) if src else blis_home() / "src"
    if not src.is_dir():
        raise StepMLError(f"BLIS source snapshot not found at {src}; set STEPML_BLIS to the shared blis folder")
    patches = patched_files(src)
    out_dir = Path(out_dir)
    check_overlay_target(out_dir)
    files = {"sim/latency/stepml.go": model_source, "sim/latency/stepml_test.go": test_source,
             **{p: new for p, (_, new) in patches.items()}, "STEPML_OVERLAY.md": _overlay_readme(patches, name)}
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return out_dir
