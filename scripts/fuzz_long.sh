#!/usr/bin/env bash
# scripts/fuzz_long.sh [SECONDS] [MAX_RUNS] [TARGET...]
# Runs each fuzz target in turn (one process at a time, so the machine stays usable) for SECONDS
# (default 1800) or MAX_RUNS executions (default 1000000), whichever comes first, and prints a line
# per target: executions, seconds, executions per second, and the result. The corpus each target
# grows is kept in $FUZZ_BUILD/fuzz/long/<name> and carried into the next long run; the committed
# seed corpus is only read. Needs the fuzz targets' build: FUZZ_BUILD (default build-san, made by
# `make build-fuzz`).
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
runs=${2:-1000000}
shift $(( $# < 2 ? $# : 2 ))
build=${FUZZ_BUILD:-build-san}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
status=0
printf '%-24s %12s %8s %10s  %s\n' target executions seconds exec/s result
for t in "${targets[@]}"; do
  bin=$build/fuzz/$t
  [ -x "$bin" ] || { echo "$t: $bin not built (make build-fuzz)"; status=1; continue; }
  name=${t#fuzz_}
  work=$build/fuzz/long/$name
  mkdir -p "$work/corpus" "$work/artifacts"
  log=$work/last.log
  dict=()
  [ -f "fuzz/$name.dict" ] && dict=(-dict="fuzz/$name.dict")
  start=$(date +%s)
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} "$bin" -max_total_time="$seconds" -runs="$runs" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
    "${dict[@]}" "$work/corpus" "fuzz/corpus/$name" >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ $rc -eq 0 ]; then result=ok; else result="FAILED (rc $rc; see $log, $work/artifacts/)"; status=1; fi
  printf '%-24s %12s %8s %10s  %s\n' "$t" "${execs:-?}" "$took" "${rate:-?}" "$result"
done
exit $status
