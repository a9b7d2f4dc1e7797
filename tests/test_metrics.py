"""The Prometheus /metrics endpoint, scraped over real HTTP from counters in a real Redis."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from redis_private import PrivateRedis

from pipeline.config import parse_config
from pipeline.keys import frames_key
from pipeline.metrics import count_status, serve_metrics
from pipeline.streams import FrameMsg, encode_frame


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_endpoint_per_camera(priv: PrivateRedis, gif23: Path) -> None:
    from pipeline.registry import register_camera
    from stages.scheduler import Worker

    cfg = parse_config({"cameras": {"m1": {"source": str(gif23), "models": ["scene_light", "edge_density"]}}})
    r = priv.client()
    register_camera(r, cfg.cameras["m1"])
    img = np.full((24, 32, 3), 90, np.uint8)
    for i in range(30):
        r.xadd(frames_key("m1"), encode_frame(FrameMsg("m1", i, i / 10, i / 10, time.time() - 3, 32, 24, img)))
    r.hset("camera:{m1}", mapping={"next_frame": 35, "dropped": 2})
    Worker(r, batch=8, block_ms=20).run(idle_exit_s=0.3)
    for i in range(30, 35):  # still queued: the lag
        r.xadd(frames_key("m1"), encode_frame(FrameMsg("m1", i, i / 10, i / 10, time.time() - 2, 32, 24, img)))
    for ev in ("lost", "reconnecting", "connecting", "reconnecting"):
        count_status(r, "m1", ev)
        r.xadd("status:{m1}", {"event": ev, "json": f'{{"event": "{ev}", "camera": "m1"}}'})

    server, _ = serve_metrics(r, 0)
    try:
        port = server.server_port
        m = scrape(port)
        cam = (("camera", "m1"),)
        assert m[("mlink_frames_processed_total", cam)] == 30
        assert m[("mlink_frames_decoded_total", cam)] == 35
        assert m[("mlink_frames_dropped_total", cam)] == 2
        assert m[("mlink_reconnects_total", cam)] == 2
        assert m[("mlink_stream_lag_frames", cam)] == 5
        assert 1.5 < m[("mlink_stream_lag_seconds", cam)] < 30
        assert m[("mlink_model_outputs_total", (("camera", "m1"), ("model", "scene_light"), ("origin", "executed")))] == 30
        assert m[("mlink_camera_state", (("camera", "m1"), ("state", "reconnecting")))] == 1
        # fps gauges: rate between two scrapes
        r.hincrby("metrics:{m1}", "processed", 10)
        r.hincrby("camera:{m1}", "next_frame", 10)
        time.sleep(0.5)
        m2 = scrape(port)
        assert 5 < m2[("mlink_processed_fps", cam)] < 25
        assert 5 < m2[("mlink_decoded_fps", cam)] < 25
    finally:
        server.shutdown()


def test_supervisor_serves_restart_counts(priv: PrivateRedis, gif23: Path) -> None:
    from pipeline.app.supervisor import Child, Supervisor

    cfg = parse_config({"cameras": {"s1": {"source": str(gif23), "models": ["scene_light"]}}})
    sup = Supervisor(cfg, priv.url, workers=1, backoff_max_s=0.5)
    sup.children = [Child("worker:0", os._exit, (1,))]
    sup.start()
    port = sup.serve_metrics(0)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10.0 and sup.children[0].restarts < 2:
            sup.poll()
            time.sleep(0.02)
        m = scrape(port)
    finally:
        sup.stop()
    assert m[("mlink_process_restarts_total", (("camera", ""), ("process", "worker:0")))] >= 2


def test_a_scrape_while_redis_is_away_answers_at_once_without_a_traceback(priv: PrivateRedis, capfd) -> None:  # type: ignore[no-untyped-def]
    """The endpoint reports mlink_redis_up 0 during an outage (and 1 again after), with no
    traceback on stderr and no hang; the client is one that does not wait out outages."""
    r = priv.client()
    server, _ = serve_metrics(redis_no_wait(priv), 0)
    try:
        port = server.server_port
        assert scrape(port)[("mlink_redis_up", ())] == 1
        priv.kill()
        t0 = time.monotonic()
        assert scrape(port)[("mlink_redis_up", ())] == 0
        assert time.monotonic() - t0 < 5
        priv.start()
        assert scrape(port)[("mlink_redis_up", ())] == 1
    finally:
        server.shutdown()
        r.close()
    assert "Traceback" not in capfd.readouterr().err


def redis_no_wait(priv: PrivateRedis):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(priv.url, socket_connect_timeout=1, socket_timeout=2)
