"""stages.assignment: one owner per camera among the live workers, and what happens when one goes."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import redis
from conftest import write_config
from test_scheduler import decode_into_redis, records

from pipeline.keys import GROUP, WORKERS_KEY, frames_key
from stages.assignment import Membership, assign, live_workers
from stages.scheduler import Worker


def test_cameras_are_dealt_evenly_and_every_worker_computes_the_same_owners() -> None:
    cams = ["c", "a", "e", "b", "d"]
    owners = assign(cams, ["w2", "w1"])
    assert owners == {"a": "w1", "b": "w2", "c": "w1", "d": "w2", "e": "w1"}
    assert assign(reversed(cams), ["w1", "w2", "w1"]) == owners  # order and repeats do not matter
    assert assign(cams, ["w1"]) == dict.fromkeys(cams, "w1")
    assert assign(cams, []) == {}
    counts = [list(assign([f"cam{i}" for i in range(7)], ["x", "y", "z"]).values()).count(w) for w in "xyz"]
    assert sorted(counts) == [2, 2, 3]


def test_owners_are_sticky_a_change_moves_only_what_it_must() -> None:
    owners = assign(["a", "b", "c", "d"], ["w1", "w2"])
    assert owners == {"a": "w1", "b": "w2", "c": "w1", "d": "w2"}
    # a new camera (the decoders register one after the other) moves no other camera
    grown = assign(["a", "b", "c", "d", "0new"], ["w1", "w2"], owners)
    assert {c: grown[c] for c in owners} == owners and grown["0new"] == "w1"
    # a worker joins: it takes only what evens the load (2-2-1 from 3-2), the rest stay put
    joined = assign(grown, ["w1", "w2", "w3"], grown)
    moved = {c for c in grown if joined[c] != grown[c]}
    assert len(moved) == 1 and all(joined[c] == "w3" for c in moved)
    assert sorted(list(joined.values()).count(w) for w in ("w1", "w2", "w3")) == [1, 2, 2]
    # a worker dies: its cameras go to the least loaded; nobody else's move
    left = assign(grown, ["w1", "w3"], joined)
    assert all(left[c] == joined[c] for c in grown if joined[c] != "w2")
    assert sorted(list(left.values()).count(w) for w in ("w1", "w3")) == [2, 3]
    # an owner that is not live is never kept, and one worker takes everything
    assert assign(["a", "b"], ["w9"], {"a": "w1", "b": "w9"}) == {"a": "w9", "b": "w9"}


def test_deal_writes_owners_once_and_a_concurrent_writer_wins_cleanly(r: redis.Redis) -> None:
    from pipeline.keys import OWNERS_KEY

    a, b = Membership(r, "a", lease_ms=5000), Membership(r, "b", lease_ms=5000)
    assert a.deal(["x", "y"], ["a"]) == {"x": "a", "y": "a"}
    assert r.hget(OWNERS_KEY, "#v") == b"1"
    assert b.deal(["x", "y"], ["a", "b"]) == {"x": "a", "y": "b"}  # b joins: takes one, x stays with a
    assert a.deal(["x", "y"], ["a", "b"]) == {"x": "a", "y": "b"}  # a agrees, and writes nothing
    assert r.hget(OWNERS_KEY, "#v") == b"2"
    # a writer that read version 2 loses to one that wrote meanwhile, and recomputes from it
    r.hset(OWNERS_KEY, mapping={"x": "b", "#v": 7})
    assert a._cas(keys=[OWNERS_KEY], args=["2", '{"x": "a"}', "[]"]) == 0
    assert r.hget(OWNERS_KEY, "x") == b"b"
    assert a.deal(["x", "y", "z"], ["a", "b"]) == {"x": "b", "y": "b", "z": "a"}  # sticky to what b wrote
    # a dead owner's entry of a camera no longer registered is dropped
    r.hset(OWNERS_KEY, "old", "gone-worker")
    a.deal(["x", "y", "z"], ["a", "b"])
    assert r.hget(OWNERS_KEY, "old") is None


def test_membership_lease_expires_and_leave_is_immediate(r: redis.Redis) -> None:
    a, b = Membership(r, "a", lease_ms=300), Membership(r, "b", lease_ms=300)
    assert a.beat() == ["a"]
    assert b.beat() == ["a", "b"]
    time.sleep(0.2)
    assert b.beat() == ["a", "b"]  # a still within its lease
    time.sleep(0.2)
    assert b.beat() == ["b"]  # a stopped beating 400 ms ago: gone, and removed from the set
    assert r.zrange(WORKERS_KEY, 0, -1) == [b"b"]
    a.beat()
    a.leave()
    assert b.live() == ["b"]
    with pytest.raises(ValueError, match="at least 100 ms"):
        Membership(r, "c", lease_ms=10)


def test_a_worker_says_when_its_lease_lapsed(r: redis.Redis) -> None:
    """A worker that could not beat for longer than its lease (a step that held it up) says so on
    its next beat, one line, and counts it: meanwhile another worker may have taken its cameras."""
    said: list[str] = []
    w = Worker(r, name="w", lease_ms=200, say=said.append)
    w._beat()
    time.sleep(0.05)
    w._beat()
    assert said == [] and w.stats.lease_lapses == 0  # within the lease: nothing to say
    time.sleep(0.35)
    assert live_workers(r) == []  # the lease ran out: to the others it is gone
    w._beat()
    assert w.stats.lease_lapses == 1
    assert len(said) == 1, said
    m = re.search(r"worker w: lease lapsed: no beat for (\d+\.\d) s \(lease 0\.2 s\)", said[0])
    assert m and float(m.group(1)) >= 0.3, said
    assert live_workers(r) == ["w"]


def _serve(workers: list[Worker], idle_exit_s: float) -> None:
    for _ in range(2):  # models loaded, and every worker has seen the others beat, before the race starts
        for w in workers:
            w.refresh_cameras(force=True)
    go = threading.Barrier(len(workers))

    def serve(w: Worker) -> None:
        go.wait(10)
        w.run(idle_exit_s=idle_exit_s)

    threads = [threading.Thread(target=serve, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_two_workers_two_cameras_each_camera_served_by_one_worker(r: redis.Redis, gif23: Path, gif35: Path) -> None:
    decode_into_redis(r, "cam-a", gif23, models=["scene_light", "edge_density"])
    decode_into_redis(r, "cam-b", gif35, models=["scene_light", "edge_density"])
    workers = [Worker(redis.Redis(connection_pool=r.connection_pool), batch=2, block_ms=50, name=f"w{i}") for i in range(2)]
    _serve(workers, idle_exit_s=1.0)
    by_cam = {cam: records(r, cam) for cam in ("cam-a", "cam-b")}
    assert sorted(x["frame"] for x in by_cam["cam-a"]) == list(range(23))  # none lost, none twice
    assert sorted(x["frame"] for x in by_cam["cam-b"]) == list(range(35))
    assert {x["worker"] for x in by_cam["cam-a"]} == {"w0"}  # one owner per camera, the cameras dealt out
    assert {x["worker"] for x in by_cam["cam-b"]} == {"w1"}
    assert r.zcard(WORKERS_KEY) == 0  # both left when they stopped


def test_a_dead_owners_camera_moves_to_the_standby_after_its_lease(r: redis.Redis, gif23: Path) -> None:
    """w0 owns the camera, reads 8 frames and dies (no record, no leave): w1, a hot standby,
    takes the camera once w0's lease has run out, reclaims the 8 frames and serves the rest."""
    decode_into_redis(r, "solo", gif23, models=["scene_light"])
    w0 = Worker(r, batch=8, block_ms=50, name="w0", lease_ms=400, claim_idle_ms=200)
    w1 = Worker(r, batch=8, block_ms=50, name="w1", lease_ms=400, claim_idle_ms=200)
    w0.refresh_cameras(force=True)
    w1.refresh_cameras(force=True)
    assert w0.serving() == ["solo"] and w1.serving() == []
    assert len(w0._read(w0.serving())) == 8  # ...and w0 dies with them
    assert w1.step() == 0  # standby: w0 is still alive as far as anyone knows
    assert records(r, "solo") == []
    w1.run(idle_exit_s=1.5)
    recs = records(r, "solo")
    assert sorted(x["frame"] for x in recs) == list(range(23)) and {x["worker"] for x in recs} == {"w1"}
    assert w1.stats.reclaimed == 8
    assert r.xpending(frames_key("solo"), GROUP)["pending"] == 0


def test_a_worker_that_stops_hands_its_cameras_over_at_once(r: redis.Redis, gif23: Path) -> None:
    decode_into_redis(r, "solo", gif23, models=["scene_light"])
    w0 = Worker(r, batch=4, block_ms=50, name="w0", lease_ms=60_000)
    w1 = Worker(r, batch=4, block_ms=50, name="w1", lease_ms=60_000)
    w0.refresh_cameras(force=True)  # w0 came first: the camera is its own
    w1.refresh_cameras(force=True)
    assert w0.serving() == ["solo"] and w1.serving() == []
    calls = {"n": 0}

    def stop_after_two_reads() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    w0.should_stop = stop_after_two_reads
    w0.run()
    assert w0.stats.frames == 8  # two reads of 4, then it stopped (and left)
    w1._last_refresh = -1e9  # its next step looks at the live workers again
    w1.run(idle_exit_s=1.0)  # a 60 s lease would have kept the camera with w0 for a minute
    recs = records(r, "solo")
    assert sorted(x["frame"] for x in recs) == list(range(23))
    assert {x["worker"] for x in recs if x["frame"] >= 8} == {"w1"}


def test_a_busy_worker_keeps_its_lease_and_a_hung_one_loses_it(r: redis.Redis) -> None:
    """The lease thread beats while one long step runs (link training), so the worker keeps its
    cameras; a loop that has not come round for ``stall_s`` is hung, and its cameras move."""
    w = Worker(r, name="w", lease_ms=300, stall_s=1.0)
    other = Membership(r, "other", lease_ms=300)
    stop, thread = w._start_heartbeat()
    try:
        w._loop_alive = time.monotonic()  # a step began now and runs on
        time.sleep(0.8)  # well past the 300 ms lease: only the thread kept it
        assert "w" in other.live()
        w._loop_alive = time.monotonic() - 5.0  # the same step, 5 s later: hung
        time.sleep(0.5)
        assert "w" not in other.live()
    finally:
        stop.set()
        assert thread is not None
        thread.join(2)


def test_mlink_replay_with_two_workers_moves_no_camera_mid_run(tmp_path: Path, redis_url: str, gif23: Path, gif35: Path,
                                                                store_gif: Path) -> None:
    """Through the console script: the decoders start once both workers have joined, so every
    camera keeps the owner it starts with (a camera that moves restarts MOG2 on its new owner)."""
    from conftest import read_jsonl, run_mlink

    from pipeline.app.bench_score import camera_moves

    out = tmp_path / "rec.jsonl"
    cfg = write_config(tmp_path / "c.yaml", {"defaults": {"models": ["mog2_motion", "scene_light"]}, "cameras": {"x": {"source": str(gif35)}}})
    proc = run_mlink("replay", gif23, gif35, store_gif, "--config", cfg, "--workers", "2", "--out", out, "--redis", redis_url, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = read_jsonl(out)
    by_cam: dict[str, dict[int, dict]] = {}
    for rec in recs:
        by_cam.setdefault(rec["camera"], {})[rec["frame"]] = rec
    assert len(by_cam) == 3 and len(recs) == sum(len(v) for v in by_cam.values())  # no frame twice
    assert camera_moves(by_cam) == {cam: [] for cam in by_cam}, {c: sorted({x["worker"] for x in v.values()}) for c, v in by_cam.items()}
    owners = {cam: {x["worker"] for x in v.values()} for cam, v in by_cam.items()}
    assert all(len(w) == 1 for w in owners.values())
    assert len(set().union(*owners.values())) == 2  # the three cameras dealt over both workers


def test_camera_moves_lists_the_frames_where_a_camera_changed_worker() -> None:
    from pipeline.app.bench_score import camera_moves

    run = {"a": {0: {"worker": "w1"}, 1: {"worker": "w1"}, 3: {"worker": "w2"}, 2: {"worker": "w1"}, 4: {}, 5: {"worker": "w1"}},
           "b": {0: {"worker": "w2"}}}
    assert camera_moves(run) == {"a": [3, 5], "b": []}  # in frame order; a record without a worker changes nothing
