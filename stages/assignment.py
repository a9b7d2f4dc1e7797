"""Which scheduler worker serves which camera: one owner per camera, balanced over the live workers.

A budgeted policy keeps per-camera state that only works when one process sees every frame
of the camera: MOG2's background model, the links it fine-tunes on each period's profiling
frames, the cascade's risk model, the held outputs it fills from (a batch another worker
is still running has not written them yet). Shared through Redis, most of it can follow a
camera from worker to worker, but two workers serving one camera AT THE SAME TIME each see
half of it: measured, they scored 5 points below one worker at the same budget. So, like the
partitions of a Kafka consumer group, a camera is read by one worker at a time: its owner.

Every worker beats in ``mlink:workers`` (a sorted set: name -> until when it counts as
alive, in the Redis server's clock, so hosts need not agree on the time). The owners live in
``mlink:owners`` (a hash: camera -> worker) and are sticky, like Kafka's sticky assignor: a
camera keeps its owner while that worker lives, unless the spread needs it elsewhere (no
worker serves two more cameras than another). A new camera goes to the least loaded worker
and moves no other; a joining worker takes only what evens the load; a dead worker's
cameras go to the least loaded. Dealing afresh on every change (round-robin over the sorted
cameras, the first version) moved cameras whenever one registered: at a replay's start,
where the decoders register one after the other, cameras changed worker after a few
frames, and a camera that moves starts MOG2's background model afresh on its new owner.
Every worker recomputes the owners at each refresh from the same hash and writes a change
back only if no other worker wrote since it read (compare-and-set on a version field), so
concurrent workers agree.

A worker that stops says so (it leaves the set: its cameras move at once); one that dies
stops beating and its cameras move after ``lease_ms``, to a worker that then reclaims the
frames the dead one left pending. A worker with no camera of its own waits as a hot standby.

``share_cameras`` (``scheduler.share_cameras``, ``mlink worker --share-cameras``) turns it
off: every worker reads every camera, for one camera whose frame rate one worker cannot keep
up with, at the cost above.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

import redis

from pipeline.keys import OWNERS_KEY, WORKERS_KEY

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

# Write the owners that changed, only if the version is still the one they were computed from.
_VERSION = "#v"  # not a valid camera name
_CAS_LUA = """
local v = redis.call('HGET', KEYS[1], '#v') or '0'
if v ~= ARGV[1] then return 0 end
for c, w in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], c, w) end
for _, c in ipairs(cjson.decode(ARGV[3])) do redis.call('HDEL', KEYS[1], c) end
redis.call('HINCRBY', KEYS[1], '#v', 1)
return 1
"""


def assign(cameras: Iterable[str], workers: Iterable[str], previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """Camera -> the worker that serves it. Cameras keep their ``previous`` owner while it is
    among ``workers``; the others go, in sorted order, to the least loaded worker (ties by
    name); then, while one worker serves two more than another, the most loaded gives its
    last camera to the least loaded. Pure: every worker computes the same from the same input."""
    ws = sorted(set(workers))
    if not ws:
        return {}
    cams = sorted(set(cameras))
    prev = previous or {}
    owner = {c: prev[c] for c in cams if prev.get(c) in ws}
    load = {w: 0 for w in ws}
    for w in owner.values():
        load[w] += 1
    for c in cams:
        if c not in owner:
            w = min(ws, key=lambda x: (load[x], x))
            owner[c], load[w] = w, load[w] + 1
    while True:
        hi = max(ws, key=lambda x: (load[x], x))
        lo = min(ws, key=lambda x: (load[x], x))
        if load[hi] - load[lo] <= 1:
            return owner
        c = max(c for c, w in owner.items() if w == hi)
        owner[c], load[hi], load[lo] = lo, load[hi] - 1, load[lo] + 1


def live_workers(r: redis.Redis) -> list[str]:
    """The workers whose lease has not run out (read by anyone, e.g. a supervisor waiting for its workers to join)."""
    return sorted(_text(n) for n in r.register_script(_BEAT_LUA)(keys=[WORKERS_KEY], args=["", ""]))


class Membership:
    """This worker's entry in ``mlink:workers``: :meth:`beat` keeps it alive for ``lease_ms``."""

    def __init__(self, r: redis.Redis, name: str, lease_ms: int) -> None:
        if lease_ms < 100:
            raise ValueError(f"worker lease must be at least 100 ms, got {lease_ms}")
        self.r, self.name, self.lease_ms = r, name, int(lease_ms)
        self._script = r.register_script(_BEAT_LUA)
        self._cas = r.register_script(_CAS_LUA)

    def beat(self) -> list[str]:
        """Renew this worker's lease; the names of the live workers (this one included)."""
        names = self._script(keys=[WORKERS_KEY], args=[self.name, self.lease_ms])
        return sorted({_text(n) for n in names} | {self.name})

    def live(self) -> list[str]:
        """The live workers, without renewing this one."""
        return live_workers(self.r)

    def leave(self) -> None:
        """Stop counting as alive now, so the cameras this worker served move without waiting."""
        self.r.zrem(WORKERS_KEY, self.name)

    def deal(self, cameras: Iterable[str], live: Iterable[str]) -> dict[str, str]:
        """The owners of ``cameras`` among the ``live`` workers (:func:`assign` from the owners
        in ``mlink:owners``), written back when they changed, only if no other worker wrote in
        between (a version field, compare-and-set in one script on one key, so it works on a
        Redis Cluster too); a worker that lost the race recomputes from what the winner wrote."""
        cams, ws = sorted(set(cameras)), sorted(set(live))
        owner: dict[str, str] = {}
        for _ in range(5):
            raw = {_text(k): _text(v) for k, v in self.r.hgetall(OWNERS_KEY).items()}
            version = raw.pop(_VERSION, "0")
            owner = assign(cams, ws, raw)
            changed = {c: w for c, w in owner.items() if raw.get(c) != w}
            # a camera no longer registered keeps its entry while its owner lives (harmless)
            gone = [c for c, w in raw.items() if c not in owner and w not in ws]
            if not changed and not gone:
                return owner
            if self._cas(keys=[OWNERS_KEY], args=[version, json.dumps(changed), json.dumps(gone)]):
                return owner
        return owner  # others wrote first five times in a row: use this view; the next refresh settles it


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
