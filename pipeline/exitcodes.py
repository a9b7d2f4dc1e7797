"""Exit codes shared by the CLI, the stage processes and the supervisor that reads them.

A stage process (decoder, worker) tells its supervisor what to do next by how it exits:
``OK`` (finished: a file camera reached its end, or it was asked to stop), ``FAILED``
(a permanent problem with the user's input — a bad file, a bad model spec —
restarting would only repeat it), ``TEMPFAIL`` (something outside it, such as Redis,
is away: restart with backoff). Any other code is a crash and is restarted too.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USER_ERROR = 1  # the CLI: bad input, printed as one line 'mlink: error: ...'
    FAILED = 2  # a stage: permanent failure, do not restart
    TEMPFAIL = 75  # sysexits EX_TEMPFAIL: restart me later
    INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT)


def should_restart(code: int | None) -> bool:
    """Whether a stage process that exited with ``code`` is to be started again."""
    return code not in (ExitCode.OK, ExitCode.FAILED)
