"""Errors that describe bad user input (config, policy, checkpoint, data path).

The CLI turns an :class:`InputError` into one line on stderr and exit status 2; any other
exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user. The message is one line that names the offending field or file."""


class PolicyError(InputError):
    """A policy that is malformed or inconsistent with its base architecture."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: its first line, except for an exception a DataLoader
    worker re-raised in the main process, whose message holds the worker's traceback and ends
    with the original message."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in lines[1]:
        return lines[-1].split("Error: ", 1)[-1] if ": " in lines[-1] else lines[-1]
    return lines[0]
