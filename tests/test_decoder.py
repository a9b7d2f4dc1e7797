"""The decoder stage against a real Redis: what lands in frames:{cam} and status:{cam}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from conftest import TRUNCATED_CAR_FRAMES

from pipeline.config import parse_config
from pipeline.exitcodes import ExitCode
from pipeline.keys import CAMERAS_KEY, GROUP, camera_key, frames_key, status_key
from pipeline.registry import prepare_camera
from pipeline.streams import decode_frame
from stages.decoder import Decoder


def camera(name: str, source: Any, **kw: Any):
    body = {"source": source, "models": ["scene_light"], **kw}
    return parse_config({"cameras": {name: body}}).cameras[name]


def frames(r: redis.Redis, cam: str) -> list:
    return [decode_frame(f) for _, f in r.xrange(frames_key(cam))]


def events(r: redis.Redis, cam: str) -> list[dict]:
    return [json.loads(f[b"json"]) for _, f in r.xrange(status_key(cam))]


def test_replay_sends_every_frame_in_order(r: redis.Redis, car_mp4: Path) -> None:
    cam = camera("car", str(car_mp4), resize=96, window=1000)
    prepare_camera(r, "car", fresh=True)
    assert Decoder(cam, r).run() == ExitCode.OK
    fs = frames(r, "car")
    assert len(fs) == 377
    assert [f.frame for f in fs] == list(range(377))
    assert all(b.pts > a.pts for a, b in zip(fs, fs[1:]))
    assert all(b.wall >= a.wall for a, b in zip(fs, fs[1:]))
    assert fs[100].pts == 8.0 and fs[100].pts_raw == 8.0
    assert (fs[0].width, fs[0].height) == (96, 54) and fs[0].image.shape == (54, 96, 3)
    # registered for the workers, with its models and the consumer group made
    assert r.sismember(CAMERAS_KEY, "car")
    specs = json.loads(r.hget(camera_key("car"), "models"))
    assert [s["name"] for s in specs] == ["scene_light"]
    assert [g["name"] for g in r.xinfo_groups(frames_key("car"))] == [GROUP.encode()]
    ev = events(r, "car")
    assert [e["event"] for e in ev] == ["started", "eos"]
    assert ev[1]["frames"] == 377 and ev[1]["sent"] == 377 and ev[1]["dropped"] == 0 and ev[1]["first_frame"] == 0


def test_raw_encoding_is_lossless(r: redis.Redis, gif23: Path) -> None:
    from pipeline.video import iter_frames

    cam = camera("g", str(gif23), encoding="raw")
    prepare_camera(r, "g", fresh=True)
    assert Decoder(cam, r).run() == ExitCode.OK
    fs = frames(r, "g")
    assert len(fs) == 23
    for sent, vf in zip(fs, iter_frames(gif23)):
        assert (sent.image == vf.image).all()


def test_file_list_plays_back_to_back_with_monotonic_pts(r: redis.Redis, gif23: Path, gif35: Path) -> None:
    cam = camera("two", [str(gif23), str(gif35)], resize=64, window=1000)
    prepare_camera(r, "two", fresh=True)
    assert Decoder(cam, r).run() == ExitCode.OK
    fs = frames(r, "two")
    assert [f.frame for f in fs] == list(range(23 + 35))
    assert all(b.pts > a.pts for a, b in zip(fs, fs[1:]))
    assert fs[23].pts_raw == 0.0 and fs[23].pts > fs[22].pts  # second file restarts its own PTS


def test_replay_backpressure_waits_for_room(r: redis.Redis, gif23: Path) -> None:
    """With window=5 and nobody consuming, the decoder stops at 5 frames until told to stop."""
    import threading

    cam = camera("bp", str(gif23), window=5)
    prepare_camera(r, "bp", fresh=True)
    stop = threading.Event()
    res: list[int] = []
    t = threading.Thread(target=lambda: res.append(Decoder(cam, redis.Redis(connection_pool=r.connection_pool), stop.is_set).run()))
    t.start()
    t.join(1.5)
    assert t.is_alive()
    assert r.xlen(frames_key("bp")) == 5
    stop.set()
    t.join(5)
    assert res == [ExitCode.OK]
    assert events(r, "bp")[-1]["event"] == "stopped"


def test_live_mode_bounds_the_stream_and_counts_drops(r: redis.Redis, gif23: Path) -> None:
    cam = camera("live", str(gif23), mode="live", max_len=4)
    prepare_camera(r, "live", fresh=True)
    assert Decoder(cam, r).run() == ExitCode.OK  # paced at the clip's own rate: ~1.8 s
    fs = frames(r, "live")
    assert [f.frame for f in fs] == [19, 20, 21, 22]  # the newest frames survive
    ev = events(r, "live")[-1]
    assert ev["event"] == "eos" and ev["sent"] == 23 and ev["dropped"] == 19
    assert int(r.hget(camera_key("live"), "dropped")) == 19


def test_frame_index_continues_across_run_sessions(r: redis.Redis, gif23: Path) -> None:
    cam = camera("cont", str(gif23), window=1000)
    assert prepare_camera(r, "cont", fresh=False) == 0
    assert Decoder(cam, r).run() == ExitCode.OK
    assert prepare_camera(r, "cont", fresh=False) == 23  # `mlink run` again: indices go on
    assert r.xlen(frames_key("cont")) == 0
    assert Decoder(cam, r).run() == ExitCode.OK
    assert [f.frame for f in frames(r, "cont")] == list(range(23, 46))
    assert prepare_camera(r, "cont", fresh=True) == 0  # replay starts over


def test_fresh_prepare_unregisters_until_the_decoder_registers_again(r: redis.Redis, gif23: Path) -> None:
    cam = camera("re", str(gif23), window=1000)
    prepare_camera(r, "re", fresh=True)
    Decoder(cam, r).run()
    prepare_camera(r, "re", fresh=True)
    # a worker must not see a registered camera whose hash lacks its models
    assert not r.sismember(CAMERAS_KEY, "re")


def test_truncated_file_sends_decoded_frames_then_error_event(r: redis.Redis, truncated_mp4: Path) -> None:
    cam = camera("trunc", str(truncated_mp4), resize=32, window=1000)
    prepare_camera(r, "trunc", fresh=True)
    assert Decoder(cam, r).run() == ExitCode.FAILED
    assert [f.frame for f in frames(r, "trunc")] == list(range(TRUNCATED_CAR_FRAMES))
    ev = events(r, "trunc")[-1]
    assert ev["event"] == "error" and ev["frames"] == TRUNCATED_CAR_FRAMES
    assert str(truncated_mp4) in ev["reason"] and "truncated" in ev["reason"]


def test_missing_file_is_an_error_event_not_an_exception(r: redis.Redis, tmp_path: Path) -> None:
    cam = camera("gone", str(tmp_path / "gone.mp4"))
    prepare_camera(r, "gone", fresh=True)
    assert Decoder(cam, r).run() == ExitCode.FAILED
    ev = events(r, "gone")
    assert [e["event"] for e in ev] == ["started", "error"]
    assert ev[1]["reason"] == f"{tmp_path / 'gone.mp4'}: file not found"
    assert r.xlen(frames_key("gone")) == 0


def test_glob_matching_nothing(r: redis.Redis, tmp_path: Path) -> None:
    cam = camera("empty", [str(tmp_path / "*.mp4")])
    assert Decoder(cam, r).run() == ExitCode.FAILED
    assert "camera empty: source matches no files" in events(r, "empty")[-1]["reason"]


def test_refused_rtsp_is_an_error_event(r: redis.Redis) -> None:
    from tests.rtsp_fixture import free_port

    url = f"rtsp://127.0.0.1:{free_port()}/x"
    cam = camera("door", url, rtsp={"open_timeout_s": 3, "read_timeout_s": 3})
    assert Decoder(cam, r).run() == ExitCode.FAILED
    ev = events(r, "door")[-1]
    assert ev["event"] == "error" and url in ev["reason"] and "cannot open" in ev["reason"]
