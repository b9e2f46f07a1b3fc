"""The one exception type the CLI turns into a one-line message and exit code 2."""


class TliError(Exception):
    """A user-facing error (bad input, impossible setting): printed as one line, no traceback."""
