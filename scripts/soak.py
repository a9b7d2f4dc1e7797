#!/usr/bin/env python3
"""Soak test: live cameras for a long time while stage processes are killed and Redis restarts.

    .venv/bin/python scripts/soak.py --duration 1800 --out soak/      # the README's 30-minute figures

Starts a private redis-server (AOF everysec) on a free loopback port, N live cameras
(looping the committed test clips) as `mlink decoder` processes and two `mlink worker`
processes (the console scripts a user runs). Meanwhile it kills a random worker or decoder
with SIGKILL at random intervals and starts it again, and restarts Redis (SHUTDOWN, start).
Every few seconds it samples Redis memory, each process's RSS, and per camera the frames
decoded, records, counted losses (dropped, skipped) and record latency.

At the end it prints, per camera: frames decoded = records + dropped (never sent: Redis away
or the reader ahead of the camera loop; or sent and trimmed by the live bound unprocessed)
+ skipped (older than the lag bound) + still queued, exactly, as counted in Redis (a frame
decoded inside a decoder at the instant it is SIGKILLed is not counted anywhere), p50/p99
record latency outside the fault windows, and Redis memory and stage RSS after the warm-up
(the first minute: models load) and at the end; and writes soak.json and soak.png (memory,
RSS and latency over time).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline.keys import camera_key, frames_key, metrics_key, results_key  # noqa: E402
from pipeline.redis_conn import redis_server_binary  # noqa: E402

CLIPS = ["intel_car-detection.mp4", "intel_one-by-one-person-detection.mp4", "intel_preview_people-detection.gif",
         "intel_preview_face-demographics-walking.gif"]
MLINK = [sys.executable, "-m", "pipeline.app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, workdir: Path) -> None:
        self.port, self.dir = free_port(), workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no", "--loglevel", "warning"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            for _ in range(100):
                try:
                    redis.Redis(port=self.port).ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.05)
            time.sleep(0.2)
        raise SystemExit("soak: redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class Stage:
    def __init__(self, name: str, args: list[str], logdir: Path) -> None:
        self.name, self.args, self.log = name, args, logdir / f"{name}.log"
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as f:
            self.proc = subprocess.Popen([*MLINK, *self.args], stdout=f, stderr=subprocess.STDOUT, cwd=REPO)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=1800, help="seconds (default 1800 = 30 minutes)")
    ap.add_argument("--cameras", type=int, default=3)
    ap.add_argument("--fps", type=float, default=8)
    ap.add_argument("--kill-every", type=float, default=45, help="mean seconds between SIGKILLs of a stage")
    ap.add_argument("--redis-restart-every", type=float, default=300, help="seconds between Redis restarts")
    ap.add_argument("--max-lag", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("soak"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results-max-len", type=int, default=2000,
                    help="retention of results:{cam} (records); small so that it fills within the soak and memory must plateau")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="mlink-soak-"))
    srv = Server(work)
    srv.start()
    cams = {f"cam{i}": str(REPO / "tests" / "data" / CLIPS[i % len(CLIPS)]) for i in range(a.cameras)}
    cfg = work / "soak.yaml"
    cfg.write_text(yaml.safe_dump({"defaults": {"mode": "live", "loop": True, "fps": a.fps, "resize": 320, "max_lag_s": a.max_lag,
                                                "results_max_len": a.results_max_len,
                                                "models": ["mog2_motion", "scene_light", "edge_density", "haar_full_body"]},
                                   "scheduler": {"batch": 4}, "cameras": {c: {"source": s} for c, s in cams.items()}}))
    stages = [Stage(f"worker{i}", ["worker", "--redis", srv.url, "--claim-idle-ms", "3000"], a.out) for i in range(2)]
    stages += [Stage(f"decoder-{c}", ["decoder", c, "--config", str(cfg), "--redis", srv.url], a.out) for c in cams]
    r = redis.Redis(port=srv.port, socket_connect_timeout=1)
    samples: list[dict] = []
    faults: list[tuple[float, str]] = []
    latencies: dict[str, list[tuple[float, float]]] = {c: [] for c in cams}
    last_id = {c: "0-0" for c in cams}
    t0 = time.monotonic()
    next_kill = t0 + 20 + rng.expovariate(1 / a.kill_every)
    next_restart = t0 + a.redis_restart_every
    bar = tqdm(total=int(a.duration), unit="s", desc="soak")
    try:
        while (now := time.monotonic()) - t0 < a.duration:
            if now >= next_kill:
                victim = rng.choice(stages)
                victim.kill9()
                victim.start()
                faults.append((now - t0, f"kill -9 {victim.name}"))
                next_kill = now + rng.expovariate(1 / a.kill_every)
            if now >= next_restart:
                faults.append((now - t0, "redis restart"))
                srv.stop()
                time.sleep(3)
                srv.start()
                next_restart = time.monotonic() + a.redis_restart_every
            try:
                row = {"t": now - t0, "redis_mb": int(r.info("memory")["used_memory"]) / 2**20,
                       "rss_mb": sum(psutil.Process(s.proc.pid).memory_info().rss for s in stages if s.proc.poll() is None) / 2**20}
                for c in cams:
                    for _, f in r.xrange(results_key(c), min=f"({last_id[c]}", count=10_000):
                        rec = json.loads(f[b"json"])
                        latencies[c].append((now - t0, rec["latency_ms"]["total"] / 1000))
                    tail = r.xrevrange(results_key(c), count=1)
                    if tail:
                        last_id[c] = tail[0][0].decode()
                samples.append(row)
            except (redis.ConnectionError, psutil.Error):
                pass  # Redis is restarting or a stage was just killed: sample again next time
            time.sleep(5)
            bar.update(int(time.monotonic() - t0) - bar.n)
    finally:
        bar.close()
        for s in stages:
            if s.name.startswith("decoder"):
                s.stop()
        time.sleep(5)  # let the workers finish what was sent
        for s in stages:
            s.stop()
    acct = {}
    for c in cams:
        info = r.hgetall(camera_key(c))
        m = {k.decode(): int(v) for k, v in r.hgetall(metrics_key(c)).items()}
        indexed = int(info.get(b"next_frame", 0))  # frames that got a frame index (sent to Redis)
        undelivered = m.get("dropped", 0)  # decoded but never sent: Redis away, or the reader ahead of the loop
        trimmed = int(info.get(b"dropped", 0)) + m.get("trimmed", 0)  # sent, then trimmed by the live bound unprocessed
        queued = int(r.xlen(frames_key(c)))
        acct[c] = {"decoded": indexed + undelivered, "records": r.xlen(results_key(c)), "processed": m.get("processed", 0),
                   "dropped": undelivered + trimmed, "undelivered": undelivered, "trimmed": trimmed,
                   "skipped": m.get("skipped", 0), "queued": queued}
        acct[c]["unaccounted"] = indexed - acct[c]["processed"] - trimmed - acct[c]["skipped"] - queued
    srv.stop()
    windows = [(t - 5, t + 15) for t, _ in faults]
    lat = {}
    for c, xs in latencies.items():
        quiet = [v for t, v in xs if not any(a_ <= t <= b for a_, b in windows)]
        lat[c] = {"p50": float(np.percentile(quiet, 50)) if quiet else None, "p99": float(np.percentile(quiet, 99)) if quiet else None,
                  "records": len(xs)}
    result = {"command": ["scripts/soak.py", *(argv or sys.argv[1:])], "duration_s": a.duration, "faults": faults,
              "accounting": acct, "latency_s": lat, "samples": samples, "latencies": latencies}
    (a.out / "soak.json").write_text(json.dumps(result, indent=1))
    print(f"{len(faults)} faults: {sum('kill' in f for _, f in faults)} SIGKILLs, {sum('redis' in f for _, f in faults)} Redis restarts")
    print(f"{'camera':8s} {'decoded':>8s} {'records':>8s} {'dropped':>8s} {'skipped':>8s} {'queued':>7s} {'unaccounted':>11s} {'p50 s':>6s} {'p99 s':>6s}")
    for c in cams:
        x, lt = acct[c], lat[c]
        print(f"{c:8s} {x['decoded']:8d} {x['processed']:8d} {x['dropped']:8d} {x['skipped']:8d} {x['queued']:7d} {x['unaccounted']:11d} "
              f"{lt['p50'] or float('nan'):6.2f} {lt['p99'] or float('nan'):6.2f}")
    if samples:
        warm = next((x for x in samples if x["t"] >= min(60.0, a.duration / 2)), samples[0])
        print(f"after warm-up ({warm['t']:.0f} s) -> end: redis memory {warm['redis_mb']:.1f} -> {samples[-1]['redis_mb']:.1f} MB; "
              f"stage RSS {warm['rss_mb']:.0f} -> {samples[-1]['rss_mb']:.0f} MB (max {max(x['rss_mb'] for x in samples):.0f})")
        # Once every camera's retention is full (results_max_len records at the camera's rate, x1.5
        # for the approximate trim), Redis memory must stop growing: the slope over the rest says so.
        full = min(1.5 * a.results_max_len / a.fps, a.duration / 2)
        late = [x for x in samples if x["t"] >= full]
        if len(late) >= 3:
            t = np.array([x["t"] for x in late]) / 3600
            for k in ("redis_mb", "rss_mb"):
                y = np.array([x[k] for x in late])
                slope = float(np.polyfit(t, y, 1)[0])
                result.setdefault("plateau", {})[k] = {"from_s": full, "min": float(y.min()), "max": float(y.max()), "slope_mb_per_h": slope}
            pl = result["plateau"]
            print(f"from {full:.0f} s (retention full) to the end: redis memory {pl['redis_mb']['min']:.1f}-{pl['redis_mb']['max']:.1f} MB, "
                  f"trend {pl['redis_mb']['slope_mb_per_h']:+.1f} MB/h; stage RSS {pl['rss_mb']['min']:.0f}-{pl['rss_mb']['max']:.0f} MB, "
                  f"trend {pl['rss_mb']['slope_mb_per_h']:+.0f} MB/h")
            (a.out / "soak.json").write_text(json.dumps(result, indent=1))
        plot(result, a.out / "soak.png")
    return 0 if all(x["unaccounted"] == 0 for x in acct.values()) else 1


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["samples"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot([x["t"] for x in s], [x["redis_mb"] for x in s])
    axes[0].set_ylabel("Redis MB")
    axes[1].plot([x["t"] for x in s], [x["rss_mb"] for x in s])
    axes[1].set_ylabel("stages RSS MB")
    for ax in axes[:2]:
        for t, _ in res["faults"]:
            ax.axvline(t, color="red", alpha=0.2, lw=1)
    for c, xs in res["latencies"].items():
        axes[2].plot([t for t, _ in xs], [v for _, v in xs], ".", ms=1, label=c)
    axes[2].legend(fontsize=7)
    axes[2].set_ylabel("record latency s")
    axes[2].set_xlabel("seconds")
    fig.suptitle("soak: memory and latency under kills and Redis restarts (red: faults)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
