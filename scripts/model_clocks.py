"""Wall time against process CPU time of single-frame model calls, on real footage.

Why: the governor caps MEASURED wall ms. When two worker processes share a small
machine, a neighbour's load could inflate wall ms without more compute being used; a
CPU-time clock would not move with it. Run this once alone and then two copies at once
(``python scripts/model_clocks.py alone``; ``python scripts/model_clocks.py A &
python scripts/model_clocks.py B``): if wall ~ CPU in every run, the models run on one
core each and a CPU-time clock would charge what the wall clock does.

Prints one JSON line: the label, then per model [wall ms, CPU ms] per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import resolve_model_specs  # noqa: E402
from pipeline.video import sample_images  # noqa: E402
from pipeline.zoo import build_models  # noqa: E402

DEFAULT_MODELS = "yolo_coco,plate_det,mtcnn_face,mobilenet_v2,hog_people,yolo_person"
DEFAULT_VIDEO = ROOT / "tests" / "data" / "intel_person-bicycle-car-detection_trimmed.mp4"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("label", help="a name for this run in the output (e.g. alone, A, B)")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated zoo names")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=12, help="frames timed per model (every 10th of the clip)")
    args = ap.parse_args()
    if not args.video.is_file():
        print(f"model_clocks: {args.video}: no such video", file=sys.stderr)
        return 2
    specs = resolve_model_specs(args.models.split(","), "--models")
    models = build_models(specs)
    frames = sample_images(args.video, args.frames, every=10)
    out = {}
    for s in specs:
        m = models[s.name]
        m.predict(frames[:2], ["clock"] * 2)  # warm-up
        wall = cpu = 0.0
        for fr in frames:
            t0, c0 = time.perf_counter(), time.process_time()
            m.predict([fr], ["clock"])
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
        out[s.name] = [round(wall * 1000 / len(frames), 1), round(cpu * 1000 / len(frames), 1)]
    print(json.dumps({"label": args.label, "ms_wall_cpu": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
