"""Error types that map onto the exit codes: 0 ok, 1 gate or constraints failed, 2 bad input."""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every error the tool raises on purpose."""

    exit_code = 2


class InputError(LeptonError):
    """Bad input or usage: one line for the user, exit code 2, no traceback."""

    exit_code = 2


class ConstraintError(LeptonError):
    """Nothing met the constraints, or a gate failed: exit code 1."""

    exit_code = 1


class NotSupported(LeptonError):
    """A backend cannot run an op or a dtype; the search skips the variant."""

    exit_code = 2
