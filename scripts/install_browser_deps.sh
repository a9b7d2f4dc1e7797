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

bash "$(dirname "$0")/apt_install.sh" install_browser_deps "${PKGS[@]}"

if ! check; then
  echo "install_browser_deps: packages installed but /usr/bin/chromium or /usr/bin/chromedriver is missing" >&2
  exit 1
fi
echo "install_browser_deps: done" >&2
