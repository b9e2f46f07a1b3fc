"""The one exception type the command lines turn into a one-line message and exit code 2."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

REFUSALS = {  # what the machine says to a path a user gave: one line, never a traceback
    *(errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM),
    *(errno.ENOTDIR, errno.EISDIR, errno.ELOOP),
}


class TliError(Exception):
    """A user-facing error (bad input, impossible setting): printed as one line, no traceback."""

    exit_code = 2


def run_command(prog: str, command: Callable[[], object]) -> int:
    """Run `command`: 0, or for a TliError (also one raised inside a Ray worker) one line on stderr and its exit
    code (2). An OSError the machine raises (disk full, file too large, read-only, name too long, no permission)
    is one line too, naming the path and the reason; Ctrl-C is one line and 130, the shell's code for it.
    """
    try:
        command()
    except TliError as error:
        cause = getattr(error, "cause", None)  # a Ray task error carries the worker's exception
        error = cause if isinstance(cause, TliError) else error
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        if error.errno not in REFUSALS:
            raise
        where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
        print(f"{prog}: error: {where or 'a file'}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
