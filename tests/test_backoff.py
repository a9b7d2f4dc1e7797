"""The one retry schedule (pipeline.backoff) and the Redis outage reporter, with injected
randomness, sleep and clock; and the worker retrying a Redis that is away without sleeping."""

from __future__ import annotations

import random

import pytest
import redis
from redis_private import free_port

from pipeline.backoff import Backoff, backoff_delay
from pipeline.redis_conn import Outage
from stages.scheduler import Worker


class FixedRandom(random.Random):
    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize(
    "attempt, u, expected",
    [(1, 0.0, 0.1), (2, 0.0, 0.2), (3, 0.0, 0.4), (5, 0.0, 1.6), (6, 0.0, 2.0), (60, 0.0, 2.0), (5000, 0.0, 2.0),  # capped
     (1, 0.5, 0.1 * (1 - 0.3 * 0.5)), (6, 0.999, 2.0 * (1 - 0.3 * 0.999))],  # jitter only shortens
)
def test_backoff_delay_table(attempt: int, u: float, expected: float) -> None:
    assert backoff_delay(attempt, 0.1, 2.0, 2.0, 0.3, u) == pytest.approx(expected)


def test_backoff_sequence_reset_and_bounds() -> None:
    b = Backoff(initial=0.1, maximum=2.0, jitter=0.3, rng=random.Random(7))
    slept: list[float] = []
    for _ in range(8):
        b.wait(slept.append)
    nominal = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert all(n * 0.7 < s <= n for s, n in zip(slept, nominal)), slept
    b.reset()
    assert b.next_delay() <= 0.1
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=3.0, maximum=1.0)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.0)
    with pytest.raises(ValueError, match="start at 1"):
        backoff_delay(0, 0.1, 1.0, 2.0, 0.0, 0.0)


def test_outage_says_start_and_end_once() -> None:
    said: list[str] = []
    now = [100.0]
    o = Outage("worker w1", said.append, clock=lambda: now[0])
    assert o.up() is None  # nothing to report while Redis is fine
    for _ in range(3):
        o.down(redis.ConnectionError("Connection refused\nsecond line"))
        now[0] += 1.5
    assert o.up() == pytest.approx(4.5)
    assert o.up() is None
    assert said == ["mlink: worker w1: redis unavailable (ConnectionError: Connection refused); retrying",
                    "mlink: worker w1: redis back after 4.5s"]
    assert o.count == 1


def test_worker_retries_an_unreachable_redis_with_backoff_and_no_real_sleep() -> None:
    r = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)  # nothing listens there
    slept: list[float] = []
    said: list[str] = []
    w = Worker(r, name="w1", sleep=slept.append, say=said.append, should_stop=lambda: len(slept) >= 6)
    stats = w.run()
    assert stats.redis_errors == 6
    assert [round(s / n, 6) <= 1.0 and s > 0.7 * n for s, n in zip(slept, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0])] == [True] * 6
    assert len(said) == 1 and said[0].startswith("mlink: worker w1: redis unavailable (ConnectionError")
