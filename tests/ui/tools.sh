#!/usr/bin/env bash
# Installs the browser test's npm packages (playwright-core, axe-core; pinned by tests/ui/package-lock.json)
# into the cache, outside the checkout, and prints the node_modules directory. playwright-core never downloads
# a browser: the test drives Debian's chromium (`apt-get install chromium`).
# Usage: tests/ui/tools.sh   (cache: $SKILLGRAFT_HOME/node/ui-<lock hash>)
set -euo pipefail
cd "$(dirname "$0")/../.."
home="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
lock=tests/ui/package-lock.json
hash="$(sha256sum "$lock" | cut -c1-16)"
dir="$home/node/ui-$hash"
if [ -f "$dir/.installed" ]; then
  echo "$dir/node_modules"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is missing (apt-get install nodejs npm)" >&2; exit 1; }
rm -rf "$dir.partial"
mkdir -p "$dir.partial"
cp tests/ui/package.json "$lock" "$dir.partial/"
(cd "$dir.partial" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
touch "$dir.partial/.installed"
rm -rf "$dir"
mv "$dir.partial" "$dir"
echo "$dir/node_modules"
