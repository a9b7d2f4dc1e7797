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

bash "$(dirname "$0")/apt_install.sh" install_rtsp_deps "${PKGS[@]}"

if ! check; then
  echo "install_rtsp_deps: packages installed but GstRtspServer still not importable from $PY" >&2
  exit 1
fi
echo "install_rtsp_deps: done" >&2
