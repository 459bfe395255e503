"""The passes' own error type, and an error as one line of text.

A pass that is handed bad data (calibration samples that do not fit the model) raises
``PassInputError``: the fault is the caller's input, not the pass. The passes know nothing of
the driver; the driver maps this error to its own bad-input error (exit code 2).
"""

from __future__ import annotations

# Longest line kept: a message past this says nothing more that fits on a terminal line.
MAX_CHARS = 300


class PassInputError(Exception):
    """Bad input to a pass (not a bug in it): its message is one line for the user."""


def one_line(error: BaseException | str, limit: int = MAX_CHARS) -> str:
    """The first non-empty line of ``error``, trimmed, at most ``limit`` characters.

    An exception with no message is named by its type.
    """
    text = str(error).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first and isinstance(error, BaseException):
        first = type(error).__name__
    return first[:limit]
