#!/usr/bin/env bash
# Chromium and chromedriver for tests/test_browser.py (the page of dml-csr serve in a real
# browser), from the system's packages: nothing is done when both are on PATH already.
#
#   bash scripts/install_browser.sh
#
# Debian / Ubuntu (apt-get) only: apt-get update, then apt-get install chromium chromium-driver
# without the recommended extras; as root, or through sudo where it exists. Elsewhere it stops
# with one error line saying what to install. Selenium itself is a pip requirement
# (requirements.txt); it is pointed at this chromedriver and never downloads a driver.
set -euo pipefail
if command -v chromium > /dev/null && command -v chromedriver > /dev/null; then
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "error: no apt-get here: install Chromium and its chromedriver with this system's" \
       "package manager (both on PATH as chromium and chromedriver)" >&2
  exit 2
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo > /dev/null; then
    echo "error: installing Chromium needs root (or sudo): apt-get install chromium" \
         "chromium-driver" >&2
    exit 2
  fi
  SUDO=(sudo)
fi
echo "[install_browser] installing chromium and chromium-driver (apt-get)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver
chromium --version
chromedriver --version
