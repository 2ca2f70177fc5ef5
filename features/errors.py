"""The one exception type that reaches users as a one-line message, and one-line warnings."""
from __future__ import annotations

import sys


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: for messages quoting a library."""
    return " ".join(str(text).split())


class StepMLError(Exception):
    """A problem with the user's input, reported as one line and exit status 2.

    Raise it with a message that names the problem (file, line, column,
    value). Command-line entry points catch it through
    :func:`features.cli.run` and never show a traceback for it. The message
    is kept on one line (a library's multi-line text quoted in it is joined).
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(message), *args)


def warn(message: str) -> None:
    """Print ``warning: <message>`` as one line on stderr.

    For input that is accepted but deserves a word (skipped lines, a column map
    whose hardware does not match the file's path): the user sees it, the
    results stay correct.
    """
    print("warning: " + one_line(message), file=sys.stderr)
