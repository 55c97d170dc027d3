#!/usr/bin/env bash
# skillgraft vs ONNX Runtime vs PyTorch on the CPU, interleaved (benches/compare.py; options pass through,
# e.g. --threads 1,2 --shapes 1x16,8x14,32x64,128x128 --rounds 5). Creates (once) a Python venv with torch,
# transformers, onnx and onnxruntime from PyPI in $SKILLGRAFT_BENCH_VENV (default
# ~/.cache/skillgraft/venv-torch), builds the release binary, and prints one Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target}"
venv="${SKILLGRAFT_BENCH_VENV:-$HOME/.cache/skillgraft/venv-torch}"
if ! "$venv/bin/python" -c "import torch, transformers, onnx, onnxruntime, safetensors" 2>/dev/null; then
  echo "creating $venv (torch, transformers, onnx, onnxruntime from PyPI; several GB)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet torch transformers onnx onnxscript onnxruntime safetensors numpy
fi
scripts/fetch-model.sh >&2
scripts/ensure-blis.sh >&2
cargo build --release --quiet
exec "$venv/bin/python" benches/compare.py --skillgraft "$CARGO_TARGET_DIR/release/skillgraft" "$@"
