#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests when it is missing and we are root.
# Elsewhere it only says what to do; the browser tests then skip with that reason (never in CI).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing chromium for the browser tests (apt-get)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is not installed; browser tests will skip. Install it with: sudo apt-get install -y chromium"
fi
