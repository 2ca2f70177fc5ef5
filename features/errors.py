"""The one exception type that reaches users as a one-line message."""
from __future__ import annotations


class StepMLError(Exception):
    """A problem with the user's input, reported as one line and exit status 2.

    Raise it with a message that names the problem (file, line, column,
    value). Command-line entry points catch it through
    :func:`features.cli.run` and never show a traceback for it.
    """
