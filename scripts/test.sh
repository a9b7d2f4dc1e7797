#!/usr/bin/env bash
# Installs everything the tests need (Python deps, GStreamer RTSP server from
# Debian packages when apt is available) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! bash scripts/install_rtsp_deps.sh; then
  echo "test: could not install the GStreamer RTSP server; RTSP tests will fail" >&2
fi
export MLINK_HOME="${MLINK_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
