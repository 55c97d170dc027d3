#!/usr/bin/env bash
# The main job, end to end on the default model: fetch the model, build, fine-tune two tasks from the shared
# data (SST-2 and Subj, K=16, with the CLI), start the server, and run the demo client against it over HTTP:
# upload both checkpoints, localize their grafts as jobs (progress over server-sent events), predict, show
# calibration, the overlap of the two grafts, and a composition. Outputs go to $SKILLGRAFT_HOME/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target}"
export SKILLGRAFT_DATA_DIR="${SKILLGRAFT_DATA_DIR:-$(cd .. && pwd)/shared/data}"
home="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}"
out="$home/demo"
steps="${DEMO_STEPS:-150}"
addr="${SKILLGRAFT_ADDR:-127.0.0.1:8080}"
scripts/fetch-model.sh
scripts/ensure-blis.sh
cargo build --release --quiet
sg="$CARGO_TARGET_DIR/release/skillgraft"
mkdir -p "$out"
for task in sst2 subj; do
  if [ ! -f "$out/ft-$task/model.safetensors" ]; then
    echo "=== $task: fine-tune with the CLI (prototype head, SGD, $steps steps)"
    "$sg" finetune --task "$task" --k 16 --seed 42 --steps "$steps" --eval-every 50 --out "$out/ft-$task" --force
  fi
done
rm -rf "$out/state"
echo "=== starting the server on http://$addr (state in $out/state)"
"$sg" serve --addr "$addr" --state-dir "$out/state" > "$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$addr/ready', timeout=2)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$out/server.log"
    exit 1
  fi
  sleep 1
done
python3 scripts/demo-client.py --url "http://$addr" sst2="$out/ft-sst2" subj="$out/ft-subj"
echo "server log: $out/server.log; API docs were at http://$addr/docs"
