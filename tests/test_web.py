"""The web view without a browser: drawing (pipeline/app/annotate.py), its endpoints on a real
Redis after a real replay, the worker's bounded preview key, the event and MJPEG streams of a
real server, `mlink web` with Redis away, the summary's compute saved, and bad input (a port
in use, a bad bind address, an unknown camera, a bad count) as one-line errors or clear 404s.

The browser tests are tests/test_web_browser.py.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis
from conftest import CHEAP_MODELS, assert_one_line_error, mlink_cmd, run_mlink, write_config
from redis_private import PrivateRedis, free_port

from pipeline.app.annotate import PALETTE, draw, output_text, placeholder
from pipeline.app.session import SummarySink
from pipeline.app.web import parse_bind
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.keys import camera_keys, preview_key
from pipeline.registry import register_camera


# ------------------------------------------------------------------ drawing
def _rec(outputs: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "camera": "c", "frame": 7, "policy": {"name": "ours", "phase": "budgeted"}, "outputs": outputs}


def _box(x1: float, y1: float, x2: float, y2: float, cls: str = "person") -> list[Any]:
    return [x1, y1, x2, y2, 0.9, cls]


def _edge_run(img: np.ndarray, row: int, x1: int, x2: int, color: tuple[int, int, int]) -> float:
    """Share of the pixels on a horizontal edge that have ``color`` (BGR), within a tolerance."""
    line = img[row, x1:x2].astype(int)
    return float((np.abs(line - np.array(color)).sum(axis=1) < 60).mean())


def _bgr(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[5:7], 16), int(hex_color[3:5], 16), int(hex_color[1:3], 16)


@pytest.mark.parametrize("origin, solid", [("executed", True), ("linked", False), ("held", False)])
def test_executed_boxes_are_solid_and_derived_ones_dashed(origin: str, solid: bool) -> None:
    img = np.full((400, 800, 3), 90, np.uint8)
    out = {"det": {"origin": origin, "kind": "detections", "count": 1, "counts": {"person": 1}, "boxes": [_box(0.25, 0.5, 0.75, 0.9)]}}
    if origin == "linked":
        out["det"]["confidence"] = 0.81
    drawn = draw(img, _rec(out))
    share = _edge_run(drawn, int(0.9 * 400), 220, 580, _bgr(PALETTE[0]))  # the bottom edge, away from the label
    assert (share > 0.95) if solid else (0.3 < share < 0.8), share
    assert drawn.shape == img.shape and not np.array_equal(drawn, img)
    assert np.array_equal(img, np.full((400, 800, 3), 90, np.uint8))  # the input is left alone


def test_missing_outputs_and_outputs_without_boxes_draw_nothing_but_the_header() -> None:
    img = np.full((300, 600, 3), 90, np.uint8)
    drawn = draw(img, _rec({
        "det": {"origin": "missing"},
        "light": {"origin": "linked", "kind": "probs", "label": "bright", "probs": {"dark": 0.1, "bright": 0.9}, "confidence": 0.7},
        "motion": {"origin": "executed", "kind": "scalar", "value": 0.03, "ms": 1.0},
    }))
    changed = np.argwhere((drawn != img).any(axis=2))
    assert changed[:, 0].max() < 30  # only the header band at the top


def test_pose_keypoints_are_drawn_for_executed_outputs() -> None:
    img = np.full((300, 600, 3), 90, np.uint8)
    kp = [[[0.5, 0.6, 0.9], [0.7, 0.6, 0.1]]]
    drawn = draw(img, _rec({"pose": {"origin": "executed", "kind": "keypoints", "count": 1, "counts": {"person": 1},
                                     "boxes": [_box(0.3, 0.3, 0.9, 0.95)], "keypoints": kp}}))
    color = np.array(_bgr(PALETTE[0]))
    assert np.abs(drawn[180, 300].astype(int) - color).sum() < 60  # the visible keypoint
    assert np.abs(drawn[180, 420].astype(int) - color).sum() > 60  # the one below 0.5 confidence is not drawn


@pytest.mark.parametrize("output, text", [
    ({"origin": "executed", "count": 2, "counts": {"person": 2, "car": 0}}, "2 person"),
    ({"origin": "executed", "count": 3, "counts": {"Normal": 2, "Fall": 1}}, "3 (Normal 2, Fall 1)"),
    ({"origin": "linked", "count": 0, "counts": {"person": 0}}, "0"),
    ({"origin": "held", "label": "bright", "probs": {"dark": 0.07, "bright": 0.93}}, "bright 0.93"),
    ({"origin": "executed", "label": "tabby", "top5": {"tabby": 0.41, "tiger cat": 0.2}}, "tabby 0.41"),
    ({"origin": "executed", "value": 0.031234}, "0.0312"),
    ({"origin": "missing"}, "-"),
])
def test_output_text(output: dict[str, Any], text: str) -> None:
    assert output_text(output) == text


def test_placeholder_is_a_jpeg() -> None:
    img = cv2.imdecode(np.frombuffer(placeholder("door: no frames yet"), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (360, 640, 3) and img.std() > 1


# ------------------------------------------------------------ bind address
@pytest.mark.parametrize("value, expected", [
    ("8080", ("127.0.0.1", 8080)),
    (":9000", ("127.0.0.1", 9000)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::1]:8080", ("::1", 8080)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_bind(value: str, expected: tuple[str, int]) -> None:
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", ["nowhere", "127.0.0.1:http", "127.0.0.1:70000", "", "a b:80"])
def test_parse_bind_rejects(value: str) -> None:
    with pytest.raises(UserError, match=r"^--web .*: expected HOST:PORT or PORT, e\.g\. 127\.0\.0\.1:8080$"):
        parse_bind(value, "--web")


# ------------------------------------------------------------------ summary
def test_summary_counts_origins_per_model_and_the_compute_saved() -> None:
    """Two models: `a` (10 ms) on every frame, `b` (30 ms) only in the cold start, linked after it.
    Every model on every frame: 4 x 10 + 4 x 30 = 160 ms; ran 40 + 30 = 70 ms: 56% saved; after
    the cold start 30 ms of 120 ms: 75% saved."""
    s = SummarySink()
    for i in range(4):
        phase = "cold-start" if i == 0 else "budgeted"
        b = {"origin": "executed", "ms": 30.0} if i == 0 else {"origin": "linked", "confidence": 0.9}
        s.record({"camera": "c", "frame": i, "policy": {"phase": phase}, "outputs": {"a": {"origin": "executed", "ms": 10.0}, "b": b}})
    ran, full, after, unknown = s.compute_saved()
    assert (ran, full, unknown) == (0.07, 0.16, []) and after == pytest.approx(0.75)
    from pipeline.app.session import SessionResult

    text = s.text(SessionResult(records={"c": 4}, errors={}, duplicates=0, wall_s=2.0, restarts=0, interrupted=False))
    lines = text.splitlines()
    assert lines[2].split() == ["model", "executed", "linked", "held", "missing", "ms/run", "total", "s"]
    assert lines[3].split() == ["a", "4", "0", "0", "0", "10.0", "0.0"]
    assert lines[4].split() == ["b", "1", "3", "0", "0", "30.0", "0.0"]
    assert lines[5].endswith(": 56% saved, 75% after the cold start"), lines[5]


# ---------------------------------------------- endpoints after a real replay
@pytest.fixture
def replayed(tmp_path: Path, redis_url: str, gif23: Path) -> tuple[str, str]:
    """A real replay of the 23-frame clip (cheap models): its camera and Redis URL."""
    cfg = write_config(tmp_path / "c.yaml", {"defaults": {"models": CHEAP_MODELS}, "cameras": {"x": {"source": "unused"}}})
    p = run_mlink("replay", gif23, "--config", cfg, "--redis", redis_url, timeout=180)
    assert p.returncode == 0, p.stderr
    return gif23.stem, redis_url


def test_workers_keep_one_bounded_preview_per_camera(replayed: tuple[str, str]) -> None:
    cam, url = replayed
    r = redis.Redis.from_url(url)
    assert preview_key(cam) in camera_keys(cam)  # forgotten with the camera (a fresh replay starts clean)
    assert r.type(preview_key(cam)) == b"hash" and set(r.hkeys(preview_key(cam))) == {b"frame", b"jpeg", b"json"}
    frame = int(r.hget(preview_key(cam), "frame"))
    # A recorded frame of this replay. Writes are throttled to one per 0.1 s per worker and
    # camera, so after a fast replay ends the preview can be some frames before the last.
    assert 0 <= frame <= 22
    rec = json.loads(r.hget(preview_key(cam), "json"))
    assert rec["frame"] == frame and set(rec["outputs"]) == set(CHEAP_MODELS)
    img = cv2.imdecode(np.frombuffer(r.hget(preview_key(cam), "jpeg"), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (rec["height"], rec["width"], 3)


def fetch(url: str) -> tuple[int, Any, bytes]:
    """(status, headers, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def start_web(url: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*mlink_cmd(), "web", "--redis", url, "--bind", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_http(f"http://127.0.0.1:{port}/", proc)
    return proc


def stop_web(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
    return err


def test_endpoints_on_a_real_pipeline_state(replayed: tuple[str, str], tmp_path: Path) -> None:
    """`mlink web` over what a real replay left in Redis, plus a camera that registered but has no frame yet."""
    cam, url = replayed
    cfg = load_config(write_config(tmp_path / "idle.yaml", {"defaults": {"models": CHEAP_MODELS}, "cameras": {"idle": {"source": "x.mp4"}}}))
    register_camera(redis.Redis.from_url(url), cfg.cameras["idle"])  # what a decoder does first
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_web(url, port)
    try:
        code, _, body = fetch(base + "/api/cameras")
        s = json.loads(body)
        assert code == 200 and s["redis"]["ok"] is True
        tiles = {c["name"]: c for c in s["cameras"]}
        assert sorted(tiles) == sorted([cam, "idle"])
        t = tiles[cam]
        assert t["state"] == "eos" and t["processed"] == 23 and t["frame"] is not None and t["policy"] == "all"
        assert [m["name"] for m in t["models"]] == CHEAP_MODELS and {m["origin"] for m in t["models"]} == {"executed"}
        assert t["totals"]["executed"] == 23 * len(CHEAP_MODELS) and t["totals"]["linked"] == 0
        assert tiles["idle"]["frame"] is None and tiles["idle"]["models"] == [] and tiles["idle"]["state"] == "registered"

        code, _, body = fetch(f"{base}/api/camera/{cam}/records?count=5")
        got = json.loads(body)
        assert code == 200 and got["count"] == 5 and [x["frame"] for x in got["records"]] == [18, 19, 20, 21, 22]
        assert len(json.loads(fetch(f"{base}/api/camera/{cam}/records")[2])["records"]) == 23  # default 50: all there are
        for bad in ("0", "abc", "1001", "-3"):
            code, _, body = fetch(f"{base}/api/camera/{cam}/records?count={bad}")
            assert code == 400 and json.loads(body) == {"error": f"count must be a whole number from 1 to 1000, not {bad!r}"}

        code, headers, body = fetch(f"{base}/camera/{cam}/latest.jpg")
        assert code == 200 and headers["content-type"] == "image/jpeg" and int(headers["x-mlink-frame"]) == t["frame"]
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (270, 480, 3)
        code, headers, body = fetch(base + "/camera/idle/latest.jpg")  # no frames yet: a placeholder, not an error
        assert code == 200 and headers["x-mlink-placeholder"] == "1" and body[:2] == b"\xff\xd8"

        for path in ("/", f"/camera/{cam}", "/camera/idle"):
            code, _, body = fetch(base + path)
            assert code == 200 and b'id="overlay-legend"' in body, path
        assert fetch(base + "/static/web.js")[0] == 200
        known = ", ".join(sorted([cam, "idle"]))
        msg = f"unknown camera 'ghost' (known cameras: {known})"
        for path in ("/api/camera/ghost/records", "/camera/ghost/latest.jpg", "/camera/ghost/stream.mjpg", "/camera/ghost/events"):
            code, _, body = fetch(base + path)
            assert code == 404 and json.loads(body) == {"error": msg}, path
        code, _, body = fetch(base + "/camera/ghost")
        assert code == 404 and f'<p id="error" class="error">{msg}</p>' in body.decode()
        assert fetch(base + "/nowhere")[0] == 404
    finally:
        stop_web(proc)


# --------------------------------------------------------- a real server
def _read_until(resp: Any, marker: bytes, limit: int = 2_000_000) -> bytes:
    buf = b""
    while marker not in buf and len(buf) < limit:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _sse_event(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=20) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        buf = _read_until(resp, b"\n\n", 10_000_000)
        while b"data: " not in buf:
            buf += _read_until(resp, b"\n\n")
    line = next(ln for ln in buf.decode().splitlines() if ln.startswith("data: "))
    return json.loads(line[6:])


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def test_run_with_web_and_duration_streams_events_and_mjpeg_then_stops_by_itself(tmp_path: Path, redis_url: str, gif35: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "live.yaml", {
        "defaults": {"models": CHEAP_MODELS, "mode": "live", "loop": True, "fps": 10, "resize": 240},
        "scheduler": {"policy": "ours", "budget": "40%", "cold_start_frames": 8, "period_frames": 30},
        "cameras": {"walk": {"source": str(gif35)}},
    })
    t0 = time.monotonic()
    proc = subprocess.Popen([*mlink_cmd(), "run", cfg, "--redis", redis_url, "--web", f"127.0.0.1:{port}", "--duration", "25", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base + "/api/cameras", proc)
        deadline = time.monotonic() + 60
        ev: dict[str, Any] = {}
        while time.monotonic() < deadline and not (ev.get("cameras") and ev["cameras"][0]["frame"] is not None):
            ev = _sse_event(base + "/events")
        assert ev["redis"]["ok"] and ev["cameras"][0]["name"] == "walk" and ev["cameras"][0]["frame"] is not None, ev
        cam_ev = _sse_event(base + "/camera/walk/events")
        assert cam_ev["camera"]["name"] == "walk" and cam_ev["reset"] and cam_ev["strip"]
        assert set(cam_ev["strip"][-1]["o"]) == set(CHEAP_MODELS)
        with urllib.request.urlopen(base + "/camera/walk/stream.mjpg", timeout=20) as resp:
            assert resp.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
            part = _read_until(resp, b"\xff\xd9\r\n")
        head, _, body = part.partition(b"\r\n\r\n")
        assert head.startswith(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: ")
        jpeg = body[: int(head.split(b"Content-Length: ")[1])]
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[1] == 240
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wall = time.monotonic() - t0
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert f"mlink: web view on http://127.0.0.1:{port}/" in err and re.search(r"mlink: stopped after \d+ s \(--duration\)", err), err
    assert wall < 75, wall
    assert "executed  linked   held missing" in err and "after the cold start" in err, err
    with pytest.raises(urllib.error.URLError):  # the web view went with the run
        urllib.request.urlopen(base + "/api/cameras", timeout=5)


def test_mlink_web_starts_with_redis_away_and_recovers(tmp_path: Path) -> None:
    srv = PrivateRedis()  # not started: Redis is away when the web view starts
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*mlink_cmd(), "web", "--redis", srv.url, "--bind", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(base + "/", proc)
        for path in ("/api/cameras", "/api/camera/door/records", "/camera/door/latest.jpg"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path, timeout=10)
            assert e.value.code == 503, path
            body = json.loads(e.value.read())
            assert body["error"].startswith(f"redis {srv.url} unreachable: "), body
        ev = _sse_event(base + "/events")
        assert ev["redis"]["ok"] is False and ev["cameras"] == [] and ev["redis"]["error"]
        assert urllib.request.urlopen(base + "/", timeout=10).status == 200  # the page itself loads and says so
        srv.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(base + "/api/cameras", timeout=10) as resp:
                    assert json.loads(resp.read())["redis"]["ok"] is True
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, "the web view did not recover"
                time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as e:  # Redis answers now: an unknown camera is a 404
            urllib.request.urlopen(base + "/camera/door/latest.jpg", timeout=10)
        assert e.value.code == 404
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=30)
        srv.close()
    assert proc.returncode == 0 and "Traceback" not in err, err
    first = err.splitlines()[0]
    assert first.startswith(f"mlink: redis {srv.url} unreachable: ") and first.endswith("the page says so and recovers when Redis is back"), err


# -------------------------------------------------------------- bad input
def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = run_mlink("web", "--redis", redis_url, "--bind", f"127.0.0.1:{port}", timeout=60)
        assert_one_line_error(p, f"--bind 127.0.0.1:{port}: cannot listen: address already in use", "--bind HOST:PORT")
        cfg = write_config(tmp_path / "c.yaml", {"defaults": {"models": CHEAP_MODELS}, "cameras": {"lobby": {"source": str(gif23)}}})
        p = run_mlink("run", cfg, "--redis", redis_url, "--web", f"127.0.0.1:{port}", timeout=60)
        assert_one_line_error(p, f"--web 127.0.0.1:{port}: cannot listen: address already in use")
    assert redis.Redis.from_url(redis_url).xlen("results:{lobby}") == 0  # nothing ran


@pytest.mark.parametrize("args, needle", [
    (["run", "{cfg}", "--web", "nowhere"], "--web 'nowhere': expected HOST:PORT or PORT"),
    (["run", "--web", "{cfg}"], "(--web takes an optional HOST:PORT: put it after the config file)"),  # --web took the config
    (["run", "{cfg}", "--duration", "0"], "--duration must be a positive number of seconds, not 0"),
    (["web", "--bind", "127.0.0.1:99999", "--redis", "{url}"], "--bind '127.0.0.1:99999': expected HOST:PORT"),
    (["web", "--redis", "redis://127.0.0.1:1/0", "--bind", "192.0.2.1:8080"], "--bind 192.0.2.1:8080: cannot listen: Cannot assign requested address"),
])
def test_bad_web_arguments_are_one_line(tmp_path: Path, redis_url: str, gif23: Path, args: list[str], needle: str) -> None:
    cfg = write_config(tmp_path / "c.yaml", {"defaults": {"models": CHEAP_MODELS}, "cameras": {"lobby": {"source": str(gif23)}}})
    p = run_mlink(*[a.format(cfg=cfg, url=redis_url) for a in args], timeout=60)
    assert_one_line_error(p, needle)
