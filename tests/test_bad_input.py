"""Every bad input: a one-line error and non-zero exit at start-up, or an error
status event with the other cameras continuing at run time. No tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from conftest import (
    CHEAP_MODELS,
    TRUNCATED_CAR_FRAMES,
    assert_one_line_error,
    read_jsonl,
    run_mlink,
    write_config,
)

from pipeline.keys import status_key
from tests.rtsp_fixture import free_port


# ----------------------------------------------------------- replay start-up
@pytest.mark.parametrize(
    "fixture, reason",
    [
        ("missing", "file not found"),
        ("zero_byte_file", "file is empty (0 bytes)"),
        ("not_video_file", "not a video file"),
        ("truncated_at_open_mp4", "truncated or corrupt video"),
    ],
)
def test_replay_refuses_bad_files_at_start(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, fixture: str, reason: str) -> None:
    path = tmp_path / "missing.mp4" if fixture == "missing" else request.getfixturevalue(fixture)
    proc = run_mlink("replay", path, "--out", tmp_path / "r.jsonl", "--redis", redis_url)
    line = assert_one_line_error(proc, str(path), reason)
    assert line.startswith(f"mlink: error: camera {path.stem}: ")
    assert not (tmp_path / "r.jsonl").exists()


def test_replay_of_a_truncated_file_keeps_the_decoded_frames(tmp_path: Path, redis_url: str, truncated_mp4: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", {"defaults": {"models": ["scene_light"], "resize": 64}, "cameras": {"t": {"source": "x"}}})
    out = tmp_path / "r.jsonl"
    proc = run_mlink("replay", truncated_mp4, "--config", cfg, "--out", out, "--redis", redis_url)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [x["frame"] for x in read_jsonl(out)] == list(range(TRUNCATED_CAR_FRAMES))
    assert f"mlink: error: camera truncated_car: {truncated_mp4}: decoding failed after {TRUNCATED_CAR_FRAMES} frames" in proc.stderr
    assert f"camera truncated_car: {TRUNCATED_CAR_FRAMES} records  ERROR: " in proc.stderr


# -------------------------------------------------------------- run start-up
BAD_CONFIGS = [
    # (yaml text, substrings of the one error line; {cfg} is the config path)
    ("cameras:\n  a:\n    source: x.mp4\n   fps: 5\n", ["{cfg}: invalid YAML (line 4)"]),
    ("cameras:\n  lobby:\n    source: {gif}\n    fsp: 5\n", ["{cfg}: camera lobby: fsp: Extra inputs are not permitted"]),
    ("cameras:\n  lobby:\n    source: {gif}\n    models: [yolo_persn]\n", ["{cfg}: camera lobby: ", "unknown model 'yolo_persn'"]),
    ("cameras:\n  lobby:\n    source: {gif}\nschedular: {{}}\n", ["{cfg}: unknown top-level key 'schedular'"]),
    ("cameras:\n  lobby:\n    source: {gif}\n    fps: -1\n", ["{cfg}: camera lobby: fps"]),
    ("cameras:\n  lobby:\n    source: {missing}\n", ["camera lobby: {missing}: file not found"]),
    ("cameras:\n  lobby:\n    source: {empty}\n", ["camera lobby: {empty}: file is empty"]),
    ("cameras:\n  lobby:\n    source: {text}\n", ["camera lobby: {text}: not a video file"]),
]


@pytest.mark.parametrize("text, needles", BAD_CONFIGS, ids=["invalid-yaml", "unknown-key", "unknown-model", "unknown-section", "bad-fps", "missing-file", "zero-byte", "not-video"])
def test_run_refuses_bad_config_at_start(tmp_path: Path, redis_url: str, gif23: Path, zero_byte_file: Path, not_video_file: Path, text: str, needles: list[str]) -> None:
    cfg = tmp_path / "cams.yaml"
    subst = {"gif": gif23, "missing": tmp_path / "nope.mp4", "empty": zero_byte_file, "text": not_video_file, "cfg": cfg}
    cfg.write_text(text.format(**subst))
    proc = run_mlink("run", cfg, "--redis", redis_url, timeout=60)
    assert_one_line_error(proc, *[n.format(**subst) for n in needles])


def test_run_missing_config_file(tmp_path: Path, redis_url: str) -> None:
    proc = run_mlink("run", tmp_path / "nope.yaml", "--redis", redis_url)
    assert_one_line_error(proc, f"{tmp_path / 'nope.yaml'}: config file not found")


def test_run_unreachable_redis(tmp_path: Path, gif23: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", {"cameras": {"a": {"source": str(gif23), "models": ["scene_light"]}}})
    port = free_port()
    proc = run_mlink("run", cfg, "--redis", f"redis://:secretpw@127.0.0.1:{port}/0")
    line = assert_one_line_error(proc, f"127.0.0.1:{port}", "cannot connect")
    assert "secretpw" not in line


def test_replay_unknown_policy(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    proc = run_mlink("replay", gif23, "--policy", "nosuchpolicy", "--redis", redis_url)
    assert_one_line_error(proc, "nosuchpolicy")


def test_tail_unknown_camera(redis_url: str) -> None:
    proc = run_mlink("tail", "nocam", "--redis", redis_url, "--count", "1", "--wait", "0.5")
    assert_one_line_error(proc, "camera nocam: unknown")


# ----------------------------------------------- run time: one camera fails
def two_camera_run(tmp_path: Path, redis_url: str, good: Path, bad_source: str, **bad_settings: object):
    cfg = write_config(tmp_path / "two.yaml", {
        "defaults": {"models": CHEAP_MODELS, "mode": "replay", "resize": 240},
        "cameras": {"good": {"source": str(good)}, "bad": {"source": bad_source, **bad_settings}},
    })
    out = tmp_path / "r.jsonl"
    proc = run_mlink("run", cfg, "--redis", redis_url, "--out", out, "--quiet", timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    recs = read_jsonl(out)
    by_cam = {c: sorted(x["frame"] for x in recs if x["camera"] == c) for c in ("good", "bad")}
    r = redis.Redis.from_url(redis_url)
    events = [json.loads(f[b"json"]) for _, f in r.xrange(status_key("bad"))]
    return proc, by_cam, events


def test_truncated_camera_errors_while_the_other_continues(tmp_path: Path, redis_url: str, gif23: Path, truncated_mp4: Path) -> None:
    proc, by_cam, events = two_camera_run(tmp_path, redis_url, gif23, str(truncated_mp4))
    assert proc.returncode == 1, proc.stderr
    assert by_cam["good"] == list(range(23))
    assert by_cam["bad"] == list(range(TRUNCATED_CAR_FRAMES))  # decoded before the cut: kept
    err = [e for e in events if e["event"] == "error"]
    assert len(err) == 1 and str(truncated_mp4) in err[0]["reason"]
    assert f"mlink: error: camera bad: {truncated_mp4}: decoding failed" in proc.stderr
    assert "camera good: 23 records\n" in proc.stderr
    assert f"camera bad: {TRUNCATED_CAR_FRAMES} records  ERROR: {truncated_mp4}" in proc.stderr


def test_refused_rtsp_camera_errors_while_the_other_continues(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/x"
    proc, by_cam, events = two_camera_run(tmp_path, redis_url, gif23, url, rtsp={"open_timeout_s": 3, "read_timeout_s": 3})
    assert proc.returncode == 1, proc.stderr
    assert by_cam == {"good": list(range(23)), "bad": []}
    err = [e for e in events if e["event"] == "error"]
    assert len(err) == 1 and url in err[0]["reason"] and "cannot open" in err[0]["reason"]
    assert f"mlink: error: camera bad: {url}: connection refused" in proc.stderr
    assert proc.stderr.count("error: camera bad") == 1
    assert "camera good: 23 records\n" in proc.stderr
    assert f"camera bad: 0 records  ERROR: {url}: connection refused" in proc.stderr
