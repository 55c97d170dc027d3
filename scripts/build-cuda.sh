#!/usr/bin/env bash
# Builds skillgraft with the `cuda` feature on any x86-64 Linux machine, GPU or not, from NVIDIA's PyPI wheels.
#
# Usage: scripts/build-cuda.sh [build|check|test-no-run] [extra cargo args...]   (default: build)
#
# - The CUDA 13.0 toolchain (nvcc, headers, cuBLAS, cuRAND, NVRTC, runtime) is installed once into a venv under
#   $SKILLGRAFT_HOME/cuda (default ~/.cache/skillgraft/cuda), every wheel pinned to the 13.0 line so the PTX
#   loads on drivers >= 580.
# - CUDA_COMPUTE_CAP picks the GPU generation the kernels are compiled for (default 90: H100/H200; 80 for A100,
#   89 for L4/L40/RTX 40xx, 86 for RTX 30xx/A10, 75 for T4). The PTX is JIT-compiled by the driver for newer
#   chips, never for older ones.
# - Where no NVIDIA driver is installed, linking uses a stub libcuda.so made here (link time only; the binary
#   needs the real driver library, libcuda.so.1, to start).
# - The build goes to $CARGO_TARGET_DIR (default ~/.cache/skillgraft-target-cuda), apart from the CPU build:
#   the CUDA binary cannot start without a driver, so the CPU build stays the default.
# The binary ends up at $CARGO_TARGET_DIR/release/skillgraft.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-build}"
[ $# -gt 0 ] && shift
home="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
cache="$home/cuda"
venv="$cache/venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target-cuda}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-cccl==13.0.85
)
stamp="$cache/toolchain-13.0.88.ok"
if [ ! -f "$stamp" ]; then
  echo "installing the CUDA 13.0 toolchain wheels into $venv ..."
  mkdir -p "$cache"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${wheels[@]}"
  touch "$stamp"
fi
cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
[ -x "$cu13/bin/nvcc" ] || { echo "no nvcc under $cu13" >&2; exit 1; }
export PATH="$cu13/bin:$PATH" CUDA_ROOT="$cu13" CUDA_PATH="$cu13"

# Link directory: unversioned names for the wheels' libraries, and a libcuda.so when no driver provides one.
link="$cache/link"
mkdir -p "$link"
for l in cublas:13 cublasLt:13 curand:10 nvrtc:13 cudart:13; do
  name="${l%%:*}" ver="${l##*:}"
  ln -sf "$cu13/lib/lib$name.so.$ver" "$link/lib$name.so"
done
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so '; then
  if [ ! -f "$link/libcuda.so" ]; then
    cargo fetch --quiet
    sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)"
    grep -oE '^\s+(pub )?fn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/\s*(pub )?fn //;s/\(//' | sort -u |
      awk '{print "void "$1"(void){}"}' > "$link/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/stub.c"
    echo "made a link-time stub $link/libcuda.so (no NVIDIA driver here)"
  fi
fi
export LIBRARY_PATH="$link${LIBRARY_PATH:+:$LIBRARY_PATH}"

case "$mode" in
  build) cargo build --release --features cuda "$@" ;;
  check) cargo check --release --features cuda --all-targets "$@" ;;
  clippy) cargo clippy --release --features cuda --all-targets "$@" -- -D warnings ;;
  test-no-run) cargo test --release --features cuda --no-run "$@" ;;
  *) echo "unknown mode $mode (build, check, clippy, test-no-run)" >&2; exit 2 ;;
esac
if [ "$mode" = build ]; then
  echo "built $CARGO_TARGET_DIR/release/skillgraft (CUDA, compute capability $CUDA_COMPUTE_CAP)"
fi
