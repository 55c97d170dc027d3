#!/usr/bin/env bash
# Prepares the assets scripts/measure/gpu-check.sh needs on a GPU machine that has no Rust toolchain and no internet,
# in .gpu/ (ignored by git): the CUDA build (stripped, xz-compressed), the default model's tokenizer.json, and
# the SST-2 files. Builds with scripts/build-cuda.sh first. Prints the size that will travel.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/build-cuda.sh build
target="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target-cuda}"
scripts/fetch-model.sh
home="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
data="${SKILLGRAFT_DATA_DIR:-$(cd .. && pwd)/shared/data}"
mkdir -p .gpu/data
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
strip -o .gpu/skillgraft "$target/release/skillgraft"
xz -T0 -9 -f .gpu/skillgraft
cp "$home/models/all-MiniLM-L6-v2/tokenizer.json" .gpu/
cp "$data"/stsa.binary.{train,dev,test} .gpu/data/
du -sh .gpu .gpu/*
