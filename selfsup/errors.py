"""Errors a user can fix. Entry points print them as one line and exit non-zero, without a traceback."""
from __future__ import annotations

import sys
from typing import Callable


class SelfsupError(Exception):
    """A problem with the user's input that selfsup can name together with its fix."""


class ConfigError(SelfsupError, ValueError):
    """An invalid or inconsistent configuration."""


class DataError(SelfsupError):
    """Data that is missing, empty or unreadable."""


class NonFiniteLoss(SelfsupError):
    """The loss (or a weight) became NaN or infinite."""


class Stopped(SelfsupError):
    """The run stopped on a signal before its end, its checkpoint saved. Not the user's mistake, but the process
    must not exit 0: a scheduler would record a preempted job as finished and never run it again."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def one_line(error: BaseException) -> str:
    """The error's own message on one line, also when a DataLoader worker wrapped it in a traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch.utils.data re-raises worker errors with the traceback as message
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def report(error: SelfsupError) -> int:
    """Print a user error as `error: <one line>` on stderr; returns the exit code of entry points: 2, or a
    stopped run's status (128 + the signal's number, as a shell reports a process a signal ended)."""
    if isinstance(error, Stopped):
        print(f"stopped: {one_line(error)}", file=sys.stderr)
        return error.status
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2


def exit_code(command: Callable[[], object]) -> int:
    """Run a command line tool's work: 0, or the code of `report` for a SelfsupError."""
    try:
        command()
    except SelfsupError as e:
        return report(e)
    return 0
