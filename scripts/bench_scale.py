#!/usr/bin/env python3
"""Scale-out benchmark: processed frames/s with 1, 2, ... scheduler workers.

Frames of a real video are decoded and JPEG-encoded once up front, so the
decoder is not what is measured. For each worker count the script starts the
workers (separate processes, like ``mlink worker`` on other hosts), waits until
every one of them has joined the consumer group (models loaded), then XADDs the
frames and times until every frame has a record. The workers share the one camera
(``share_cameras``: the throughput of one camera spread over several workers; by default
each camera has a single owner and workers scale over cameras). Each worker runs its models
single-threaded (``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``): one
worker per core is the deployment shape for scale-out, and otherwise a single
worker would already use both cores through OpenCV's thread pool. The last row
shows one worker with OpenCV's default threading for comparison.

    .venv/bin/python scripts/bench_scale.py                  # embedded redis, 240 frames
    .venv/bin/python scripts/bench_scale.py --redis redis://127.0.0.1:6379/14 --frames 400
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "videos" / "intel_one-by-one-person-detection.mp4"
DEFAULT_MODELS = ["hog_people", "haar_full_body", "mog2_motion"]


def _worker(url: str, camera_batch: int, single_thread: bool, stop_evt: "mp.synchronize.Event", ready_key: str) -> None:
    import cv2

    if single_thread:
        cv2.setNumThreads(1)
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
    from pipeline.redis_conn import connect
    from stages.scheduler import Worker

    r = connect(url)
    # One camera shared by every worker (scheduler.share_cameras): by default a camera has one owner.
    w = Worker(r, batch=camera_batch, block_ms=50, claim_idle_ms=60_000, should_stop=stop_evt.is_set, share_cameras=True)
    w.refresh_cameras(force=True)  # loads the models
    r.incr(ready_key)
    w.run()


def _cpu_s(pids: list[int]) -> float:
    """User+system CPU seconds of these processes so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return float("nan")


def run_once(url: str, frames: list[dict], models: list[str], workers: int, batch: int, single_thread: bool, progress: bool) -> dict:
    from pipeline.config import parse_config
    from pipeline.keys import frames_key, results_key
    from pipeline.redis_conn import connect
    from pipeline.registry import prepare_camera, register_camera

    cam = f"bench{workers}{'s' if single_thread else 'm'}"
    r = connect(url)
    for k in r.smembers("mlink:cameras"):
        r.srem("mlink:cameras", k)
    cfg = parse_config({"cameras": {cam: {"source": str(DEFAULT_VIDEO), "models": models}}})
    prepare_camera(r, cam, fresh=True)
    register_camera(r, cfg.cameras[cam])
    ctx = mp.get_context("spawn")
    r.delete(f"bench:ready:{cam}")
    stop = ctx.Event()
    procs = [ctx.Process(target=_worker, args=(url, batch, single_thread, stop, f"bench:ready:{cam}"), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while int(r.get(f"bench:ready:{cam}") or 0) < workers:  # models loaded
        if time.monotonic() > deadline or any(p.exitcode is not None for p in procs):
            raise SystemExit(f"workers did not start (exit codes {[p.exitcode for p in procs]})")
        time.sleep(0.05)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(frames), unit="frame", desc=f"{workers} worker{'s' if workers > 1 else ''}", file=sys.stderr, leave=False)
    pids = [p.pid for p in procs if p.pid is not None]
    cpu0 = _cpu_s(pids)
    t0 = time.monotonic()
    pipe = r.pipeline(transaction=False)
    for i, f in enumerate(frames):
        pipe.xadd(frames_key(cam), {**f, "camera": cam, "frame": i, "wall": f"{time.time():.6f}"})
    pipe.execute()
    done = 0
    while done < len(frames):
        n = r.xlen(results_key(cam))
        if bar is not None:
            bar.update(n - done)
        done = n
        if time.monotonic() - t0 > 600:
            raise SystemExit("benchmark timed out")
        time.sleep(0.02)
    wall = time.monotonic() - t0
    cpu = _cpu_s(pids) - cpu0
    load = _loadavg()
    if bar is not None:
        bar.close()
    stop.set()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    recs = [json.loads(x[b"json"]) for _, x in r.xrange(results_key(cam))]
    per_worker: dict[str, int] = {}
    for rec in recs:
        per_worker[rec["worker"]] = per_worker.get(rec["worker"], 0) + 1
    model_ms = sum(rec["latency_ms"]["models"] for rec in recs) / len(recs)
    for k in (frames_key(cam), results_key(cam), f"status:{{{cam}}}", f"camera:{{{cam}}}", f"metrics:{{{cam}}}"):
        r.delete(k)
    r.srem("mlink:cameras", cam)
    r.delete(f"bench:ready:{cam}")
    return {"workers": workers, "threads": "1/worker" if single_thread else "default", "frames": len(frames),
            "wall_s": wall, "fps": len(frames) / wall, "cpu_s": cpu, "load": load, "model_ms": model_ms, "split": sorted(per_worker.values(), reverse=True)}


def load_frames(video: Path, n: int, width: int) -> list[dict]:
    from pipeline.streams import FrameMsg, encode_frame
    from pipeline.video import iter_frames

    out = []
    for vf in iter_frames(video, resize=width):
        h, w = vf.image.shape[:2]
        out.append(encode_frame(FrameMsg("x", vf.index, vf.pts, vf.pts, time.time(), w, h, vf.image)))
        if len(out) >= n:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", help="redis URL (default: an embedded private server)")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--width", type=int, default=640, help="frame width sent to the models")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--workers", default="1,2", help="worker counts to measure")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from pipeline.redis_conn import EmbeddedRedis

    emb = None
    url = a.redis
    if not url:
        emb = EmbeddedRedis(publish=False).start()
        url = emb.url
    try:
        frames = load_frames(a.video, a.frames, a.width)
        models = a.models.split(",")
        print(f"{len(frames)} frames of {a.video.name} at width {a.width}; models {models}; {os.cpu_count()} CPU cores", file=sys.stderr)
        rows = [run_once(url, frames, models, int(n), a.batch, True, not a.no_progress) for n in a.workers.split(",")]
        rows.append(run_once(url, frames, models, 1, a.batch, False, not a.no_progress))
    finally:
        if emb is not None:
            emb.stop()
    base = rows[0]["fps"]
    print(f"{'workers':>7s} {'threads':>9s} {'frames':>6s} {'wall s':>7s} {'fps':>7s} {'speedup':>7s} {'model ms/frame':>14s} "
          f"{'cores used':>10s} {'CPU ms/frame':>12s} {'loadavg':>7s}  split")
    for row in rows:
        print(f"{row['workers']:7d} {row['threads']:>9s} {row['frames']:6d} {row['wall_s']:7.2f} {row['fps']:7.2f} "
              f"{row['fps'] / base:6.2f}x {row['model_ms']:14.1f} {row['cpu_s'] / row['wall_s']:10.2f} "
              f"{1000 * row['cpu_s'] / row['frames']:12.1f} {row['load']:7.2f}  {row['split']}")
    print("cores used = worker CPU seconds / wall seconds; a speedup below the worker count with 'cores used' "
          "below it means other processes held the cores (see loadavg).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
