#!/usr/bin/env bash
# The main job, end to end on the default model: fetch the model, build, fine-tune two tasks from the shared
# data (SST-2 and Subj, K=16), localize each task's graft, evaluate it side by side (with calibration and an
# out-of-distribution check on MR), show where the grafts overlap, and compose them.
# Outputs go to $SKILLGRAFT_HOME/demo (default ~/.cache/skillgraft/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target}"
export SKILLGRAFT_DATA_DIR="${SKILLGRAFT_DATA_DIR:-$(cd .. && pwd)/shared/data}"
home="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
out="$home/demo"
steps="${DEMO_STEPS:-200}"
scripts/fetch-model.sh
cargo build --release --quiet
sg="$CARGO_TARGET_DIR/release/skillgraft"
mkdir -p "$out"
for task in sst2 subj; do
  echo "=== $task: fine-tune (prototype head, SGD, $steps steps) ==="
  "$sg" finetune --task "$task" --k 16 --seed 42 --steps "$steps" --out "$out/ft-$task" --force
  echo "=== $task: localize the graft (paper's method, sparsity 1e-4) ==="
  "$sg" localize --task "$task" --k 16 --seed 42 --finetuned "$out/ft-$task" --out "$out/$task.graft" --max-test 500
done
echo "=== sst2 graft: calibration and out of distribution (MR) ==="
"$sg" evaluate --graft "$out/sst2.graft" --finetuned "$out/ft-sst2" --eval-task mr --max-test 500
echo "=== where the two tasks' grafts live, and how much they overlap ==="
"$sg" overlap "$out/sst2.graft" "$out/subj.graft"
echo "=== both tasks grafted at once ==="
"$sg" compose "$out/sst2.graft" "$out/subj.graft" --out "$out/sst2+subj.graft" --max-test 500
echo "demo outputs in $out"
