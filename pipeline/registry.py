"""A camera's life in Redis: registered by its decoder, prepared for a session, marked
failed when a stage gives up on it. The key names are :mod:`pipeline.keys`'s.

``camera:{cam}`` fields written here: ``models`` (specs JSON), ``mode``,
``results_max_len``, ``max_lag_s``, ``next_frame`` / ``session_first_frame`` /
``source_pos`` (resume points), ``failed`` (the reason a stage gave up on the camera).
"""

from __future__ import annotations

import json

import redis

from pipeline.config import CameraConfig
from pipeline.keys import CAMERAS_KEY, GROUP, camera_key, camera_keys, frames_key, status_key
from pipeline.streams import status_event


def ensure_group(r: redis.Redis, cam: str) -> None:
    """The scheduler's consumer group on ``frames:{cam}`` (created with the stream if needed)."""
    try:
        r.xgroup_create(frames_key(cam), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def register_camera(r: redis.Redis, cam: CameraConfig) -> None:
    """Publish the camera and its model specs so any worker on any host can serve it."""
    specs = [s.model_dump(mode="json") for s in cam.model_specs]
    r.hset(camera_key(cam.name), mapping={"models": json.dumps(specs), "mode": cam.mode.value,
                                          "results_max_len": cam.results_max_len, "max_lag_s": cam.max_lag_s})
    r.sadd(CAMERAS_KEY, cam.name)
    # The group exists before the first frame, so no worker can miss early frames.
    ensure_group(r, cam.name)


def prepare_camera(r: redis.Redis, cam: str, fresh: bool) -> int:
    """Start a new session for a camera; returns its first frame index.

    ``fresh`` (replay, bench) forgets everything the camera had in Redis (streams,
    counters, links, metrics). Otherwise (run) the frame index continues from the
    last session so that records stay unique by (camera, frame), links trained
    earlier are kept, and the source is read again from its start.
    """
    # Out of the registry until its decoder registers it again with its models,
    # so no worker picks up a half-written camera hash.
    r.srem(CAMERAS_KEY, cam)
    if fresh:
        r.delete(*camera_keys(cam))
    ckey = camera_key(cam)
    first = int(r.hget(ckey, "next_frame") or 0)
    r.delete(frames_key(cam))
    r.hdel(ckey, "failed")
    r.hset(ckey, mapping={"next_frame": first, "session_first_frame": first, "source_pos": 0})
    return first


def mark_failed(r: redis.Redis, cam: str, reason: str, **info: object) -> None:
    """A stage gives up on a camera for good (bad model spec, bad links...): say why, once.

    The decoder sees the flag and stops; the session stops waiting for the camera's
    frames; the other cameras go on.
    """
    pipe = r.pipeline(transaction=True)
    pipe.hset(camera_key(cam), "failed", reason)
    pipe.xadd(status_key(cam), status_event("failed", cam, reason=reason, **info), maxlen=1000, approximate=True)
    pipe.execute()


def failed_reason(r: redis.Redis, cam: str) -> str | None:
    v = r.hget(camera_key(cam), "failed")
    return v.decode() if isinstance(v, bytes) else v
