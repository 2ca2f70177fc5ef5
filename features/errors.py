"""The one exception type that reaches users as a one-line message, and one-line warnings."""
from __future__ import annotations

import sys


class StepMLError(Exception):
    """A problem with the user's input, reported as one line and exit status 2.

    Raise it with a message that names the problem (file, line, column,
    value). Command-line entry points catch it through
    :func:`features.cli.run` and never show a traceback for it.
    """


def warn(message: str) -> None:
    """Print ``warning: <message>`` as one line on stderr.

    For input that is accepted but deserves a word (skipped lines, a column map
    whose hardware does not match the file's path): the user sees it, the
    results stay correct.
    """
    print("warning: " + " ".join(str(message).split()), file=sys.stderr)
