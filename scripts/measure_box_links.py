"""Issue 3 item 6: box-set links vs geometric rules vs 'no boxes', F1 at IoU 0.5.

Aligned samples of the box detectors on the real clips (cached like measure_links.py) and
on the GIF previews (profiled here with the five box detectors when not cached). Per
(clip, source -> target) with any target boxes: train a BoxLink on the first 50 % of the
clip in time, test on the rest; also a "pooled" run training on the first halves of all
clips together and testing on all second halves.

    .venv/bin/python scripts/measure_box_links.py [--cache /tmp/mlink-samples] [--gif-cache /tmp/mlink-boxes]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from links.boxes import BoxLink  # noqa: E402
from links.samples import AlignedSamples  # noqa: E402

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
BOX_MODELS = ["yolo_person", "haar_face", "haar_upper_body", "haar_full_body", "hog_people"]
PAIRS = [("yolo_person", "haar_upper_body"), ("yolo_person", "haar_face"), ("yolo_person", "hog_people"), ("yolo_person", "haar_full_body")]


def _fmt(name: str, r: dict) -> str:
    return f"{name} F1/frame {r['f1_frame']:.3f} F1/box {r['f1_micro']:.3f} (tp {r['tp']}, pred {r['n_pred']}, true {r['n_true']})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", default=str(VIDEOS))
    ap.add_argument("--cache", default="/tmp/mlink-samples")
    ap.add_argument("--gif-cache", default="/tmp/mlink-boxes")
    args = ap.parse_args()
    clips: dict[str, AlignedSamples] = {}
    for f in sorted(Path(args.videos).glob("*.mp4")):
        p = Path(args.cache) / f"{f.stem}.npz"
        if p.exists():
            clips[f.stem] = AlignedSamples.load(p)
    for f in sorted(Path(args.videos).glob("*.gif")):
        p = Path(args.gif_cache) / f"{f.stem}.npz"
        if not p.exists():
            from stages.profiler import profile_videos

            profile_videos([f], out=p, model_names=BOX_MODELS, progress=False)
        clips[f.stem] = AlignedSamples.load(p)
    splits = {}
    for c, s in clips.items():
        sub = AlignedSamples([s.meta(n) for n in BOX_MODELS])
        sub.camera, sub.frame, sub.pts = s.camera, s.frame, s.pts
        sub.outputs = {n: s.outputs[n] for n in BOX_MODELS}
        splits[c] = sub.split_by_time(0.5)
    pooled_tr = pooled_te = None
    for tr, te in splits.values():
        pooled_tr = tr if pooled_tr is None else pooled_tr.concat(tr)
        pooled_te = te if pooled_te is None else pooled_te.concat(te)
    splits["POOLED (all clips)"] = (pooled_tr, pooled_te)
    for src, tgt in PAIRS:
        print(f"\n=== {src} -> {tgt}")
        for c, (tr, te) in splits.items():
            ntr = sum(o.count for o in tr.outputs[tgt])
            nte = sum(o.count for o in te.outputs[tgt])
            if ntr + nte == 0:
                continue
            link = BoxLink.train(tr, src, tgt, seed=0)
            r = link.evaluate(te)
            print(f"{c}: train target boxes {ntr} (matched {link.n_pairs}), test {nte}, test frames {r['frames']}, threshold {link.threshold}, fitted rule {[round(float(x), 2) for x in link.fitted_rule]}")
            for k in ("link", "rule", "fitted_rule", "empty"):
                print("   " + _fmt(f"{k:12s}", r[k]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
