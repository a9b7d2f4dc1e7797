"""Decoder stage: one process per camera, video -> ``frames:{camera}``.

Files and RTSP are read with PyAV, sampled to the target fps by PTS, resized and
XADDed with camera, frame index, PTS, capture wall time, size and the image.

Two delivery modes:
- live: newest-frame semantics. Files are paced at their own rate, the stream is
  trimmed to ``max_len`` (old unread frames are dropped, and counted), so a slow
  scheduler sees recent frames and Redis memory stays bounded.
- replay: every frame. The decoder waits while the scheduler lags by more than
  ``window`` frames (backpressure) instead of trimming unread frames.

The frame index continues across decoder restarts (kept in ``camera:{cam}``), and
a restarted file decoder skips what it already sent, so nothing is sent twice.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable

import redis

from pipeline.backoff import Backoff
from pipeline.config import CameraConfig, Mode
from pipeline.errors import UserError
from pipeline.exitcodes import ExitCode
from pipeline.keys import GROUP, camera_key, frames_key, status_key
from pipeline.metrics import count_dropped, count_status
from pipeline.redis_conn import REDIS_DOWN, connect, guard
from pipeline.registry import failed_reason, register_camera
from pipeline.streams import FrameMsg, encode_frame, status_event
from pipeline.video import source_label
from stages.live_source import LiveSource, RedisGuard, source_options

# KEYS: frames:{cam}, camera:{cam}. ARGV: frame index, next_frame after it, source position,
# live MAXLEN (0 = replay: no trimming), the consumer group, then the frame's field/value
# pairs. Sends the frame once: a write retried after a lost reply finds next_frame already
# past it (returns -1). Returns how many unread frames the live bound trimmed (counted as
# ``dropped`` in the camera hash, in the same script).
_SEND_LUA = """
local sent = tonumber(redis.call('HGET', KEYS[2], 'next_frame') or '0')
if sent > tonumber(ARGV[1]) then return -1 end
local maxlen = tonumber(ARGV[4])
local trimmed = 0
if maxlen > 0 then
  local over = redis.call('XLEN', KEYS[1]) - maxlen + 1
  if over > 0 then
    -- Only frames no worker has read are lost here. A trimmed frame a worker holds (pending)
    -- still gets its record; if that worker dies, the reclaim counts it (_RECLAIM_LUA).
    for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)) do
      if #redis.call('XPENDING', KEYS[1], ARGV[5], e[1], e[1], 1) == 0 then trimmed = trimmed + 1 end
    end
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', maxlen, '*', unpack(ARGV, 6))
else
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 6))
end
redis.call('HSET', KEYS[2], 'next_frame', ARGV[2], 'source_pos', ARGV[3])
if trimmed > 0 then redis.call('HINCRBY', KEYS[2], 'dropped', trimmed) end
return trimmed
"""


class _GivenUp(Exception):
    """A scheduler worker marked this camera failed: stop sending its frames."""


class Decoder:
    def __init__(self, cam: CameraConfig, r: redis.Redis, should_stop: Callable[[], bool] = lambda: False, base_dir: Path | None = None,
                 *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cam, self.r, self.should_stop, self.base_dir = cam, r, should_stop, base_dir
        self.clock, self.sleep = clock, sleep
        self.fkey, self.skey = frames_key(cam.name), status_key(cam.name)
        self.sent = 0
        self.dropped = 0
        self._reader_drops_counted = 0
        self._room = 0  # frames that may still be sent before asking Redis again
        self._send_script = r.register_script(_SEND_LUA)
        self._next_failed_check = 0.0

    def guarded(self) -> "Decoder":
        """A replay camera waits out a Redis outage on every call (backpressure, registration,
        status), then re-registers (Redis may have come back empty). A live camera keeps an
        unguarded client: while Redis is away it drops frames (counted) instead of waiting."""
        if self.cam.mode is Mode.REPLAY:
            guard(self.r, f"decoder {self.cam.name}", should_stop=self.should_stop, on_back=lambda down_s: self._redis_restored(0, down_s))
        return self

    def status(self, event: str, **info: object) -> None:
        try:
            self.r.xadd(self.skey, status_event(event, self.cam.name, **info), maxlen=1000, approximate=True)
            count_status(self.r, self.cam.name, event)
        except redis.ConnectionError:
            pass  # Redis away: the source keeps going; RedisGuard reports the outage when it is back

    def _redis_restored(self, dropped: int, down_s: float) -> None:
        # Redis may have come back empty (no persistence): the registration is the marker.
        reset = not self.r.hexists(camera_key(self.cam.name), "models")
        register_camera(self.r, self.cam)
        if dropped:
            count_dropped(self.r, self.cam.name, dropped)
        if reset:
            self.status("redis_reset", reason=f"redis came back empty after {down_s:.1f}s: the frames, records and links it held for "
                        "this camera are gone; registration and consumer group recreated")
        self.status("redis_restored", reason=f"redis back after {down_s:.1f}s; {dropped} live frames dropped meanwhile", dropped=dropped)

    def run(self) -> int:
        cam = self.cam
        register_camera(self.r, cam)
        ckey = camera_key(cam.name)
        # Resume: frames already sent by an earlier incarnation of this decoder.
        next_frame = int(self.r.hget(ckey, "next_frame") or 0)
        skip_sources = int(self.r.hget(ckey, "source_pos") or 0)  # decoded frames of the source already sent
        first_frame = int(self.r.hget(ckey, "session_first_frame") or 0)
        self.status("started", source=self._source_label(), mode=cam.mode.value, next_frame=next_frame)
        try:
            sources = [cam.source if isinstance(cam.source, str) else cam.source[0]] if cam.is_rtsp else [str(p) for p in cam.files(self.base_dir)]
            if not sources:
                raise UserError(f"camera {cam.name}: source matches no files: {cam.source}")
            live = cam.mode is Mode.LIVE
            guard = RedisGuard(live, self._redis_restored, self.should_stop)
            src = LiveSource(sources, status=self.status, should_stop=self.should_stop, skip=skip_sources, **source_options(cam))
            for sf in src:  # real decoded frames only: outages are status events, never blank frames
                self._check_given_up()
                if cam.mode is Mode.REPLAY:
                    self._wait_for_room()
                if self.should_stop():
                    break
                h, w = sf.image.shape[:2]
                msg = FrameMsg(cam.name, next_frame, sf.pts, sf.pts_raw, time.time(), w, h, sf.image)
                if guard.send(lambda: self._send(msg, ckey, next_frame + 1, sf.pos)):
                    next_frame += 1  # else: Redis away, a live frame dropped (guard.dropped, metrics)
                self._count_reader_drops(src.dropped)
            if self.should_stop():
                self.status("stopped", frames=next_frame, first_frame=first_frame, mode=cam.mode.value)
                return ExitCode.OK
            self.status("eos", frames=next_frame, first_frame=first_frame, sent=self.sent, dropped=self.dropped, mode=cam.mode.value)
            return ExitCode.OK
        except _GivenUp as exc:
            self.status("stopped", reason=f"camera failed in a scheduler worker: {exc}", frames=next_frame, first_frame=first_frame)
            return ExitCode.FAILED
        except UserError as exc:
            self.status("error", reason=str(exc), frames=next_frame, first_frame=first_frame, mode=cam.mode.value)
            return ExitCode.FAILED

    def _count_reader_drops(self, total: int) -> None:
        """Frames the live reader decoded but threw away because this loop was behind the camera
        (latest-frame semantics): counted in ``metrics:{cam}`` ``dropped`` like outage drops, so
        frames decoded = frame indices + counted drops."""
        if total > self._reader_drops_counted:
            try:
                count_dropped(self.r, self.cam.name, total - self._reader_drops_counted)
                self._reader_drops_counted = total
            except REDIS_DOWN:
                pass  # counted with the next frame once Redis is back

    def _check_given_up(self) -> None:
        """Once a second: has a worker marked this camera failed? (Then its frames would pile up unread.)"""
        now = self.clock()
        if now < self._next_failed_check:
            return
        self._next_failed_check = now + 1.0
        try:
            reason = failed_reason(self.r, self.cam.name)
        except REDIS_DOWN:
            return  # Redis away: the frame writes ride that out (RedisGuard); ask again next time
        if reason:
            raise _GivenUp(reason)

    def _send(self, msg: FrameMsg, ckey: str, next_frame: int, pos: int) -> None:
        fields = encode_frame(msg, self.cam.encoding, self.cam.jpeg_quality)
        args: list[object] = [msg.frame, next_frame, pos, self.cam.max_len if self.cam.mode is Mode.LIVE else 0, GROUP]
        for k, v in fields.items():
            args.extend((k, v))
        res = int(self._send_script(keys=[self.fkey, ckey], args=args))
        if res == -1:
            return  # a retried write whose first attempt reached Redis: the frame is there once
        self.dropped += res  # MAXLEN trimmed unread frames (live)
        self.sent += 1

    def _wait_for_room(self) -> None:
        # Processed frames are deleted by the scheduler, so XLEN is exactly the
        # number of frames not yet done: wait instead of trimming them. Room seen
        # at the last check is spent first, so XLEN is asked once per window, not per frame.
        if self._room > 0:
            self._room -= 1
            return
        wait = Backoff(initial=0.002, maximum=0.05, jitter=0.0)
        while not self.should_stop():
            pending = int(self.r.xlen(self.fkey))
            if pending < self.cam.window:
                self._room = self.cam.window - pending - 1
                return
            self._check_given_up()
            wait.wait(self.sleep)

    def _source_label(self) -> str:
        return source_label(self.cam.source) if isinstance(self.cam.source, str) else f"{len(self.cam.source)} files"


def decoder_main(cam_json: str, redis_url: str, base_dir: str | None = None) -> int:
    """Process entry point (the supervisor starts one per camera)."""
    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    cam = CameraConfig.model_validate_json(cam_json)
    r = connect(redis_url)
    return int(Decoder(cam, r, lambda: stop["flag"], Path(base_dir) if base_dir else None).guarded().run())
