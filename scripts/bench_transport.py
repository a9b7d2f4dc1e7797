"""Transport benchmark: frames/s through decoder -> Redis -> scheduler with no models.

For 1 and 4 cameras of the 768x432 sample footage, JPEG vs raw frames, this runs
the real stage processes (one decoder process per camera, one scheduler worker)
against an embedded redis-server and counts records per second between the
first and the last record (process start-up excluded). Prints a table.

    .venv/bin/python scripts/bench_transport.py [--video PATH] [--cameras 1,4] [--redis URL]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.app.collect import ResultCollector  # noqa: E402
from pipeline.app.supervisor import Supervisor  # noqa: E402
from pipeline.config import parse_config  # noqa: E402
from pipeline.redis_conn import EmbeddedRedis, connect  # noqa: E402
from pipeline.registry import prepare_camera  # noqa: E402

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/videos/intel_car-detection.mp4"


def run_once(url: str, video: str, n_cams: int, encoding: str, workers: int) -> dict[str, float]:
    cams = {f"bench{i}": {"source": video, "mode": "replay", "encoding": encoding, "models": [], "window": 64} for i in range(n_cams)}
    cfg = parse_config({"cameras": cams, "scheduler": {"workers": workers, "batch": 16}}, where="bench")
    r = connect(url)
    for c in cfg.cameras:
        prepare_camera(r, c, fresh=True)
    coll = ResultCollector(r, list(cfg.cameras), from_start=True)
    sup = Supervisor(cfg, url).start()
    first = last = None
    n = 0
    bar = tqdm(desc=f"{n_cams} cam {encoding}", unit="frame", leave=False)
    try:
        while True:
            sup.poll()
            coll.poll_status()
            recs = coll.poll_records(block_ms=100, count=1000)
            if recs:
                now = time.perf_counter()
                first = first or now
                last = now
                n += len(recs)
                bar.update(len(recs))
            if sup.decoders_done() and all(r.xlen(f"frames:{{{c}}}") == 0 for c in cfg.cameras) and coll.all_complete():
                break
    finally:
        bar.close()
        sup.stop()
    dt = (last - first) if first and last and last > first else float("nan")
    return {"frames": n, "seconds": dt, "fps": (n - 1) / dt if dt == dt else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(DEFAULT_VIDEO))
    ap.add_argument("--cameras", default="1,4")
    ap.add_argument("--encodings", default="jpeg,raw")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--redis", help="redis URL (default: embedded server)")
    a = ap.parse_args()
    emb = None if a.redis else EmbeddedRedis(publish=False).start()
    url = a.redis or emb.url
    rows = []
    try:
        for n in [int(x) for x in a.cameras.split(",")]:
            for enc in a.encodings.split(","):
                res = run_once(url, a.video, n, enc, a.workers)
                rows.append((n, enc, res))
    finally:
        if emb:
            emb.stop()
    print(f"\ntransport, no models: {Path(a.video).name}, {a.workers} worker(s), redis {'embedded' if emb else a.redis}")
    print(f"{'cameras':>7s} {'encoding':>8s} {'frames':>7s} {'seconds':>8s} {'frames/s':>9s}")
    for n, enc, res in rows:
        print(f"{n:7d} {enc:>8s} {res['frames']:7d} {res['seconds']:8.2f} {res['fps']:9.1f}")


if __name__ == "__main__":
    main()
