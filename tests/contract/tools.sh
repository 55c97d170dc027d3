#!/usr/bin/env bash
# Installs the contract-test tools once and prints where they are (one line per tool set):
#   venv=DIR   a Python venv with tests/contract/requirements.txt (schemathesis, openapi-python-client,
#              openapi-spec-validator), cached under ~/.cache/skillgraft by the hash of that file
#   npm=DIR    node_modules with tests/contract/package.json's packages (openapi-typescript, openapi-fetch,
#              typescript), cached the same way
# Used by tests/contract.rs; safe to run concurrently (flock).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
mkdir -p "$cache"
exec 9>"$cache/contract-tools.lock"
flock 9
req=tests/contract/requirements.txt
# The newest Python 3.12+ found (Python 3.11's ast.parse can fail inside hypothesis with "AST constructor
# recursion depth mismatch", a CPython bug), else python3.
python=python3
for p in "$HOME"/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3 /usr/bin/python3.13 \
  /usr/bin/python3.12; do
  if [ -x "$p" ] && "$p" -c 'import venv' >/dev/null 2>&1; then python="$p"; break; fi
done
venv="$cache/venv-contract-$( (cat "$req"; "$python" --version) | sha256sum | cut -c1-12)"
if [ ! -x "$venv/bin/schemathesis" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet -r "$req" >&2
fi
echo "venv=$venv"
pkg=tests/contract/package.json
if [ -f "$pkg" ]; then
  npmdir="$cache/npm-contract-$(sha256sum "$pkg" tests/contract/package-lock.json 2>/dev/null | sha256sum | cut -c1-12)"
  if [ ! -d "$npmdir/node_modules/openapi-fetch" ]; then
    rm -rf "$npmdir"
    mkdir -p "$npmdir"
    cp "$pkg" "$npmdir/"
    [ -f tests/contract/package-lock.json ] && cp tests/contract/package-lock.json "$npmdir/"
    (cd "$npmdir" && npm ci --silent --no-audit --no-fund >&2 2>/dev/null || npm install --silent --no-audit --no-fund >&2)
  fi
  echo "npm=$npmdir"
fi
