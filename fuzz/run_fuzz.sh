#!/usr/bin/env bash
# run_fuzz.sh FUZZER SEED_DIR WORK_DIR SECONDS [libFuzzer flags...]
# Fuzzes for SECONDS, starting from SEED_DIR (read only) and writing new inputs to WORK_DIR, which
# starts empty each run. A crash, sanitizer report, leak, timeout or out-of-memory exits non-zero
# and leaves the input in WORK_DIR/artifacts/. Prints libFuzzer's final statistics.
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 seconds=$4
shift 4
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
# -timeout: one input taking over 10 s is a hang. -rss_limit_mb / -malloc_limit_mb: an input that
# makes a parser allocate gigabytes (a size taken from the file) is a finding, not a slow run.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
exec "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds"
