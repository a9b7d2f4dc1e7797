"""User-facing errors (raised for bad input, printed as one line by the CLI) and the
one way stage processes say something to the user (a line on stderr)."""

import sys


class UserError(Exception):
    """A problem with the user's input (file, key, camera, model...).

    The message names the offending thing; the CLI prints it as a single line
    and exits non-zero instead of showing a traceback.
    """


def say_stderr(msg: str) -> None:
    """One line for the user on stderr (stages never print to stdout: it carries records)."""
    print(msg, file=sys.stderr, flush=True)
