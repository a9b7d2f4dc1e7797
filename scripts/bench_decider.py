#!/usr/bin/env python3
"""Per-frame decision overhead of the ``cascade`` policy with N models (issue: <= 2 ms with 10).

    .venv/bin/python scripts/bench_decider.py [--models 10] [--frames 2000]

Times what the scheduler adds per frame for cascade, on this machine: the 64x36 thumbnail
of a real decoded frame (768x432, from the committed test clip) and the decider's choice
(risk of every model from the change since it last ran, the token bucket), with a risk
model fitted on 4000 observations per model as after a long run. Model time is not
included (that is the budget's business). Prints mean, p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from links.policies import CascadeDecider, ChangeRisk, thumbnail  # noqa: E402
from pipeline.video import iter_frames  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--frames", type=int, default=2000)
    a = ap.parse_args(argv)
    clip = REPO / "tests" / "data" / "intel_one-by-one-person-detection.mp4"
    images = [vf.image for _, vf in zip(range(200), iter_frames(clip))]
    models = [f"m{i}" for i in range(a.models)]
    rng = np.random.default_rng(0)
    risk = ChangeRisk(models)
    for m in models:
        for _ in range(4000):
            d, age = float(rng.exponential(0.02)), int(rng.integers(1, 40))
            risk.add(m, d, age, float(rng.random() < min(1.0, 10 * d + 0.005 * age)))
    risk.fit()
    cost = {m: float(c) for m, c in zip(models, rng.uniform(1, 40, a.models))}
    dec = CascadeDecider((models[0],), tuple(models[1:]), rate=20.0, capacity=CascadeDecider.bucket_capacity(20.0, cost.values()),
                         risk=risk)
    times = []
    for f in tqdm(range(a.frames), desc="decisions", unit="frame"):
        img = images[f % len(images)]
        t0 = time.perf_counter()
        th = thumbnail(img)
        choice = dec.decide(f, th, cost)
        times.append((time.perf_counter() - t0) * 1000)
        dec.executed(f, th, choice)
    t = np.array(times[50:])
    print(f"cascade decision per frame, {a.models} models, {images[0].shape[1]}x{images[0].shape[0]} frames: "
          f"mean {t.mean():.3f} ms, p50 {np.percentile(t, 50):.3f} ms, p99 {np.percentile(t, 99):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
