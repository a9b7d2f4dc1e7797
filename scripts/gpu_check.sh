#!/usr/bin/env bash
# The GPU check (about 5 minutes on one CUDA GPU): installs what is missing, then prints
#   1. per model of the zoo: ms/frame at batch 1 and at batch 8, peak GPU memory;
#   2. replay frames/s of a 300-frame clip under `all`, `ours` at 33% and `ours` at gpu:2048MB;
#   3. whether the resident models stay within the GPU-memory budget: the plan's GPU memory
#      (what the records report as used against the limit) and the worker's peak GPU memory
#      seen by nvidia-smi (which also holds the CUDA context, reported beside it).
# Exit status 0 when every check passed. Without CUDA it stops with a message, unless
# GPU_CHECK_ALLOW_CPU=1 (a dry run of the script itself on the CPU, e.g. with CLIP_FRAMES=40).
#
#   bash scripts/gpu_check.sh [CLIP]          (default: tests/data/intel_one-by-one-person-detection.mp4)
set -euo pipefail
cd "$(dirname "$0")/.."
CLIP=${1:-tests/data/intel_one-by-one-person-detection.mp4}
FRAMES=${CLIP_FRAMES:-300}
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
export MLINK_HOME=${MLINK_HOME:-$OUT/home}
mkdir -p "$OUT" "$MLINK_HOME"
t_start=$(date +%s)

# ---- install what is missing
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pipeline.zoo, torch, ultralytics, onnxruntime, facenet_pytorch' 2>/dev/null; then
  echo "gpu_check: installing into .venv (scripts/setup.sh)" >&2
  bash scripts/setup.sh
fi
PY=.venv/bin/python
if command -v nvidia-smi >/dev/null 2>&1 && ! $PY -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
  # ONNX Runtime's CUDA provider lives in onnxruntime-gpu (same module name): swap it in if pip can get it.
  ver=$($PY -c 'import onnxruntime; print(onnxruntime.__version__)')
  if $PY -m pip install -q "onnxruntime-gpu==$ver" 2>/dev/null || $PY -m pip install -q onnxruntime-gpu 2>/dev/null; then
    echo "gpu_check: installed onnxruntime-gpu (the onnx models run on CUDA)" >&2
  else
    echo "gpu_check: onnxruntime-gpu not installable here: the onnx models run on the CPU provider" >&2
  fi
fi
$PY - <<'EOF' || { [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] || exit 3; }
import sys, torch
if not torch.cuda.is_available():
    print("gpu_check: no CUDA device visible to torch (torch %s, CUDA build %s): nothing to check" % (torch.__version__, torch.version.cuda), file=sys.stderr)
    sys.exit(1)
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

# ---- 1. per-model cost at batch 1 and 8
$PY - "$CLIP" "$OUT" <<'EOF'
import json, sys
from pipeline.config import DEFAULT_MODELS, ZOO, resolve_model_spec
from pipeline.costs import measure_model
from pipeline.video import sample_images
from pipeline.zoo import build_model

clip, out = sys.argv[1], sys.argv[2]
frames = sample_images(clip, 8)
names = DEFAULT_MODELS + [n for n in ("vehicle_onnx", "fall_onnx") if n in ZOO]
rows = []
print(f"\n1. per model on {frames[0].shape[1]}x{frames[0].shape[0]} frames of {clip}")
print(f"{'model':14s} {'runtime':11s} {'device':7s} {'half':>4s} {'ms b=1':>7s} {'ms b=8':>7s} {'gpu MB':>7s} {'mem MB':>7s}")
for n in names:
    m = build_model(resolve_model_spec(n))
    c1 = measure_model(m, frames, repeats=3, batch=1)
    c8 = measure_model(m, frames, repeats=3, batch=8)
    gpu = max(c1.gpu_mb, c8.gpu_mb)
    rows.append({"name": n, "runtime": m.runtime, "device": m.device, "half": m.half, "ms_b1": c1.ms, "ms_b8": c8.ms, "gpu_mb": gpu, "mem_mb": c8.mem_mb})
    print(f"{n:14s} {m.runtime:11s} {m.device:7s} {str(m.half)[0]:>4s} {c1.ms:7.1f} {c8.ms:7.1f} {gpu:7.0f} {c8.mem_mb:7.0f}", flush=True)
    del m
print(f"{'default zoo':14s} {'':11s} {'':7s} {'':>4s} {sum(r['ms_b1'] for r in rows if r['name'] in DEFAULT_MODELS):7.1f} "
      f"{sum(r['ms_b8'] for r in rows if r['name'] in DEFAULT_MODELS):7.1f} {sum(r['gpu_mb'] for r in rows if r['name'] in DEFAULT_MODELS):7.0f}")
json.dump(rows, open(f"{out}/models.json", "w"), indent=1)
EOF

# ---- 2. replays (the worker's GPU memory sampled by nvidia-smi meanwhile)
$PY - "$CLIP" "$FRAMES" "$OUT/clip.mp4" <<'EOF'
import sys
import av
src, n, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# the first N frames as their own clip (the replay's frame count is then exact)
with av.open(src) as i, av.open(dst, "w") as o:
    s = i.streams.video[0]
    out = o.add_stream("libx264", rate=int(round(float(s.average_rate or 10))))
    out.width, out.height, out.pix_fmt = s.codec_context.width, s.codec_context.height, "yuv420p"
    out.options = {"crf": "18", "preset": "veryfast"}
    for k, f in enumerate(i.decode(s)):
        if k >= n:
            break
        g = av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24").reformat(format="yuv420p")
        g.pts = k
        for p in out.encode(g):
            o.mux(p)
    for p in out.encode():
        o.mux(p)
EOF
sample_gpu() {  # peak MiB used by any compute process, sampled every 0.5 s into $1 until killed
  local peak=0
  while true; do
    if command -v nvidia-smi >/dev/null 2>&1; then
      cur=$(nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits 2>/dev/null | sort -n | tail -1)
      cur=${cur:-0}; [ "$cur" -gt "$peak" ] 2>/dev/null && peak=$cur && echo "$peak" > "$1"
    fi
    sleep 0.5
  done
}
declare -A FPS
status=0
for run in "all::" "ours:33%:" "ours:gpu:2048MB:"; do
  policy=${run%%:*}; budget=${run#*:}; budget=${budget%:}
  tag=${policy}${budget:+_${budget//[:%]/}}
  args=(replay "$OUT/clip.mp4" --out "$OUT/$tag.jsonl")
  [ "$policy" = all ] || args+=(--policy "$policy" --budget "$budget")
  echo 0 > "$OUT/$tag.gpu"
  sample_gpu "$OUT/$tag.gpu" & sampler=$!
  t0=$(date +%s.%N)
  if ! .venv/bin/mlink "${args[@]}" > "$OUT/$tag.log" 2>&1; then
    echo "gpu_check: replay $tag failed:" >&2; tail -5 "$OUT/$tag.log" >&2; status=1
  fi
  kill $sampler 2>/dev/null || true; wait $sampler 2>/dev/null || true
done

# ---- 3. report and check
$PY - "$OUT" "$FRAMES" <<'EOF' || status=1
import json, sys
from pathlib import Path
out, n = Path(sys.argv[1]), int(sys.argv[2])
models = {r["name"]: r for r in json.load(open(out / "models.json"))}
ok = True
print(f"\n2. replay of a {n}-frame clip (one worker; frames/s between the first and the last record)")
print(f"{'run':16s} {'records':>7s} {'frames/s':>9s} {'executed/frame':>14s} {'worker GPU MB':>14s}")
for tag in ("all", "ours_33", "ours_gpu2048MB"):
    p = out / f"{tag}.jsonl"
    recs = [json.loads(l) for l in open(p)] if p.exists() else []
    peak = int((out / f"{tag}.gpu").read_text().strip() or 0)
    if len(recs) < 2:
        print(f"{tag:16s} {len(recs):7d}   (failed)"); ok = False; continue
    walls = sorted(r["wall"] + r["latency_ms"]["total"] / 1000 for r in recs)
    fps = (len(recs) - 1) / max(walls[-1] - walls[0], 1e-9)
    ex = sum(len(r["policy"]["active"]) for r in recs) / len(recs)
    print(f"{tag:16s} {len(recs):7d} {fps:9.2f} {ex:14.2f} {peak:14d}")
    ok &= len(recs) == n
    if tag == "ours_gpu2048MB":
        budg = [r["policy"] for r in recs if r["policy"].get("phase") == "budgeted"]
        if budg:
            used = max(float(p.get("used", 0)) for p in budg)
            limit = min(float(p.get("limit", 2048)) for p in budg)
            kept = sorted({m for p in budg for m, rate in p.get("rates", {}).items() if rate > 0})
            planned = sum(models[m]["gpu_mb"] for m in kept if m in models)
            within = used <= limit + 1e-6 and planned <= limit + 1e-6
            ok &= within
            print(f"\n3. GPU-memory budget 2048 MB: plan keeps {len(kept)} models ({', '.join(kept)}), their measured peak GPU memory "
                  f"{planned:.0f} MB, records report used {used:.0f} / limit {limit:.0f} MB: {'within' if within else 'OVER'} the budget; "
                  f"worker process peak by nvidia-smi {peak} MB (includes the CUDA context and the models loaded for the cold start)")
        else:
            print("\n3. GPU-memory budget: no budgeted frames (the clip ended within the cold start)"); ok = False
print("\ngpu_check:", "OK" if ok else "FAILED", f"(outputs in {out})")
sys.exit(0 if ok else 1)
EOF
echo "gpu_check: $(( $(date +%s) - t_start )) s" >&2
exit $status
