"""Per-camera policy state that every worker of a camera shares through Redis.

Two workers serving one camera must spend and learn as one worker would:

* :class:`RedisLedger` is the compute governor's per-frame spend (``spend:{cam}``), so
  the cap on measured compute holds per CAMERA over every window, whichever worker ran
  which frame. Booking is one Lua script (room from every window containing the frame,
  the models that fit, the booking itself), so two workers deciding at once cannot both
  take the same room.
* :class:`ColdStartSamples` is the cold start's aligned samples (``coldstart:{cam}``):
  every worker adds the frames it ran every model on, the camera's cold start ends after
  ``cold_start_frames`` frames in all (not per worker), the worker that adds the last one
  trains the links, and the others plan from the same samples when they adopt them.

Samples cross Redis as arrays only (``np.load(allow_pickle=False)``): Redis is not a
code channel.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import redis

from links.errors import LinksError
from links.governor import SpendLedger
from links.samples import AlignedSamples
from pipeline.keys import coldstart_key, spend_key

__all__ = ["ColdStartSamples", "RedisLedger"]

# KEYS[1] spend hash (frame -> spend); ARGV: frame, window, cap, all_or_none (0|1), costs...
# The room is links.governor.window_room and the choice links.governor.choose, in Lua.
_BOOK_LUA = """
local f = tonumber(ARGV[1]); local W = tonumber(ARGV[2]); local cap = tonumber(ARGV[3])
local aon = ARGV[4] == '1'
local flat = redis.call('HGETALL', KEYS[1])
local s = {}
local stale = {}
for i = 1, #flat, 2 do
  local g = tonumber(flat[i])
  local d = g - f
  if g <= f - 2 * W then
    stale[#stale + 1] = flat[i]
  elseif d > -W and d < W and d ~= 0 then
    s[d] = tonumber(flat[i + 1])
  end
end
local total = 0
for d = -W + 1, 0 do total = total + (s[d] or 0) end
local worst = total
for j = 1, W - 1 do
  total = total + (s[j] or 0) - (s[j - W] or 0)
  if total > worst then worst = total end
end
local room = cap - worst
local n = #ARGV - 4
local mask = {}
local booked = 0
if aon then
  local sum = 0
  for i = 1, n do sum = sum + tonumber(ARGV[4 + i]) end
  local ok = sum <= room
  for i = 1, n do mask[i] = ok and 1 or 0 end
  if ok then booked = sum end
else
  for i = 1, n do
    local c = tonumber(ARGV[4 + i])
    if c <= room then
      mask[i] = 1; room = room - c; booked = booked + c
    else
      mask[i] = 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], tostring(booked))
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
local inside = booked
local count = 1
for d = -W + 1, -1 do
  if s[d] ~= nil then inside = inside + s[d]; count = count + 1 end
end
return {mask, tostring(inside), count}
"""


class RedisLedger(SpendLedger):
    """The governor's per-frame spend of one camera in ``spend:{cam}``, shared by its workers."""

    def __init__(self, r: redis.Redis, camera: str) -> None:
        self.r, self.key = r, spend_key(camera)
        self._script = r.register_script(_BOOK_LUA)

    def book(self, frame: int, costs: Sequence[float], window: int, cap: float, all_or_none: bool) -> tuple[list[bool], float, int]:
        mask, inside, count = self._script(keys=[self.key], args=[int(frame), int(window), repr(float(cap)), int(all_or_none),
                                                                  *(repr(float(c)) for c in costs)])
        return [bool(int(x)) for x in mask], float(inside), int(count)

    def settle(self, frame: int, spent: float) -> None:
        self.r.hset(self.key, str(int(frame)), repr(float(spent)))


# KEYS[1] cold-start hash; ARGV: ring size, sample blob. Returns how many samples were ever added.
_ADD_LUA = """
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local slot = ((n - 1) % tonumber(ARGV[1])) + 1
redis.call('HSET', KEYS[1], 's' .. slot, ARGV[2])
return n
"""


class ColdStartSamples:
    """A camera's cold-start samples in ``coldstart:{cam}``: a counter ``n`` and the newest
    ``size`` samples in a ring (``s1`` .. ``s{size}``), each one frame's aligned outputs of
    every model and, for policies that look at the pixels, its thumbnail."""

    def __init__(self, r: redis.Redis, camera: str, size: int) -> None:
        if size < 1:
            raise ValueError(f"cold start: size must be >= 1, got {size}")
        self.r, self.key, self.size = r, coldstart_key(camera), size
        self._script = r.register_script(_ADD_LUA)

    def add(self, sample: AlignedSamples, thumb: np.ndarray | None) -> int:
        """Adds one frame's sample; returns how many the camera has had in all (this one included)."""
        buf = io.BytesIO()
        arrays = {"sample": np.frombuffer(sample.to_bytes(), np.uint8)}
        if thumb is not None:
            arrays["thumb"] = np.asarray(thumb)
        np.savez(buf, **arrays)
        return int(self._script(keys=[self.key], args=[self.size, buf.getvalue()]))

    def count(self) -> int:
        return int(self.r.hget(self.key, "n") or 0)

    def load(self, models: list[str]) -> tuple[AlignedSamples, dict[int, np.ndarray]] | None:
        """The stored samples of exactly these models, in frame order, and the thumbnails by frame
        (None when there are none). A sample that cannot be read, or of other models (an earlier
        configuration), is left out."""
        blobs = [b for b in self.r.hmget(self.key, [f"s{i}" for i in range(1, self.size + 1)]) if b is not None]
        rows: list[AlignedSamples] = []
        thumbs: dict[int, np.ndarray] = {}
        for blob in blobs:
            try:
                with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                    s = AlignedSamples.from_bytes(z["sample"].tobytes())
                    thumb = z["thumb"] if "thumb" in z.files else None
            except (LinksError, ValueError, KeyError, OSError):
                continue
            if len(s) != 1 or s.names != list(models):
                continue
            rows.append(s)
            if thumb is not None:
                thumbs[int(s.frame[0])] = thumb
        if not rows:
            return None
        rows.sort(key=lambda s: int(s.frame[0]))
        out = rows[0]
        for s in rows[1:]:
            if int(s.frame[0]) != int(out.frame[-1]):  # a frame added twice (reclaimed after a worker died) counts once
                out = out.concat(s)
        return out, thumbs
