"""Shared fixtures: a real Redis server, the sample footage, bad input files, CLI runner.

- ``redis_url``: the machine's own redis on 127.0.0.1:6379 when it answers PING
  (database 13, flushed before each test), else a private embedded
  redis-server (``pipeline.redis_conn.EmbeddedRedis``) for the session. Never a mock.
- ``priv``: a private redis-server on a free loopback port (``tests/redis_private.py``)
  that a test may kill and restart; Debian's ``/usr/bin/redis-server`` when present.
- footage: ``videos_dir`` is ``tests/data`` (trimmed copies of the sample clips, committed,
  made by ``scripts/make_test_clips.py``; see ``tests/data/SOURCES.md``), and one fixture
  per clip (``gif23``, ``gif35``, ``car_mp4``, ...). A missing file FAILS the test with
  the reason: tests never skip for footage.
- ``rtsp_deps``: the GStreamer RTSP server can run (installed by
  ``scripts/install_rtsp_deps.sh`` if needed), else the test FAILS with the reason.
- bad files made in ``tmp_path``: zero bytes, text named .mp4, truncated mp4s.
- ``MLINK_HOME`` points at a per-session temp dir, so state files (embedded
  redis URL, cost cache) never collide with a user's or another session's.

RTSP helpers live in ``tests/rtsp_fixture.py`` (imported, not redefined here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis_private import PrivateRedis

REPO_ROOT = Path(__file__).resolve().parents[1]
# The test footage is committed with the tests (scripts/make_test_clips.py makes it).
VIDEOS_DIR = Path(__file__).resolve().parent / "data"
LOCAL_REDIS = "redis://127.0.0.1:6379/13"
TEST_DB = 13

# Frame counts of the test footage (decoded by FFmpeg, every frame; tests/data/SOURCES.md).
FRAME_COUNTS = {
    "intel_car-detection.mp4": 377,  # the whole clip, 12.5 fps: frame i at i * 0.08 s
    "intel_one-by-one-person-detection.mp4": 300,  # the first 30 s, 10 fps
    "intel_person-bicycle-car-detection_trimmed.mp4": 48,  # 12 fps, with an audio stream
    "intel_preview_face-demographics-walking.gif": 35,
    "intel_preview_people-detection.gif": 23,
    "intel_preview_store-aisle-detection.gif": 40,
    "intel_preview_worker-zone-detection.gif": 16,
}
GIF23 = "intel_preview_people-detection.gif"  # 480x270, ~12.5 fps
GIF35 = "intel_preview_face-demographics-walking.gif"  # two people walking towards the camera
STORE_GIF = "intel_preview_store-aisle-detection.gif"  # 40 frames, 15 fps
ZONE_GIF = "intel_preview_worker-zone-detection.gif"  # 16 frames, 15 fps
CAR_MP4 = "intel_car-detection.mp4"  # H.264 Baseline 768x432, moov atom first: a truncated copy still opens
PERSON_MP4 = "intel_one-by-one-person-detection.mp4"  # 768x432, 10 fps
TRIMMED_MP4 = "intel_person-bicycle-car-detection_trimmed.mp4"  # moov atom last: a truncated copy does not open
# The first 35% of intel_car-detection.mp4 decodes this many frames, then FFmpeg
# fails mid-file (the last packet is cut short). Measured on tests/data's copy.
TRUNCATED_CAR_FRAMES = 134

CHEAP_MODELS = ["mog2_motion", "scene_light", "edge_density", "haar_full_body"]
DEFAULT_ZOO = ["yolo_coco", "yolo_seg", "yolo_pose", "yolo_person", "vehicle_seg", "plate_det", "mtcnn_face", "mobilenet_v2",
               "hog_people", "mog2_motion"]


# ----------------------------------------------------------------- session env
@pytest.fixture(scope="session", autouse=True)
def mlink_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private MLINK_HOME for the whole session (inherited by subprocesses)."""
    home = tmp_path_factory.mktemp("mlink_home")
    old = os.environ.get("MLINK_HOME")
    os.environ["MLINK_HOME"] = str(home)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    yield home
    if old is None:
        os.environ.pop("MLINK_HOME", None)
    else:
        os.environ["MLINK_HOME"] = old


def _local_redis_ok() -> bool:
    try:
        return bool(redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server(mlink_home: Path) -> Iterator[str]:
    """URL of a real server for the session: local 6379/db13, else embedded.

    ``MLINK_TEST_REDIS=embedded`` forces the embedded server even when 6379 answers.
    """
    if os.environ.get("MLINK_TEST_REDIS") != "embedded" and _local_redis_ok():
        yield LOCAL_REDIS
        return
    from pipeline.redis_conn import EmbeddedRedis

    srv = EmbeddedRedis(publish=False).start()
    try:
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A real Redis URL with an empty database (flushed before the test)."""
    r = redis.Redis.from_url(redis_server)
    r.flushdb()
    r.close()
    return redis_server


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# ------------------------------------------------------------ private redis
@pytest.fixture
def priv() -> Iterator[PrivateRedis]:
    """A private redis-server for one test: it may be killed and restarted (same port)."""
    srv = PrivateRedis().start()
    yield srv
    srv.close()


# ------------------------------------------------------------------- footage
def clip_path(name: str) -> Path:
    """``tests/data/<name>``; FAILS the calling test (never skips) when it is missing."""
    p = VIDEOS_DIR / name
    if not p.is_file():
        pytest.fail(f"test footage missing: {p} (committed with the tests; regenerate it with "
                    f"`.venv/bin/python scripts/make_test_clips.py`)", pytrace=False)
    return p


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    """``tests/data`` with every clip of FRAME_COUNTS in it (or the test fails, naming what is missing)."""
    missing = [n for n in FRAME_COUNTS if not (VIDEOS_DIR / n).is_file()]
    if missing:
        pytest.fail(f"test footage incomplete in {VIDEOS_DIR}: missing {', '.join(missing)} (regenerate it with "
                    f"`.venv/bin/python scripts/make_test_clips.py`)", pytrace=False)
    return VIDEOS_DIR


@pytest.fixture(scope="session")
def gif23(videos_dir: Path) -> Path:
    return clip_path(GIF23)


@pytest.fixture(scope="session")
def gif35(videos_dir: Path) -> Path:
    return clip_path(GIF35)


@pytest.fixture(scope="session")
def store_gif(videos_dir: Path) -> Path:
    return clip_path(STORE_GIF)


@pytest.fixture(scope="session")
def zone_gif(videos_dir: Path) -> Path:
    return clip_path(ZONE_GIF)


@pytest.fixture(scope="session")
def car_mp4(videos_dir: Path) -> Path:
    return clip_path(CAR_MP4)


@pytest.fixture(scope="session")
def person_mp4(videos_dir: Path) -> Path:
    return clip_path(PERSON_MP4)


@pytest.fixture(scope="session")
def trimmed_mp4(videos_dir: Path) -> Path:
    return clip_path(TRIMMED_MP4)


# --------------------------------------------------------------------- RTSP
@pytest.fixture(scope="session")
def rtsp_deps() -> None:
    """The GStreamer RTSP server can run; installs it once if needed, else FAILS (never skips)."""
    from rtsp_fixture import INSTALL_SCRIPT, rtsp_available

    if not rtsp_available(install=True):
        pytest.fail(f"the GStreamer RTSP server (gst-rtsp-server for /usr/bin/python3) is not available and "
                    f"`bash {INSTALL_SCRIPT.relative_to(REPO_ROOT)}` could not install it (needs root or sudo and "
                    f"apt-get); `bash scripts/test.sh` installs it", pytrace=False)


# ----------------------------------------------------------------- bad files
@pytest.fixture
def zero_byte_file(tmp_path: Path) -> Path:
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    return p


@pytest.fixture
def not_video_file(tmp_path: Path) -> Path:
    p = tmp_path / "notes.mp4"
    p.write_text("this is a text file renamed to .mp4, not a video\n" * 50)
    return p


def _truncated_copy(src: Path, dst: Path, fraction: float = 0.35) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture
def truncated_mp4(tmp_path: Path, car_mp4: Path) -> Path:
    """First 35% of intel_car-detection.mp4 (moov first): opens, fails mid-decode."""
    return _truncated_copy(car_mp4, tmp_path / "truncated_car.mp4")


@pytest.fixture
def truncated_at_open_mp4(tmp_path: Path, trimmed_mp4: Path) -> Path:
    """First 35% of the trimmed mp4 (moov last): FFmpeg cannot even open it."""
    return _truncated_copy(trimmed_mp4, tmp_path / "truncated_trimmed.mp4")


# -------------------------------------------------------------------- helpers
def write_config(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def mlink_cmd() -> list[str]:
    """The installed console script, else ``python -m pipeline.app.cli``."""
    script = Path(sys.executable).parent / "mlink"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.app.cli"]


def run_mlink(*args: str | Path, timeout: float = 120, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*mlink_cmd(), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO_ROOT, env=env,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> str:
    """Exit code ``code``; stderr is ONE line 'mlink: error: ...' containing every needle."""
    assert proc.returncode == code, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("mlink: error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def check_record(rec: dict[str, Any], camera: str, models: list[str]) -> None:
    """Schema v1 of one analytics record, every model executed (policy 'all')."""
    for k in ("v", "camera", "frame", "pts", "pts_raw", "wall", "width", "height", "outputs", "policy", "latency_ms"):
        assert k in rec, f"record lacks {k!r}: {sorted(rec)}"
    assert rec["v"] == 1
    assert rec["camera"] == camera
    assert isinstance(rec["frame"], int) and rec["frame"] >= 0
    assert isinstance(rec["pts"], float | int) and rec["pts"] >= 0
    assert set(rec["outputs"]) == set(models), sorted(rec["outputs"])
    for m, o in rec["outputs"].items():
        assert o["origin"] == "executed", (m, o)
        kind = o["kind"]
        if kind in ("detections", "segmentation", "keypoints"):
            assert isinstance(o["count"], int) and o["count"] >= 0
            assert sum(o["counts"].values()) == o["count"]
            assert len(o["boxes"]) == o["count"]
            for b in o["boxes"]:
                assert len(b) == 6 and all(0.0 <= v <= 1.0 for v in b[:4]) and b[5] in o["counts"]
            if kind == "segmentation":
                assert set(o["coverage"]) == set(o["counts"]) and all(0.0 <= v <= 1.0 for v in o["coverage"].values())
            if kind == "keypoints":
                assert len(o["keypoints"]) == o["count"] and o["visible_keypoints"] >= 0
        elif kind == "probs":
            assert o["label"] in o["probs"]
            assert abs(sum(o["probs"].values()) - 1.0) < 0.01
            assert o["label"] == max(o["probs"], key=o["probs"].get)
        elif kind == "topk":
            top = list(o["top5"].values())
            assert list(o["top5"])[0] == o["label"] and 1 <= len(top) <= 5 and top == sorted(top, reverse=True)
        else:
            assert kind == "scalar" and isinstance(o["value"], float | int)
        assert o["ms"] >= 0
    assert rec["policy"]["name"] == "all"
    assert sorted(rec["policy"]["active"]) == sorted(models)
    lat = rec["latency_ms"]
    for k in ("queue", "models", "total"):
        assert isinstance(lat[k], float | int), lat
    assert lat["models"] >= 0 and lat["total"] >= lat["queue"] - 1.0
