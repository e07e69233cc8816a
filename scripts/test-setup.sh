#!/usr/bin/env bash
# Installs what the test suite needs besides the Rust toolchain: Debian's Chromium, which the
# analyst-page test drives headless through its DevTools protocol. Idempotent; does nothing when
# /usr/bin/chromium (or $VERDICT_CHROMIUM) is already there.
set -euo pipefail
chromium=${VERDICT_CHROMIUM:-/usr/bin/chromium}
if [ -x "$chromium" ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
"$chromium" --version
