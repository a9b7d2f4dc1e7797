#!/usr/bin/env bash
# Install the Debian packages needed by scripts/rtsp_server.py (GStreamer's
# gst-rtsp-server driven from the *system* python via PyGObject).
#
# Idempotent: if the system python can already load the GstRtspServer GI
# namespace, nothing is installed. Output is kept quiet; on failure the apt
# log is printed and the script exits non-zero.
set -euo pipefail

PY=/usr/bin/python3
PKGS=(
  python3-gi
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  gstreamer1.0-tools
)

check() {
  "$PY" -c 'import gi; gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")' >/dev/null 2>&1
}

if check; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install_rtsp_deps: need root (or sudo) to apt-get install" >&2; exit 1
  fi
fi

log=$(mktemp -t install_rtsp_deps.XXXXXX.log)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive

echo "install_rtsp_deps: installing ${PKGS[*]}" >&2
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}"; } >"$log" 2>&1; then
  echo "install_rtsp_deps: apt-get failed:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi

if ! check; then
  echo "install_rtsp_deps: packages installed but GstRtspServer still not importable from $PY" >&2
  exit 1
fi
echo "install_rtsp_deps: done" >&2
