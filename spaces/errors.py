"""Errors that describe bad user input (config, policy, checkpoint, data path).

The CLI turns an :class:`InputError` into one line on stderr and exit status 2; any other
exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user. The message is one line that names the offending field or file."""


class PolicyError(InputError):
    """A policy that is malformed or inconsistent with its base architecture."""
