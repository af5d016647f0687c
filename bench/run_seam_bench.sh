#!/usr/bin/env bash
# Old binary beside new on the same machine, one run: bench infer (prefill, decode 1/16/64) and bench
# train (f32, and bf16 where the CPU has AVX512-BF16), then the same 2-thread runs with one core kept
# busy by another process (a spinning shell loop), to show how much speed survives a busy core.
# usage: OLD=/path/to/old/skymoe bench/run_seam_bench.sh [threads]
set -euo pipefail
threads=${1:-2}
new=${NEW:-build/skymoe}
old=${OLD:?set OLD to the baseline binary}
export OMP_NUM_THREADS=$threads
lscpu | grep -E '^Model name|^Flags' | sed 's/^Flags:.*\(avx512_bf16\).*/ISA: AVX-512 with AVX512-BF16/; s/^Flags:.*avx2.*/ISA: AVX2 (no AVX512-BF16)/' | head -2
has_bf16=$(grep -c avx512_bf16 /proc/cpuinfo || true)
infer() { $1 bench infer --preset bench-moe --dtype fp8 --prompt 128 --decode 48 --batches 16,64 --batch-steps 8 --threads "$threads" --json 2>/dev/null; }
train() { $1 bench train --preset train-moe --threads "$threads" --steps ${3:-3} --warmup-steps 1 --precision "$2" --json 2>/dev/null; }
summ() {  # infer json -> prefill, decode at batch 1, 16 and 64 (tokens/s)
  python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
b = j["batched_tokens_per_s"]
print("prefill %.1f  decode1 %.2f  b16 %.1f  b64 %.1f" % (j["prefill_tokens_per_s"], j["decode_tokens_per_s"], b["16"], b["64"]))'
}
tps() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"],1))'; }
# Three rounds, the order alternating, so a drift of the machine's bandwidth favours neither.
for round in $(seq "${ROUNDS:-3}"); do
  echo "== round $round (idle cores)"
  for b in $([ $((round % 2)) = 1 ] && echo "$old $new" || echo "$new $old"); do
    tag=$([ "$b" = "$old" ] && echo old || echo new)
    echo "infer $tag: $(infer "$b" | summ)"
    echo "train f32 $tag: $(train "$b" f32 | tps)"
    if [ "$has_bf16" != 0 ]; then echo "train bf16 $tag: $(train "$b" bf16 | tps)"; fi
  done
done
echo "== one core busy (a spinning process)"
( while :; do :; done ) &
spin=$!
trap 'kill $spin 2>/dev/null' EXIT
echo "infer old (busy): $(infer "$old" | summ)"
echo "infer new (busy): $(infer "$new" | summ)"
# 6 timed steps: the step governor tries one thread on the third step of a size and keeps the faster.
echo "train f32 old (busy): $(train "$old" f32 6 | tps)"
echo "train f32 new (busy): $(train "$new" f32 6 | tps)"
kill $spin
