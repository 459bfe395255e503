"""Error types that map onto exit codes: 2 for bad input or usage (the CLI maps the rest)."""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every error the tool raises on purpose."""

    exit_code = 2


class InputError(LeptonError):
    """Bad input or usage: one line for the user, exit code 2, no traceback."""

    exit_code = 2


class NotSupported(LeptonError):
    """A backend cannot run an op or a dtype; the search skips the variant."""

    exit_code = 2
