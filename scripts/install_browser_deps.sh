#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver (chromium, chromium-driver) for the
# browser tests of the web view (Selenium drives /usr/bin/chromium through
# /usr/bin/chromedriver; nothing is downloaded from anywhere but apt).
#
# Idempotent: if both are there, nothing is installed. Output is kept quiet; on
# failure the apt log is printed and the script exits non-zero.
set -euo pipefail

PKGS=(chromium chromium-driver)

check() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
}

if check; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install_browser_deps: need root (or sudo) to apt-get install ${PKGS[*]}" >&2; exit 1
  fi
fi

log=$(mktemp -t install_browser_deps.XXXXXX.log)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive

echo "install_browser_deps: installing ${PKGS[*]}" >&2
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}"; } >"$log" 2>&1; then
  echo "install_browser_deps: apt-get failed:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi

if ! check; then
  echo "install_browser_deps: packages installed but /usr/bin/chromium or /usr/bin/chromedriver is missing" >&2
  exit 1
fi
echo "install_browser_deps: done" >&2
