#!/usr/bin/env bash
# The test command: fetches the default model if needed, then runs every test in release mode
# (candle in debug mode is far too slow). Model-dependent tests are required to run here.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target}"
scripts/fetch-model.sh
SKILLGRAFT_REQUIRE_MODEL=1 cargo test --release "$@"
