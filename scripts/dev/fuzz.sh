#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain: libFuzzer (libfuzzer-sys) with SanitizerCoverage added by
# fuzz/instrument.sh to the crates under test. Targets (fuzz/fuzz_targets): graft, checkpoint, requests.
#
#   scripts/dev/fuzz.sh [all|TARGET...] [--seconds N]     default: all targets, 20 s each (what CI runs)
#
# Corpora persist under ~/.cache/skillgraft/fuzz/<target>/corpus (seeded by each target itself); a crash
# leaves its input in ~/.cache/skillgraft/fuzz/<target>/ and fails the run. Each run appends
# "date target seconds executions" to ~/.cache/skillgraft/fuzz/executions.tsv and prints the executions.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=20
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    all) targets+=(graft checkpoint requests); shift ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -eq 0 ] && targets=(graft checkpoint requests)
base_target="${CARGO_TARGET_DIR:-$HOME/.cache/skillgraft-target}"
export CARGO_TARGET_DIR="${base_target%/}-fuzz"
RUSTC_WRAPPER="$PWD/fuzz/instrument.sh" cargo build --quiet --release --manifest-path fuzz/Cargo.toml --bins
home="${SKILLGRAFT_HOME:-$HOME/.cache/skillgraft}/fuzz"
total=0
for t in "${targets[@]}"; do
  dir="$home/$t"
  mkdir -p "$dir/corpus"
  bin="$CARGO_TARGET_DIR/release/$t"
  SKILLGRAFT_FUZZ_SEEDS="$dir/corpus" "$bin" -runs=0 "$dir/corpus" >/dev/null 2>&1
  log="$dir/last.log"
  set +e
  "$bin" "$dir/corpus" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -timeout=20 \
    -artifact_prefix="$dir/" -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  runs=${runs:-0}
  printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" "$runs" >>"$home/executions.tsv"
  echo "fuzz $t: $runs executions in ${seconds} s, exit $status"
  if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz $t FAILED (input saved under $dir/)"
    exit 1
  fi
  total=$((total + runs))
done
echo "fuzz: $total executions, 0 crashes"
