#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (the default model, BLIS, Debian's chromium
# and node with npm for the browser test, the npm packages pinned in tests/ui), then runs every test in release
# mode (candle in debug mode is far too slow). Model-dependent tests and the browser test of the web explorer
# are required to run here. Ends with one summary line over all test binaries: "summary: N passed, N failed".
# Arguments go to cargo test (scripts/test.sh --test server).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target}"
scripts/fetch-model.sh
scripts/ensure-blis.sh
tests/ui/ensure-browser.sh
SKILLGRAFT_UI_NODE_MODULES="$(tests/ui/tools.sh)"
export SKILLGRAFT_UI_NODE_MODULES
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
SKILLGRAFT_REQUIRE_MODEL=1 SKILLGRAFT_REQUIRE_BROWSER=1 cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
