#!/usr/bin/env bash
# Installs the fleet and deployment test tools once and prints where they are:
#   venv=DIR   a Python venv with tests/fleet/requirements.txt (moto's S3 server, kubernetes-validate), cached
#              under ~/.cache/skillgraft by the hash of that file
# Used by tests/fleet.rs and tests/packaging.rs; safe to run concurrently (flock).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
mkdir -p "$cache"
exec 9>"$cache/fleet-tools.lock"
flock 9
req=tests/fleet/requirements.txt
venv="$cache/venv-fleet-$(sha256sum "$req" | cut -c1-12)"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "venv=$venv"
