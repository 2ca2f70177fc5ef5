"""Atomic file writing: a reader never sees a half-written results file.

Files are created with the usual permissions (``0666`` minus the umask, so
``0644`` under the common umask ``022``): results and exports are meant to be
read by others.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pandas as pd


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never follow or reuse somebody's file; mode 0666 & ~umask, as open() would give.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` if it is (or can be created as) a folder this process may write into.

    Call it before long work whose results go to ``path``, so a read-only or
    wrong ``--out`` fails at once with one line instead of after the work.

    Raises
    ------
    StepMLError
        When ``path`` is an existing file, or it (or its nearest existing
        parent, when it does not exist yet) is not a writable folder.
    """
    from features.errors import StepMLError

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise StepMLError(f"{what} {folder} is an existing file, not a folder")
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise StepMLError(f"{what} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == folder else f" ({probe} is not writable)"
        raise StepMLError(f"{what} {folder} is not writable{where}")
    return folder


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable bytes for equal input)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write a DataFrame as CSV or parquet (by suffix) atomically."""
    target = Path(path)
    if target.suffix == ".parquet":
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return atomic_write_bytes(target, buffer.getvalue())
    return atomic_write_text(target, frame.to_csv(index=False, lineterminator="\n"))


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars made plain and non-finite floats made ``None`` (strict JSON)."""
    import math

    import numpy as np

    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a missing file or malformed JSON is a one-line :class:`StepMLError`."""
    from features.errors import StepMLError

    path = Path(path)
    if not path.is_file():
        raise StepMLError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StepMLError(f"{path}: malformed JSON ({exc})") from None
