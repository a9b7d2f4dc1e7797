#!/usr/bin/env bash
# apt-get install Debian packages quietly: `apt_install.sh WHO PKG...`. The installers of the
# test dependencies (RTSP server, browser, redis-server/openssl) share it. Uses sudo -n when
# not root; on failure prints the apt log's tail and exits non-zero.
set -euo pipefail
who=$1
shift
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "$who: need root (or sudo) to apt-get install $*" >&2; exit 1
  fi
fi
log=$(mktemp -t "$who.XXXXXX.log")
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "$who: installing $*" >&2
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
  echo "$who: apt-get failed:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
