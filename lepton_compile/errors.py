"""Error types that map onto exit codes: 2 for bad input or usage (the CLI maps the rest)."""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every error the tool raises on purpose."""

    exit_code = 2


class InputError(LeptonError):
    """Bad input or usage: one line for the user, exit code 2, no traceback."""

    exit_code = 2


class ClusterLost(InputError):
    """The cluster the run's work went to is gone: the run stops (exit code 2), the rest of a
    fleet with it, and what was not finished is not written."""

    # Read by the measurement protocol, which records other errors against the variant.
    stops_the_run = True


class NotSupported(LeptonError):
    """A backend cannot run an op or a dtype; the search skips the variant."""

    exit_code = 2
