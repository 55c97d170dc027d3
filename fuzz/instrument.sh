#!/usr/bin/env bash
# RUSTC_WRAPPER for fuzz builds on the stable toolchain: adds libFuzzer's coverage instrumentation
# (SanitizerCoverage: inline 8-bit counters, PC table, comparison tracing) and `--cfg fuzzing` to the crates
# under test only, so every other dependency is built exactly as in the main project and shared with it.
rustc="$1"; shift
crate=""
prev=""
for a in "$@"; do
  if [ "$prev" = "--crate-name" ]; then crate="$a"; fi
  prev="$a"
done
case "$crate" in
  skillgraft|graft|checkpoint|requests|safetensors|tar)
    exec "$rustc" "$@" -Cpasses=sancov-module \
      -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
      -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares \
      --cfg fuzzing ;;
  *) exec "$rustc" "$@" ;;
esac
