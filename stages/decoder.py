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

import json
import signal
import time
from pathlib import Path
from typing import Callable

import redis

from pipeline.config import CameraConfig, Mode
from pipeline.errors import UserError
from pipeline.keys import (
    CAMERAS_KEY,
    GROUP,
    camera_key,
    camera_keys,
    frames_key,
    status_key,
)
from pipeline.metrics import count_dropped, count_status
from pipeline.redis_conn import connect
from pipeline.streams import FrameMsg, encode_frame, status_event
from pipeline.video import _label
from stages.live_source import LiveSource, RedisGuard, source_options

EXIT_OK = 0
EXIT_FAILED = 2  # a permanent failure (bad file...): the supervisor must not restart


def register_camera(r: redis.Redis, cam: CameraConfig) -> None:
    """Publish the camera and its model specs so any worker can serve it."""
    specs = [s.model_dump(mode="json") for s in cam.model_specs]
    r.hset(camera_key(cam.name), mapping={"models": json.dumps(specs), "mode": cam.mode.value, "results_max_len": cam.results_max_len})
    r.sadd(CAMERAS_KEY, cam.name)
    try:
        # The group exists before the first frame, so no worker can miss early frames.
        r.xgroup_create(frames_key(cam.name), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def prepare_camera(r: redis.Redis, cam: str, fresh: bool) -> int:
    """Start a new session for a camera; returns its first frame index.

    ``fresh`` (replay) forgets the camera's streams and counters. Otherwise
    (run) the frame index continues from the last session so that records stay
    unique by (camera, frame), and the source is read again from its start.
    """
    # Out of the registry until its decoder registers it again with its models,
    # so no worker picks up a half-written camera hash.
    r.srem(CAMERAS_KEY, cam)
    if fresh:
        for k in camera_keys(cam):
            r.delete(k)
    ckey = camera_key(cam)
    first = int(r.hget(ckey, "next_frame") or 0)
    r.delete(frames_key(cam))
    r.hset(ckey, mapping={"next_frame": first, "session_first_frame": first, "source_pos": 0})
    return first


class Decoder:
    def __init__(self, cam: CameraConfig, r: redis.Redis, should_stop: Callable[[], bool] = lambda: False, base_dir: Path | None = None) -> None:
        self.cam, self.r, self.should_stop, self.base_dir = cam, r, should_stop, base_dir
        self.fkey, self.skey = frames_key(cam.name), status_key(cam.name)
        self.sent = 0
        self.dropped = 0
        self._room = 0  # frames that may still be sent before asking Redis again

    def status(self, event: str, **info: object) -> None:
        try:
            self.r.xadd(self.skey, status_event(event, self.cam.name, **info), maxlen=1000, approximate=True)
            count_status(self.r, self.cam.name, event)
        except redis.ConnectionError:
            pass  # Redis away: the source keeps going; RedisGuard reports the outage when it is back

    def _redis_restored(self, dropped: int, down_s: float) -> None:
        register_camera(self.r, self.cam)  # Redis may have come back empty
        if dropped:
            count_dropped(self.r, self.cam.name, dropped)
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
                if cam.mode is Mode.REPLAY:
                    self._wait_for_room()
                if self.should_stop():
                    break
                h, w = sf.image.shape[:2]
                msg = FrameMsg(cam.name, next_frame, sf.pts, sf.pts_raw, time.time(), w, h, sf.image)
                if guard.send(lambda: self._send(msg, ckey, next_frame + 1, sf.pos)):
                    next_frame += 1  # else: Redis away, a live frame dropped (guard.dropped, metrics)
            if self.should_stop():
                self.status("stopped", frames=next_frame, first_frame=first_frame)
                return EXIT_OK
            self.status("eos", frames=next_frame, first_frame=first_frame, sent=self.sent, dropped=self.dropped)
            return EXIT_OK
        except UserError as exc:
            self.status("error", reason=str(exc), frames=next_frame, first_frame=first_frame)
            return EXIT_FAILED

    def _send(self, msg: FrameMsg, ckey: str, next_frame: int, pos: int) -> None:
        fields = encode_frame(msg, self.cam.encoding, self.cam.jpeg_quality)
        pipe = self.r.pipeline(transaction=True)
        if self.cam.mode is Mode.LIVE:
            pipe.xlen(self.fkey)
            pipe.xadd(self.fkey, fields, maxlen=self.cam.max_len, approximate=False)
        else:
            pipe.xadd(self.fkey, fields)
        pipe.hset(ckey, mapping={"next_frame": next_frame, "source_pos": pos})
        res = pipe.execute()
        if self.cam.mode is Mode.LIVE and int(res[0]) >= self.cam.max_len:
            self.dropped += 1  # MAXLEN trimmed the oldest unread frame
            self.r.hincrby(ckey, "dropped", 1)
        self.sent += 1

    def _wait_for_room(self) -> None:
        # Processed frames are deleted by the scheduler, so XLEN is exactly the
        # number of frames not yet done: wait instead of trimming them. Room seen
        # at the last check is spent first, so XLEN is asked once per window, not per frame.
        if self._room > 0:
            self._room -= 1
            return
        backoff = 0.002
        while not self.should_stop():
            pending = int(self.r.xlen(self.fkey))
            if pending < self.cam.window:
                self._room = self.cam.window - pending - 1
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, 0.05)

    def _source_label(self) -> str:
        return _label(self.cam.source) if isinstance(self.cam.source, str) else f"{len(self.cam.source)} files"


def decoder_main(cam_json: str, redis_url: str, base_dir: str | None = None) -> int:
    """Process entry point (the supervisor starts one per camera)."""
    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    cam = CameraConfig.model_validate_json(cam_json)
    r = connect(redis_url)
    return Decoder(cam, r, lambda: stop["flag"], Path(base_dir) if base_dir else None).run()
