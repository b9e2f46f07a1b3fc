"""The one exception type the command lines turn into a one-line message and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class TliError(Exception):
    """A user-facing error (bad input, impossible setting): printed as one line, no traceback."""


def run_command(prog: str, command: Callable[[], object]) -> int:
    """Run `command`: 0, or for a TliError (also one raised inside a Ray worker) one line on stderr and 2."""
    try:
        command()
    except TliError as error:
        cause = getattr(error, "cause", None)  # a Ray task error carries the worker's exception
        message = str(cause if isinstance(cause, TliError) else error)
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0
