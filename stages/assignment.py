"""Which scheduler worker serves which camera: one owner per camera, balanced over the live workers.

A budgeted policy keeps per-camera state that only works when one process sees every frame
of the camera: MOG2's background model, the links it fine-tunes on each period's profiling
frames, the cascade's risk model, the held outputs it fills from (a batch another worker
is still running has not written them yet). Shared through Redis, most of it can follow a
camera from worker to worker, but two workers serving one camera AT THE SAME TIME each see
half of it: measured, they scored 5 points below one worker at the same budget. So, like the
partitions of a Kafka consumer group, a camera is read by one worker at a time: its owner.

Every worker beats in ``mlink:workers`` (a sorted set: name -> until when it counts as
alive, in the Redis server's clock, so hosts need not agree on the time); the live workers
and the cameras, both sorted, are dealt round-robin, so every worker computes the same
owners without talking to the others, and the cameras are spread evenly. A worker that
stops says so (it leaves the set: its cameras move at once); one that dies stops beating
and its cameras move after ``lease_ms``, to a worker that then reclaims the frames the
dead one left pending. A worker with no camera of its own waits as a hot standby.

``share_cameras`` (``scheduler.share_cameras``, ``mlink worker --share-cameras``) turns it
off: every worker reads every camera, for one camera whose frame rate one worker cannot keep
up with, at the cost above.
"""

from __future__ import annotations

from typing import Iterable

import redis

from pipeline.keys import WORKERS_KEY

# Beat, forget the dead, list the living, in one round trip and in the server's clock.
_BEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def assign(cameras: Iterable[str], workers: Iterable[str]) -> dict[str, str]:
    """Camera -> the worker that serves it: both sorted, dealt round-robin (every worker
    computes the same answer from the same two lists; no worker holds two more than another)."""
    ws = sorted(set(workers))
    if not ws:
        return {}
    return {c: ws[i % len(ws)] for i, c in enumerate(sorted(set(cameras)))}


class Membership:
    """This worker's entry in ``mlink:workers``: :meth:`beat` keeps it alive for ``lease_ms``."""

    def __init__(self, r: redis.Redis, name: str, lease_ms: int) -> None:
        if lease_ms < 100:
            raise ValueError(f"worker lease must be at least 100 ms, got {lease_ms}")
        self.r, self.name, self.lease_ms = r, name, int(lease_ms)
        self._script = r.register_script(_BEAT_LUA)

    def beat(self) -> list[str]:
        """Renew this worker's lease; the names of the live workers (this one included)."""
        names = self._script(keys=[WORKERS_KEY], args=[self.name, self.lease_ms])
        return sorted({n.decode() if isinstance(n, bytes) else str(n) for n in names} | {self.name})

    def live(self) -> list[str]:
        """The live workers, without renewing this one."""
        names = self._script(keys=[WORKERS_KEY], args=[self.name, ""])
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)

    def leave(self) -> None:
        """Stop counting as alive now, so the cameras this worker served move without waiting."""
        self.r.zrem(WORKERS_KEY, self.name)
