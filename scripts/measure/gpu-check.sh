#!/usr/bin/env bash
# The device check: one prepared command that measures skillgraft on a GPU machine and writes a Markdown + JSON
# report (gpu-report.md, gpu-report.json) and every log (gpu-logs.tar.gz) to the output directory.
#
#   scripts/measure/gpu-check.sh [--device cuda|cpu] [--bin BIN] [--assets DIR] [--out DIR] [--quick]
#
# Steps (each with its own time limit; a failing step is reported and the others still run):
#   env        nvidia-smi, the binary's libraries
#   models     MiniLM-sized and BERT-base-sized BERTs with random weights (transformers, seed 0), saved with
#              save_pretrained beside the carried tokenizer.json — the default model's 91 MB do not travel
#   selfcheck  `skillgraft selfcheck`: every kernel forward/backward vs the CPU in f64 and vs finite differences
#              on the device; sparse corrections; apply/revert bit for bit; mixed-task engine batches vs each
#              graft applied alone; bf16 vs f32
#   embed      skillgraft's last hidden states (f32 and bf16) for 64 SST-2 sentences, with the token ids used
#   references PyTorch on the same weights and ids (parity, f32 and bf16) and PyTorch eager / ONNX Runtime
#              (CUDA provider, if it loads) forward times on 32x128 and 256x128
#   bench      skillgraft forward times on the same shapes (f32, bf16) and one engine batch spread over 1 and
#              1,000 tasks
#   serve      `skillgraft bench-serve`: the HTTP service with 1, 100 and 1,000 tasks
#   job        fine-tune SST-2 (K=16) and localize its graft (paper's method, 10 epochs) on the device
#
# Assets (prepared on the build machine by scripts/measure/prepare-gpu-check.sh): BIN or DIR/skillgraft.xz (the CUDA
# build), DIR/tokenizer.json, DIR/data/stsa.binary.{train,dev,test}. On a machine without a GPU, `--device cpu
# --bin target/release/skillgraft --quick` runs the same script end to end (with smaller shapes).
set -uo pipefail
cd "$(dirname "$0")/../.."
device=cuda
bin=""
assets=.gpu
out="${OUT:-/tmp/skillgraft-gpu-check}"
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --assets) assets="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
work="$(mktemp -d)"
logs="$work/logs"
mkdir -p "$logs"
py="${PYTHON:-python3}"
here="$(pwd)"

if [ -z "$bin" ]; then
  "${PYTHON:-python3}" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$assets/skillgraft.xz" "$work/skillgraft" && chmod +x "$work/skillgraft"
  bin="$work/skillgraft"
fi
if [ "$device" = cuda ]; then
  # The CUDA runtime libraries come from the NVIDIA wheels of the machine's Python (PyTorch's).
  libs="$("$py" - <<'PY'
import glob, os
dirs = set()
try:
    import nvidia
    for base in nvidia.__path__:
        for p in glob.glob(os.path.join(base, "**", "lib*.so*"), recursive=True):
            dirs.add(os.path.dirname(p))
except ImportError:
    pass
print(":".join(sorted(dirs)))
PY
)"
  export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export SKILLGRAFT_HOME="$work/home" SKILLGRAFT_DATA_DIR="$here/$assets/data" PYTHONUNBUFFERED=1

if [ "$quick" = 1 ]; then
  shapes="4x16,8x32"; tasks="1,3"; secs=1; sizes="minilm"; steps=8; epochs=2; serve_tasks="1,3"; max_test=64
  engine_tasks="1,8"
else
  shapes="32x128,256x128"; tasks="1,1000"; secs=1.5; sizes="minilm bert-base"; steps=100; epochs=10
  serve_tasks="1,100,1000"; max_test=""; engine_tasks="1,1000"
fi

echo -e "name\tstatus\tseconds" > "$work/steps.tsv"
# step NAME LIMIT_SECONDS CMD...: runs CMD with a time limit, output to logs/NAME.log, status to steps.tsv.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0 t1 rc status
  t0=$(date +%s.%N)
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  case $rc in 0) status=ok ;; 124|137) status="timed out" ;; *) status="failed ($rc)" ;; esac
  echo -e "$name\t$status\t$(awk "BEGIN { print $t1 - $t0 }")" >> "$work/steps.tsv"
  echo "    $status; $(tail -n 2 "$logs/$name.log" | tr '\n' ' ' | cut -c1-200)"
}

step env 30 bash -c "nvidia-smi > '$work/nvidia-smi.txt' 2>&1 || echo 'no nvidia-smi' > '$work/nvidia-smi.txt';
  cat '$work/nvidia-smi.txt'; ldd '$bin'; '$bin' --version; '$py' -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())'"
for size in $sizes; do
  step "model-$size" 120 "$py" scripts/measure/gpu-check.py make-model --size "$size" --tokenizer "$assets/tokenizer.json" --out "$work/$size"
done
minilm="$work/minilm"
step selfcheck 120 bash -c "'$bin' selfcheck --device $device --model '$minilm' --json > '$work/selfcheck.json'"
head -n 64 "$assets/data/stsa.binary.test" | cut -c3- > "$work/texts.txt"
for size in $sizes; do
  step "embed-$size" 120 bash -c "'$bin' embed --device $device --model '$work/$size' --texts '$work/texts.txt' \
      --out '$work/emb-$size.npy' --hidden '$work/hidden-$size.npy' --ids '$work/ids-$size.json' &&
    '$bin' embed --device $device --dtype bf16 --model '$work/$size' --texts '$work/texts.txt' \
      --out '$work/emb16-$size.npy' --hidden '$work/hidden16-$size.npy'"
  step "parity-$size" 180 "$py" scripts/measure/gpu-check.py parity --device "$device" --model "$work/$size" \
    --ids "$work/ids-$size.json" --ours-hidden "$work/hidden-$size.npy" --ours-hidden-bf16 "$work/hidden16-$size.npy" \
    --out "$work/parity-$size.json"
done
for size in $sizes; do
  for dt in f32 bf16; do
    et="$engine_tasks"
    [ "$size" != minilm ] && et=""
    step "bench-$size-$dt" 180 bash -c "'$bin' bench --device $device --dtype $dt --model '$work/$size' --forward-only \
      --shapes $shapes --engine-tasks '$et' --min-seconds $secs --json > '$work/bench-$size-$dt.json'"
  done
  step "torch-$size" 240 "$py" scripts/measure/gpu-check.py torch-bench --device "$device" --model "$work/$size" \
    --shapes "$shapes" --min-seconds "$secs" --out "$work/torch-$size.json"
done
step serve 300 bash -c "'$bin' bench-serve --device $device --model '$minilm' --tasks $serve_tasks --seconds 8 \
  --clients 16 --json > '$work/serve.json'"
job() {
  local t0 t1 t2
  t0=$(date +%s.%N)
  "$bin" finetune --device "$device" --model "$minilm" --task sst2 --k 16 --seed 42 --steps "$steps" \
    --eval-every 50 --out "$work/ft" --force || return 1
  t1=$(date +%s.%N)
  "$bin" localize --device "$device" --model "$minilm" --task sst2 --k 16 --seed 42 --finetuned "$work/ft" \
    --method paper --epochs "$epochs" ${max_test:+--max-test $max_test} --out "$work/job.graft" --json \
    > "$work/localize.json" || return 1
  t2=$(date +%s.%N)
  "$py" - "$work" "$t0" "$t1" "$t2" "$steps" "$epochs" <<'PY'
import json, sys
w, t0, t1, t2, steps, epochs = sys.argv[1], *map(float, sys.argv[2:5]), int(sys.argv[5]), int(sys.argv[6])
loc = json.load(open(f"{w}/localize.json"))
json.dump({"finetune_seconds": t1 - t0, "finetune_steps": steps, "localize_seconds": t2 - t1,
           "localize_epochs": epochs, "note": "random-weight MiniLM-sized model: times are real, accuracies are not",
           "localize": loc}, open(f"{w}/job.json", "w"), indent=1)
PY
}
export -f job
export bin device minilm work steps epochs max_test py
step job 300 bash -c job
cp "$work/steps.tsv" "$logs/"
"$py" - "$work" <<'PY'
import csv, json, sys
w = sys.argv[1]
rows = list(csv.DictReader(open(f"{w}/steps.tsv"), delimiter="\t"))
json.dump({"steps": [{"name": r["name"], "status": r["status"], "seconds": float(r["seconds"])} for r in rows]},
          open(f"{w}/steps.json", "w"))
PY
"$py" scripts/measure/gpu-check.py report --dir "$work" --out-md "$out/gpu-report.md" --out-json "$out/gpu-report.json" > /dev/null
cp "$work"/*.json "$logs/" 2>/dev/null
tar -czf "$out/gpu-logs.tar.gz" -C "$work" logs
echo "report: $out/gpu-report.md"
grep -E "^\| (step|env|model|selfcheck|embed|parity|bench|torch|serve|job)" "$out/gpu-report.md" | head -30
