"""Capped exponential backoff with jitter: the one retry schedule every stage uses.

Pure: the random generator is injected, and :meth:`Backoff.wait` takes the sleep
function, so tests check the schedule without sleeping. Jitter only shortens a
delay (drawn from ``(nominal * (1 - jitter), nominal]``), so ``maximum`` is a hard
upper bound while many processes retrying together still spread out.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable


def backoff_delay(attempt: int, initial: float, maximum: float, factor: float, jitter: float, u: float) -> float:
    """Delay before retry number ``attempt`` (>= 1): ``min(maximum, initial * factor**(attempt-1))``
    shortened by ``jitter * u`` of itself, ``u`` a uniform draw in [0, 1)."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    try:
        nominal = initial * factor ** (attempt - 1)
    except OverflowError:  # e.g. attempt 5000 of an endless reconnect loop
        nominal = maximum
    return min(nominal, maximum) * (1.0 - jitter * u)


@dataclass
class Backoff:
    initial: float = 0.1
    maximum: float = 2.0
    factor: float = 2.0
    jitter: float = 0.3
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0  # delays handed out since the last reset

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum:
            raise ValueError("backoff: need 0 <= initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff: factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff: jitter must be in [0, 1)")

    def next_delay(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, self.initial, self.maximum, self.factor, self.jitter, self.rng.random())

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> float:
        d = self.next_delay()
        sleep(d)
        return d

    def reset(self) -> None:
        self.attempt = 0
