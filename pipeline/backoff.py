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
        nominal = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return nominal * (1.0 - self.jitter * self.rng.random())

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> float:
        d = self.next_delay()
        sleep(d)
        return d

    def reset(self) -> None:
        self.attempt = 0
