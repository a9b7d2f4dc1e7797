"""Stand-ins for a stage process's main function, for supervisor tests: each ends the way
a real decoder or worker can end (finished, failed on user input, crashed)."""

from __future__ import annotations

from pipeline.errors import UserError
from pipeline.exitcodes import ExitCode


def finishes() -> int:
    return ExitCode.OK


def bad_input() -> int:
    raise UserError("camera door: model ghost: cannot import 'nowhere'")


def fails() -> int:
    return ExitCode.FAILED
