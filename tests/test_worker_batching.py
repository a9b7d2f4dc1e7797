"""The worker's inference path: each frame's JPEG is decoded once and only when a model
needs its pixels, and one ``predict`` per model serves the frames of several cameras."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import pipeline.streams as streams
from pipeline.config import parse_config
from pipeline.exitcodes import ExitCode
from pipeline.keys import results_key
from pipeline.registry import prepare_camera
from pipeline.streams import BadFrame, FrameMsg, decode_frame, encode_frame
from pipeline.zoo import Mog2MotionModel
from stages.decoder import Decoder
from stages.scheduler import Worker


def decode_into_redis(r: redis.Redis, name: str, source: Path, models: list[Any]) -> None:
    cam = parse_config({"cameras": {name: {"source": str(source), "models": models, "window": 10_000}}}).cameras[name]
    prepare_camera(r, name, fresh=True)
    assert Decoder(cam, r).run() == ExitCode.OK


def records(r: redis.Redis, cam: str) -> list[dict]:
    return [json.loads(f[b"json"]) for _, f in r.xrange(results_key(cam))]


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts JPEG decodes in this process."""
    calls: list[int] = []
    real = streams.cv2.imdecode

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(streams.cv2, "imdecode", spy)
    return calls


def test_a_frame_is_decoded_lazily_and_once(count_decodes: list[int]) -> None:
    img = np.full((24, 32, 3), 90, np.uint8)
    fields = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in encode_frame(FrameMsg("c", 3, 0.3, 0.3, 1.0, 32, 24, img)).items()}
    msg = decode_frame(fields, lazy=True)
    assert not msg.decoded and count_decodes == [] and (msg.frame, msg.width, msg.height) == (3, 32, 24)
    assert msg.image.shape == (24, 32, 3) and msg.image is msg.image
    assert len(count_decodes) == 1
    assert decode_frame(fields).decoded and len(count_decodes) == 2  # the default decodes at once
    bad = decode_frame({**fields, b"img": b"garbage"}, lazy=True)
    with pytest.raises(BadFrame, match="corrupt JPEG"):
        bad.image  # noqa: B018
    with pytest.raises(BadFrame, match="raw image of"):
        decode_frame({**fields, b"enc": b"raw"}, lazy=True)


def test_no_model_no_decode(r: redis.Redis, gif23: Path, count_decodes: list[int]) -> None:
    decode_into_redis(r, "bare", gif23, models=[])
    count_decodes.clear()  # (the decoder process side encodes, never decodes)
    stats = Worker(r, batch=8, block_ms=50).run(idle_exit_s=1.0)
    assert stats.frames == 23 and [x["frame"] for x in records(r, "bare")] == list(range(23))
    assert count_decodes == []


def test_models_share_one_decode_per_frame(r: redis.Redis, gif23: Path, count_decodes: list[int]) -> None:
    decode_into_redis(r, "two", gif23, models=["mog2_motion", "scene_light", "edge_density"])
    count_decodes.clear()
    stats = Worker(r, batch=8, block_ms=50).run(idle_exit_s=1.0)
    assert stats.frames == 23 and len(count_decodes) == 23


def test_one_predict_serves_several_cameras(r: redis.Redis, gif23: Path, gif35: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[list[str]] = []
    real = Mog2MotionModel._predict

    def spy(self: Mog2MotionModel, frames: Any, cameras: Any) -> Any:
        batches.append(list(cameras))
        return real(self, frames, cameras)

    monkeypatch.setattr(Mog2MotionModel, "_predict", spy)
    decode_into_redis(r, "a", gif23, models=["mog2_motion"])
    decode_into_redis(r, "b", gif35, models=["mog2_motion"])
    stats = Worker(r, batch=8, block_ms=50).run(idle_exit_s=1.0)
    assert stats.frames == 23 + 35
    assert sum(len(b) for b in batches) == 23 + 35
    assert any(set(b) == {"a", "b"} for b in batches), batches  # frames of both cameras in one call
    assert max(len(b) for b in batches) == 16  # one read: up to `batch` frames of each camera
    # and each camera still has its own background model: both first frames are all foreground
    assert records(r, "a")[0]["outputs"]["mog2_motion"]["value"] == 1.0 == records(r, "b")[0]["outputs"]["mog2_motion"]["value"]
