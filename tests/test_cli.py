"""The `mlink` console script end to end: real Redis, real footage, real models."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import redis
from conftest import (
    CHEAP_MODELS,
    DEFAULT_ZOO,
    GIF23,
    GIF35,
    check_record,
    mlink_cmd,
    read_jsonl,
    run_mlink,
    write_config,
)

from pipeline.keys import results_key


@pytest.fixture
def cheap_cfg(tmp_path: Path, gif23: Path) -> Path:
    return write_config(tmp_path / "cheap.yaml", {"defaults": {"models": CHEAP_MODELS}, "cameras": {"x": {"source": str(gif23)}}})


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "exited with code" not in proc.stderr, proc.stderr  # no crashed/restarted stage


def test_replay_default_zoo_one_record_per_frame_with_every_model(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    out = tmp_path / "r.jsonl"
    proc = run_mlink("replay", gif23, "--out", out, "--redis", redis_url, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc)
    recs = read_jsonl(out)
    assert [x["frame"] for x in recs] == list(range(23))
    for rec in recs:
        check_record(rec, "intel_preview_people-detection", DEFAULT_ZOO)
        assert (rec["width"], rec["height"]) == (480, 270)
    pts = [x["pts"] for x in recs]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert "summary: 23 records from 1 camera(s)" in proc.stderr
    rows = {ln.split()[0]: ln.split() for ln in proc.stderr.splitlines() if ln.startswith("  ") and ln.split()}
    for m in DEFAULT_ZOO:  # the summary's per-model table: every default model executed on all 23 frames
        assert m in rows and rows[m][1] == "23", proc.stderr
    # records also went to the result stream
    assert redis.Redis.from_url(redis_url).xlen(results_key("intel_preview_people-detection")) == 23


def test_replay_with_fps_config_and_print(tmp_path: Path, redis_url: str, car_mp4: Path, cheap_cfg: Path) -> None:
    out = tmp_path / "car.jsonl"
    proc = run_mlink("replay", car_mp4, "--config", cheap_cfg, "--fps", "2", "--out", out, "--print", "--redis", redis_url)
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc)
    recs = read_jsonl(out)
    # 30.16 s of video sampled at 2 fps: one frame per 0.5 s slot
    assert [x["frame"] for x in recs] == list(range(61))
    assert [x["pts_raw"] for x in recs[:3]] == [0.0, 0.56, 1.04]  # first frame at/after 0, 0.5, 1.0 s
    for rec in recs:
        check_record(rec, "intel_car-detection", CHEAP_MODELS)
    printed = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert printed == recs


def test_replay_two_videos_twice_on_the_same_redis(tmp_path: Path, redis_url: str, videos_dir: Path, cheap_cfg: Path) -> None:
    for attempt in range(2):  # the second replay must start clean (no stale camera state)
        out = tmp_path / f"two{attempt}.jsonl"
        proc = run_mlink("replay", videos_dir / GIF23, videos_dir / GIF35, "--config", cheap_cfg, "--out", out, "--redis", redis_url)
        assert proc.returncode == 0, proc.stderr
        assert_clean(proc)
        recs = read_jsonl(out)
        by_cam: dict[str, list[int]] = {}
        for x in recs:
            by_cam.setdefault(x["camera"], []).append(x["frame"])
        assert {c: sorted(v) for c, v in by_cam.items()} == {
            "intel_preview_people-detection": list(range(23)),
            "intel_preview_face-demographics-walking": list(range(35)),
        }
    st = run_mlink("status", "--redis", redis_url)
    assert st.returncode == 0, st.stderr
    lines = {ln.split()[0]: ln.split() for ln in st.stdout.splitlines()[1:]}
    assert lines["intel_preview_people-detection"][1:4] == ["eos", "23", "23"]
    assert lines["intel_preview_face-demographics-walking"][1:4] == ["eos", "35", "35"]


def test_models_lists_measured_costs(tmp_path: Path, cheap_cfg: Path, gif23: Path) -> None:
    proc = run_mlink("models", "--config", cheap_cfg, "--video", gif23, "--frames", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines()}
    for m in CHEAP_MODELS:
        assert m in rows, proc.stdout
        assert float(rows[m][5]) > 0  # ms/frame
    # name, adapter, kind, runtime, device
    assert rows["scene_light"][1:5] == ["CallableModel", "probs", "python", "cpu"]
    assert rows["mog2_motion"][1:5] == ["Mog2MotionModel", "scalar", "opencv", "cpu"]
    assert "frame 480x270" in proc.stdout
    js = run_mlink("models", "--config", cheap_cfg, "--video", gif23, "--frames", "2", "--json")
    assert js.returncode == 0, js.stderr
    info = json.loads(js.stdout)
    by = {r["name"]: r for r in info["models"]}
    assert set(by) == set(CHEAP_MODELS) and info["frame"] == [480, 270]
    assert by["haar_full_body"]["runtime"] == "opencv" and by["haar_full_body"]["ms"] > 0
    assert {"kind", "device", "mem_mb", "gpu_mb"} <= set(by["scene_light"])


# ----------------------------------------------------------------- live run
def live_config(tmp_path: Path, source: Path) -> Path:
    return write_config(tmp_path / "live.yaml", {
        "defaults": {"models": ["scene_light", "edge_density", "mog2_motion"], "mode": "live"},
        "cameras": {"lobby": {"source": str(source), "loop": True}},
    })


def start_run(*args: str | Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([*mlink_cmd(), "run", *map(str, args), "--quiet"], stdout=f, stderr=subprocess.STDOUT, text=True)


def stop_run(proc: subprocess.Popen, log: Path) -> tuple[int, str, list[psutil.Process]]:
    """SIGINT like Ctrl-C; returns exit code, output and the children it had."""
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return code, log.read_text(), children


def wait_registered(url: str, cam: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    """`mlink tail` on a camera no decoder registered yet is a user error: wait for it."""
    from pipeline.keys import CAMERAS_KEY

    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while not r.sismember(CAMERAS_KEY, cam):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def tail(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_mlink("tail", *args, timeout=timeout)


def assert_children_gone(children: list[psutil.Process]) -> None:
    assert children, "run should have started decoder/worker/redis children"
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"


def check_tail_output(out: str, n: int) -> list[dict]:
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert len(recs) == n
    assert all(x["camera"] == "lobby" for x in recs)
    frames = [x["frame"] for x in recs]
    assert frames == sorted(frames) and len(set(frames)) == n
    for x in recs:
        assert set(x["outputs"]) == {"scene_light", "edge_density", "mog2_motion"}
        assert all(o["origin"] == "executed" for o in x["outputs"].values())
    return recs


def test_run_and_tail_live_records(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    log = tmp_path / "run.log"
    proc = start_run(live_config(tmp_path, gif23), "--redis", redis_url, log=log)
    try:
        wait_registered(redis_url, "lobby", proc, log)
        t = tail("lobby", "--redis", redis_url, "--count", "5")
        assert t.returncode == 0, t.stderr
        check_tail_output(t.stdout, 5)
        t2 = tail("lobby", "--redis", redis_url, "--count", "3", "--from-start")
        assert t2.returncode == 0 and [json.loads(ln)["frame"] for ln in t2.stdout.splitlines()] == [0, 1, 2]
    finally:
        code, out, children = stop_run(proc, log)
    assert code == 0, out
    assert "Traceback" not in out and "stopped by user" in out
    assert "camera lobby:" in out
    assert_children_gone(children)


def test_run_with_embedded_redis_is_found_by_tail(tmp_path: Path, gif23: Path, mlink_home: Path) -> None:
    state = mlink_home / "embedded-redis.json"
    log = tmp_path / "run.log"
    proc = start_run(live_config(tmp_path, gif23), log=log)
    try:
        deadline = time.monotonic() + 30
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.exists(), log.read_text()
        url = json.loads(state.read_text())["url"]
        assert url.startswith("unix://")
        wait_registered(url, "lobby", proc, log)
        t = tail("lobby", "--count", "5")  # no --redis: finds the embedded server
        assert t.returncode == 0, t.stderr
        check_tail_output(t.stdout, 5)
        st = run_mlink("status")
        assert st.returncode == 0 and "lobby" in st.stdout, st.stderr
    finally:
        code, out, children = stop_run(proc, log)
    assert code == 0, out
    assert "Traceback" not in out
    assert_children_gone(children)  # decoder, workers and the redis-server itself
    assert not state.exists()  # the state file goes with the server
    t = tail("lobby", "--count", "1", timeout=20)
    assert t.returncode == 1 and t.stderr.startswith("mlink: error: no --redis given and no running mlink")
