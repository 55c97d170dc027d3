#!/usr/bin/env bash
# Makes sure the browser test (tests/ui.rs) has its browser: Debian's chromium, and node with npm for the
# playwright-core driver (tests/ui/tools.sh installs the npm packages). Installs what is missing with apt-get
# (`apt-get update` first) when this runs as root or with password-less sudo; otherwise, or when the install
# fails, says exactly what to install and exits 1. Warns when node is older than 20 (playwright-core's floor).
set -euo pipefail
node_check() {
  command -v node >/dev/null 2>&1 || return 0
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
    echo "warning: node $(node --version) is older than playwright-core's node >= 20 (Debian 12's nodejs is 18)" >&2
}
pkgs=()
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
if [ ${#pkgs[@]} -eq 0 ]; then node_check; exit 0; fi
missing() {
  echo "the browser test needs ${pkgs[*]}: install with \`apt-get install ${pkgs[*]}\` (as root), then run again" >&2
  exit 1
}
command -v apt-get >/dev/null 2>&1 || missing
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || missing
  sudo="sudo -n"
fi
echo "installing ${pkgs[*]} for the browser test (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
{ $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } >/dev/null || missing
node_check
