"""Chaos through the console scripts a user runs, on a private redis-server with AOF:
stage processes killed with SIGKILL, Redis shut down and restarted twice. Every frame of
every camera must end with exactly one record, no log may hold a traceback, and the
commands must exit cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import redis
from conftest import mlink_cmd, write_config
from redis_private import PrivateRedis

from pipeline.keys import frames_key, results_key, status_key
from pipeline.video import probe_frame_count

MODELS = ["mog2_motion", "scene_light", "edge_density"]


@pytest.fixture
def aof_redis() -> PrivateRedis:
    srv = PrivateRedis(extra=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    yield srv
    srv.close()


# A model that takes MLINK_TEST_SLOW_S per frame (tests/slow_model.py): keeps a backlog of
# frames in Redis, so a Redis that loses its data is sure to lose some in flight.
SLOW = {"name": "slow", "adapter": "callable", "target": "slow_model:slow", "kind": "scalar"}
SLOW_ENV = {"PYTHONPATH": f"{Path(__file__).resolve().parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MLINK_TEST_SLOW_S": "0.03"}


def config(tmp_path: Path, car: Path, person: Path, bicycle: Path, slow: bool = False) -> tuple[Path, dict[str, int]]:
    cams = {"car": str(car), "person": str(person), "bicycle": str(bicycle)}
    cfg = write_config(tmp_path / "chaos.yaml", {
        "defaults": {"mode": "replay", "fps": 6, "resize": 160, "models": [*MODELS, SLOW] if slow else MODELS},
        "scheduler": {"workers": 2, "batch": 4},
        "cameras": {c: {"source": s} for c, s in cams.items()},
    })
    return cfg, {c: int(probe_frame_count(s, fps=6) or 0) for c, s in cams.items()}


class Proc:
    """A console-script process with its output in a log file."""

    def __init__(self, name: str, args: list[str], logdir: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.env = name, args, {**os.environ, **(env or {})}
        self.log = logdir / f"{name}.log"
        self.starts = 0
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as f:
            self.p = subprocess.Popen([*mlink_cmd(), *self.args], stdout=f, stderr=subprocess.STDOUT, env=self.env)
        self.starts += 1

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return int(self.p.returncode)


def records(r: redis.Redis, cam: str) -> list[int]:
    return [int(json.loads(f[b"json"])["frame"]) for _, f in r.xrange(results_key(cam))]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_connected(srv: PrivateRedis, workers: list[Proc], decoders: dict[str, Proc]) -> None:
    """Until every (re)started process has connected: a Redis that is away when a command
    STARTS is a one-line error by design; only one that goes away later is waited for."""
    r = srv.client()

    def started(cam: str) -> int:
        return sum(1 for _, f in r.xrange(status_key(cam)) if f[b"event"] == b"started")

    wait_for("workers to connect", lambda: all(w.log.read_text().count("worker serving") >= w.starts for w in workers))
    wait_for("decoders to connect", lambda: all(started(c) >= d.starts for c, d in decoders.items()))


def restart_redis(srv: PrivateRedis, down_s: float) -> None:
    srv.stop()  # SIGTERM: a SHUTDOWN that writes the AOF, as an operator's restart does
    time.sleep(down_s)
    srv.start()


def assert_no_traceback(*logs: Path) -> None:
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"


@pytest.mark.slow
def test_scale_out_commands_survive_kills_and_redis_restarts(tmp_path: Path, aof_redis: PrivateRedis, car_mp4: Path,
                                                             person_mp4: Path, trimmed_mp4: Path) -> None:
    cfg, expected = config(tmp_path, car_mp4, person_mp4, trimmed_mp4)
    url = aof_redis.url
    workers = [Proc(f"worker{i}", ["worker", "--redis", url, "--claim-idle-ms", "3000"], tmp_path) for i in range(2)]
    decoders = {c: Proc(f"decoder-{c}", ["decoder", c, "--config", str(cfg), "--redis", url], tmp_path) for c in expected}
    try:
        wait_connected(aof_redis, workers, decoders)
        r = aof_redis.client()
        wait_for("the first records", lambda: any(r.xlen(results_key(c)) for c in expected))
        workers[0].kill9()  # a worker dies with frames in hand...
        workers[0].start()  # ...and comes back (as a supervisor or systemd would restart it)
        decoders["person"].kill9()
        decoders["person"].start()
        wait_connected(aof_redis, workers, decoders)
        restart_redis(aof_redis, 4.0)
        time.sleep(3)
        workers[1].kill9()
        workers[1].start()
        wait_connected(aof_redis, workers, decoders)
        restart_redis(aof_redis, 3.0)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if all(d.p.poll() is not None for d in decoders.values()):
                r = aof_redis.client()
                if all(r.xlen(frames_key(c)) == 0 for c in expected):
                    break
            time.sleep(0.5)
    finally:
        codes = {c: d.stop() for c, d in decoders.items()}
        for w in workers:
            w.stop()
    assert codes == {c: 0 for c in expected}, {c: d.log.read_text()[-1500:] for c, d in decoders.items()}
    r = aof_redis.client()
    for cam, n in expected.items():
        frames = records(r, cam)
        assert sorted(frames) == list(range(n)), (cam, len(frames), n, sorted(set(range(n)) - set(frames))[:10])
    assert_no_traceback(*(w.log for w in workers), *(d.log for d in decoders.values()))
    logs = "".join(w.log.read_text() for w in workers)
    assert "redis unavailable" in logs and "redis back after" in logs


@pytest.mark.slow
def test_run_survives_redis_restarts_and_exits_zero(tmp_path: Path, aof_redis: PrivateRedis, car_mp4: Path,
                                                    person_mp4: Path, trimmed_mp4: Path) -> None:
    cfg, expected = config(tmp_path, car_mp4, person_mp4, trimmed_mp4)
    out = tmp_path / "r.jsonl"
    run = Proc("run", ["run", str(cfg), "--redis", aof_redis.url, "--quiet", "--out", str(out)], tmp_path)
    try:
        r = aof_redis.client()
        wait_for("the first records", lambda: any(r.xlen(results_key(c)) for c in expected))
        restart_redis(aof_redis, 4.0)
        time.sleep(3)
        restart_redis(aof_redis, 2.0)
        run.p.wait(240)
    finally:
        code = run.stop()
    text = run.log.read_text()
    assert code == 0, text[-3000:]
    assert_no_traceback(run.log)
    assert "redis unavailable" in text and "redis back after" in text
    got: dict[str, list[int]] = {c: [] for c in expected}
    for ln in out.read_text().splitlines():
        rec = json.loads(ln)
        got[rec["camera"]].append(int(rec["frame"]))
    r = aof_redis.client()
    for cam, n in expected.items():
        assert sorted(got[cam]) == list(range(n)), (cam, len(got[cam]), n)  # every frame once in the output...
        assert sorted(records(r, cam)) == list(range(n)), cam  # ...and exactly one record in Redis
    assert f"camera car: {expected['car']} records" in text



@pytest.mark.slow
def test_redis_that_comes_back_empty_is_reported_exactly(tmp_path: Path, car_mp4: Path, person_mp4: Path, trimmed_mp4: Path) -> None:
    """No persistence: Redis is killed and comes back empty. The run re-registers and goes on,
    never hangs, and names exactly the frames that lost their records; exit 1, no traceback."""
    srv = PrivateRedis().start()  # --appendonly no: a restart loses everything
    try:
        cfg, expected = config(tmp_path, car_mp4, person_mp4, trimmed_mp4, slow=True)
        out = tmp_path / "r.jsonl"
        run = Proc("run", ["run", str(cfg), "--redis", srv.url, "--quiet", "--out", str(out)], tmp_path, env=SLOW_ENV)
        try:
            r = srv.client()
            wait_for("the first records", lambda: sum(r.xlen(results_key(c)) for c in expected) > 20)
            # frames waiting for a worker: what a Redis without persistence loses
            wait_for("a backlog", lambda: sum(r.xlen(frames_key(c)) for c in expected) >= 5)
            srv.kill()
            time.sleep(2)
            srv.start()
            run.p.wait(240)
        finally:
            code = run.stop()
    finally:
        srv.close()
    text = run.log.read_text()
    assert code == 1, text[-3000:]
    assert_no_traceback(run.log)
    got: dict[str, set[int]] = {c: set() for c in expected}
    for ln in out.read_text().splitlines():
        rec = json.loads(ln)
        got[rec["camera"]].add(int(rec["frame"]))
    lost_lines = [ln for ln in text.splitlines() if "have no record" in ln]
    reported: dict[str, set[int]] = {}
    for ln in lost_lines:  # "mlink: error: camera car: 7 frame(s) sent have no record (frames 40-44, 47): ..."
        cam = ln.split("camera ", 1)[1].split(":", 1)[0]
        spec = ln.split("(frames ", 1)[1].split(")", 1)[0]
        frames = set()
        for part in spec.split(", "):
            a, _, b = part.partition("-")
            frames |= set(range(int(a), int(b or a) + 1))
        reported[cam] = frames
    for cam, n in expected.items():
        missing = set(range(n)) - got[cam]
        assert missing == reported.get(cam, set()), (cam, sorted(missing)[:20], sorted(reported.get(cam, set()))[:20])
    assert any(reported.values()), text[-2000:]  # the restart did cost frames, and they were named
