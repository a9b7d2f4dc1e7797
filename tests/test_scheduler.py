"""Scheduler workers against a real Redis: one record per frame, exactly once."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import redis
from conftest import CHEAP_MODELS, check_record

from pipeline.config import parse_config
from pipeline.exitcodes import ExitCode
from pipeline.keys import GROUP, frames_key, results_key, status_key
from pipeline.registry import prepare_camera
from stages.decoder import Decoder
from stages.scheduler import Worker


def decode_into_redis(r: redis.Redis, name: str, source: Path, models: list[Any] | None = None, **kw: Any) -> None:
    body = {"source": str(source), "models": models or CHEAP_MODELS, "window": 10_000, **kw}
    cam = parse_config({"cameras": {name: body}}).cameras[name]
    prepare_camera(r, name, fresh=True)
    assert Decoder(cam, r).run() == ExitCode.OK


def records(r: redis.Redis, cam: str) -> list[dict]:
    return [json.loads(f[b"json"]) for _, f in r.xrange(results_key(cam))]


def test_one_record_per_frame_with_every_model(r: redis.Redis, gif23: Path, gif35: Path) -> None:
    decode_into_redis(r, "people", gif23)
    decode_into_redis(r, "walk", gif35, resize=240)
    w = Worker(r, batch=8, block_ms=50)
    stats = w.run(idle_exit_s=1.0)
    assert stats.frames == 23 + 35 and stats.bad_frames == 0
    for cam, n in (("people", 23), ("walk", 35)):
        recs = records(r, cam)
        assert [x["frame"] for x in recs] == list(range(n))
        pts = [x["pts"] for x in recs]
        assert all(b > a for a, b in zip(pts, pts[1:]))
        for rec in recs:
            check_record(rec, cam, CHEAP_MODELS)
        assert r.xlen(frames_key(cam)) == 0  # acked and deleted
        assert r.xpending(frames_key(cam), GROUP)["pending"] == 0
    assert records(r, "walk")[0]["width"] == 240
    assert records(r, "people")[0]["width"] == 480
    # MOG2 is per camera: the first frame of each camera is all foreground
    assert records(r, "people")[0]["outputs"]["mog2_motion"]["value"] == 1.0
    assert records(r, "walk")[0]["outputs"]["mog2_motion"]["value"] == 1.0


def test_two_workers_share_the_group_without_duplicates(r: redis.Redis, gif35: Path) -> None:
    decode_into_redis(r, "pair", gif35, models=["scene_light", "edge_density"])
    # Shared cameras (scheduler.share_cameras): by default each camera has one owner (tests/test_assignment.py).
    workers = [Worker(redis.Redis(connection_pool=r.connection_pool), batch=2, block_ms=50, name=f"w{i}", share_cameras=True)
               for i in range(2)]
    for w in workers:
        w.refresh_cameras(force=True)  # models loaded before the race starts: neither has a head start
    go = threading.Barrier(2)

    def serve(w: Worker) -> None:
        go.wait(10)
        w.run(idle_exit_s=1.0)

    threads = [threading.Thread(target=serve, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    recs = records(r, "pair")
    frames = [x["frame"] for x in recs]
    assert len(frames) == len(set(frames)), "a frame was processed twice"
    assert sorted(frames) == list(range(35))  # and none was lost
    by_worker = {w.name: sorted(x["frame"] for x in recs if x["worker"] == w.name) for w in workers}
    assert {x["worker"] for x in recs} == {"w0", "w1"}, f"one worker did everything: { {k: len(v) for k, v in by_worker.items()} }"
    for w in workers:  # each worker's records are the frames it counted, and it did take part
        assert by_worker[w.name] and len(by_worker[w.name]) == w.stats.frames, (w.name, by_worker, w.stats)
    consumers = {c["name"].decode(): c for c in r.xinfo_consumers(frames_key("pair"), GROUP)}
    assert set(consumers) == {"w0", "w1"} and all(c["pending"] == 0 for c in consumers.values())


def test_a_dead_workers_pending_frames_are_reclaimed(r: redis.Redis, gif23: Path) -> None:
    decode_into_redis(r, "crash", gif23, models=["scene_light"])
    # A worker that read 8 frames and died before writing their records.
    r.xreadgroup(GROUP, "dead-worker", {frames_key("crash"): ">"}, count=8)
    assert r.xpending(frames_key("crash"), GROUP)["pending"] == 8
    w = Worker(r, batch=4, block_ms=50, claim_idle_ms=200, name="alive")
    w.run(idle_exit_s=1.5)
    recs = records(r, "crash")
    assert sorted(x["frame"] for x in recs) == list(range(23))
    assert len(recs) == 23  # no frame twice
    assert w.stats.reclaimed == 8
    assert r.xpending(frames_key("crash"), GROUP)["pending"] == 0


def test_bad_frame_entry_is_reported_and_skipped(r: redis.Redis, gif23: Path) -> None:
    decode_into_redis(r, "bad", gif23, models=["scene_light"])
    r.xadd(frames_key("bad"), {"camera": "bad", "frame": 99, "pts": "0", "wall": "0", "w": 4, "h": 4, "enc": "jpeg", "img": b"garbage"})
    r.xadd(frames_key("bad"), {"camera": "bad", "frame": 100})
    w = Worker(r, batch=8, block_ms=50)
    w.run(idle_exit_s=1.0)
    assert w.stats.frames == 23 and w.stats.bad_frames == 2
    assert [x["frame"] for x in records(r, "bad")] == list(range(23))
    errs = [json.loads(f[b"json"]) for _, f in r.xrange(status_key("bad")) if f[b"event"] == b"bad_frame"]
    assert len(errs) == 2
    assert "corrupt JPEG" in errs[0]["reason"] and "lacks field(s)" in errs[1]["reason"]
    assert all(e["reason"].startswith("camera bad: bad frame entry") for e in errs)
    assert r.xlen(frames_key("bad")) == 0


def test_a_worker_too_slow_for_its_frames_does_not_record_them_twice(r: redis.Redis, gif23: Path) -> None:
    """Worker A reads 8 frames and stalls past claim_idle_ms; B reclaims and records them;
    when A finally finishes, its script finds them acked and writes nothing."""
    import time

    decode_into_redis(r, "slow", gif23)
    a = Worker(r, batch=8, block_ms=50, name="a", claim_idle_ms=50, share_cameras=True)
    a.refresh_cameras(force=True)
    stale = a._read(a.serving())
    assert len(stale) == 8
    time.sleep(0.1)  # longer than claim_idle_ms: A looks dead
    b = Worker(r, batch=8, block_ms=50, name="b", claim_idle_ms=50, share_cameras=True)
    b.refresh_cameras(force=True)
    reclaimed = b._reclaim(b.serving())
    assert sorted(e[1] for e in reclaimed) == sorted(e[1] for e in stale)
    b.process(reclaimed)
    a.process(stale)  # A wakes up with the same frames
    recs = records(r, "slow")
    assert sorted(x["frame"] for x in recs) == list(range(8)) and {x["worker"] for x in recs} == {"b"}
    assert a.stats.duplicates_avoided == 8 and b.stats.duplicates_avoided == 0
    assert int(r.hget("metrics:{slow}", "processed")) == 8 and int(r.hget("metrics:{slow}", "reclaimed")) == 8
