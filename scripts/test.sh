#!/usr/bin/env bash
# The whole test suite: installs what the browser test needs (Debian's chromium, once), then
# runs every test of the workspace. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-setup.sh
exec cargo test --workspace --locked "$@"
