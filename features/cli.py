"""Shared command-line plumbing: one-line errors and exit status 2.

Every ``python -m ...`` entry point of the project wraps its ``main`` in
:func:`run`, so bad input is reported the same way everywhere.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence

from features.errors import StepMLError

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    """Raise a :class:`StepMLError` carrying ``message``."""
    raise StepMLError(message)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
        prog: str | None = None) -> NoReturn:
    """Run ``main(argv)`` and exit with its status.

    :class:`StepMLError`, a missing file, and a file or folder that cannot be
    written or read (permissions, an existing file where a folder is needed, a
    full disk) are printed as a single line ``<prog>: error: <message>`` on
    stderr with exit status 2. ``KeyboardInterrupt`` exits with 130 without a
    traceback.
    """
    name = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "stepml")
    try:
        status = main(argv)
    except StepMLError as exc:
        _one_line(name, str(exc))
        sys.exit(EXIT_USAGE)
    except FileNotFoundError as exc:
        _one_line(name, f"file not found: {exc.filename or exc}")
        sys.exit(EXIT_USAGE)
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:  # permission denied, not a directory, read-only or full file system
        _one_line(name, os_error_message(exc))
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(status or 0))


def os_error_message(exc: OSError) -> str:
    """``<reason>: <file>`` for an :class:`OSError` (``Permission denied: results/x``)."""
    reason = exc.strerror or type(exc).__name__
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
    return f"cannot access {where}: {reason}" if where else f"{reason} ({exc})"


def _one_line(prog: str, message: str) -> None:
    text = " ".join(str(message).split())
    print(f"{prog}: error: {text}", file=sys.stderr)
