"""The decoder stage on top of stages.live_source, through the supervisor, at run time.

Real RTSP cameras (``scripts/rtsp_server.py`` serving the test footage) and a private
redis-server per test; the ``rtsp_deps`` fixture fails them when the GStreamer RTSP
server cannot run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_private import PrivateRedis
from rtsp_fixture import free_port, start_rtsp_server

from pipeline.config import parse_config
from pipeline.keys import results_key, status_key

CHEAP = ["scene_light", "edge_density"]

pytestmark = [pytest.mark.rtsp, pytest.mark.usefixtures("rtsp_deps")]


def _events(r: redis.Redis, cam: str) -> list[dict]:
    return [json.loads(f[b"json"]) for _, f in r.xrange(status_key(cam))]


@pytest.mark.parametrize("case,needle", [
    ("closed_port", "connection refused"),
    ("wrong_path", "404"),
    ("wrong_credentials", "401"),
])
def test_bad_rtsp_camera_errors_while_other_continues(priv: PrivateRedis, car_mp4: Path, case: str, needle: str) -> None:
    from pipeline.app.supervisor import Supervisor
    from pipeline.registry import prepare_camera

    with start_rtsp_server(car_mp4) as good, start_rtsp_server(car_mp4, user="alice", password="s3cr3t") as auth:
        bad_url = {
            "closed_port": f"rtsp://127.0.0.1:{free_port()}/cam",
            "wrong_path": good.url.replace("/cam", "/nope"),
            "wrong_credentials": auth.url_with("alice", "wrong"),
        }[case]
        rtsp = {"open_timeout_s": 3, "read_timeout_s": 2, "backoff_initial_s": 0.1, "backoff_max_s": 0.3, "max_attempts": 1}
        cfg = parse_config({"defaults": {"models": CHEAP, "mode": "live", "resize": 320, "rtsp": rtsp},
                            "cameras": {"good": {"source": good.url}, "bad": {"source": bad_url}}})
        r = priv.client()
        for c in cfg.cameras:
            prepare_camera(r, c, fresh=True)
        sup = Supervisor(cfg, priv.url, workers=1, claim_idle_ms=1000).start()
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 40:
                sup.poll()
                bad_done = any(e["event"] == "error" for e in _events(r, "bad"))
                if bad_done and r.xlen(results_key("good")) >= 20:
                    break
                time.sleep(0.1)
            n1 = r.xlen(results_key("good"))
            time.sleep(1.5)
            n2 = r.xlen(results_key("good"))
            bad_child = next(c for c in sup.children if c.name == "decoder:bad")
        finally:
            sup.stop()
    ev = _events(r, "bad")
    names = [e["event"] for e in ev]
    err = [e for e in ev if e["event"] == "error"][-1]
    print(f"\n{case}: bad camera events {names}; error: {err['reason']}; good camera records {n1} -> {n2}")
    assert "failed" in names and needle in err["reason"] and "\n" not in err["reason"]
    assert "s3cr3t" not in json.dumps(ev) and ":wrong@" not in json.dumps(ev)
    assert bad_child.finished and bad_child.restarts == 0  # permanent: not restarted
    assert n2 > n1 >= 20  # the other camera keeps going


def _wait_for_records(sup: Any, r: Any, n: int, within_s: float) -> None:
    """Let the supervisor work until results:{cam} holds ``n`` records (or fail)."""
    t0 = time.monotonic()
    while r.xlen(results_key("cam")) < n:
        sup.poll()
        assert time.monotonic() - t0 < within_s
        time.sleep(0.05)


def test_rtsp_restart_through_decoder(priv: PrivateRedis, car_mp4: Path) -> None:
    from pipeline.app.supervisor import Supervisor
    from pipeline.registry import prepare_camera

    with start_rtsp_server(car_mp4) as srv:
        rtsp = {"open_timeout_s": 3, "read_timeout_s": 2, "stall_after_s": 1, "backoff_initial_s": 0.2, "backoff_max_s": 1}
        cfg = parse_config({"cameras": {"cam": {"source": srv.url, "models": CHEAP, "mode": "live", "resize": 320, "rtsp": rtsp}}})
        r = priv.client()
        prepare_camera(r, "cam", fresh=True)
        sup = Supervisor(cfg, priv.url, workers=1, claim_idle_ms=1000).start()
        try:
            _wait_for_records(sup, r, 10, within_s=30)
            srv.stop()
            time.sleep(2.0)
            srv.start()
            t_back = time.monotonic()
            n = r.xlen(results_key("cam"))
            while r.xlen(results_key("cam")) <= n + 2:
                sup.poll()
                assert time.monotonic() - t_back < 15
                time.sleep(0.05)
            resumed = time.monotonic() - t_back
            restarts = sup.restarts()
        finally:
            sup.stop()
    names = [e["event"] for e in _events(r, "cam")]
    frames = [json.loads(f[b"json"]) for _, f in r.xrange(results_key("cam"))]
    pts = [f["pts"] for f in sorted(frames, key=lambda x: x["frame"])]
    print(f"\nRTSP restart through the decoder: records again {resumed:.2f}s after the server returned; {names}")
    assert resumed < 5.0 + 1.0  # first frame < 5 s, plus one worker round trip
    assert restarts == 0  # the decoder reconnected by itself
    assert "lost" in names and "reconnecting" in names and names.count("connected") >= 2
    assert all(b > a for a, b in zip(pts, pts[1:]))


def test_live_decoder_drops_and_counts_while_redis_is_away(priv: PrivateRedis, car_mp4: Path) -> None:
    from pipeline.app.supervisor import Supervisor
    from pipeline.registry import prepare_camera

    with start_rtsp_server(car_mp4) as srv:
        cfg = parse_config({"cameras": {"cam": {"source": srv.url, "models": CHEAP, "mode": "live", "resize": 320}}})
        r = priv.client()
        prepare_camera(r, "cam", fresh=True)
        sup = Supervisor(cfg, priv.url, workers=1, claim_idle_ms=1000).start()
        try:
            _wait_for_records(sup, r, 10, within_s=30)
            priv.kill()
            time.sleep(3.0)
            priv.start()
            t_back = time.monotonic()
            r = priv.client()
            while True:
                sup.poll()
                try:
                    if r.xlen(results_key("cam")) >= 5:
                        break
                except redis.ConnectionError:
                    pass
                assert time.monotonic() - t_back < 20
                time.sleep(0.05)
            resumed = time.monotonic() - t_back
            dec = next(c for c in sup.children if c.name == "decoder:cam")
        finally:
            sup.stop()
    restored = [e for e in _events(r, "cam") if e["event"] == "redis_restored"]
    dropped = int(r.hget("metrics:{cam}", "dropped") or 0)
    print(f"\nredis away 3s under a live RTSP camera: resumed {resumed:.2f}s after; dropped {dropped}; decoder restarts {dec.restarts}")
    assert dec.restarts == 0  # the decoder rode out the outage
    assert restored and restored[0]["dropped"] == dropped >= 20  # ~12.5 fps for 3 s
