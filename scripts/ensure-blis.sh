#!/usr/bin/env bash
# Makes sure the CPU build can link BLIS: Debian's single-threaded static library (libblis-serial-dev), which
# build.rs links into the binary (nothing is needed at run time). Installs it with apt-get when it is missing
# and this runs as root (or with sudo); otherwise says so and the build falls back to the gemm crate
# (correct, slower on small batches). SKILLGRAFT_BLIS_DIR names another directory holding libblis.a;
# SKILLGRAFT_BLIS_DIR=none skips BLIS.
set -euo pipefail
dir="${SKILLGRAFT_BLIS_DIR:-/usr/lib/$(uname -m)-linux-gnu/blis-serial}"
if [ "$dir" = none ] || [ -f "$dir/libblis.a" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "BLIS not found in $dir and no apt-get: building with the gemm crate (slower on small batches)"
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "BLIS not found in $dir; install it with: apt-get install libblis-serial-dev (building with the gemm crate)"
    exit 0
  fi
fi
echo "installing libblis-serial-dev (BLIS, BSD-3-Clause) for the CPU matrix products"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends libblis-serial-dev >/dev/null 2>&1 ||
  { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y --no-install-recommends libblis-serial-dev >/dev/null; } ||
  echo "could not install libblis-serial-dev: building with the gemm crate (slower on small batches)"
