#!/usr/bin/env bash
# skymoe vs PyTorch training throughput on the same model, same thread count, in one run.
# usage: bench/run_train_bench.sh [preset] [threads] [precision]   (precision: f32 | bf16 | both, default both)
# (needs: apt-get install python3-torch libopenblas0-openmp). PyTorch runs fp32 (Debian's torch has no
# fast CPU bf16 GEMM); skymoe's bf16 is mixed precision with f32 master weights.
set -euo pipefail
preset=${1:-train-moe}
threads=${2:-2}
precision=${3:-both}
bin=${SKYMOE:-build/skymoe}
export OMP_NUM_THREADS=$threads
run_sky() { $bin bench train --preset "$preset" --threads "$threads" --steps 3 --warmup-steps 1 --precision "$1" --json; }
case $precision in
  both) sky_f32=$(run_sky f32); sky_bf16=$(run_sky bf16) ;;
  f32) sky_f32=$(run_sky f32); sky_bf16= ;;
  bf16) sky_f32=; sky_bf16=$(run_sky bf16) ;;
  *) echo "precision must be f32, bf16 or both" >&2; exit 2 ;;
esac
# Debian's torch must use the OpenMP OpenBLAS, not the reference BLAS.
blasdir=/usr/lib/x86_64-linux-gnu/openblas-openmp
pt=$(LD_LIBRARY_PATH=${blasdir} /usr/bin/python3 bench/train_pytorch.py --preset "$preset" --threads "$threads" --steps 3 --warmup-steps 1)
echo "skymoe f32 : ${sky_f32:-skipped}"
echo "skymoe bf16: ${sky_bf16:-skipped}"
echo "pytorch   : $pt"
python3 - "$pt" "$sky_f32" "$sky_bf16" <<'PY'
import json, sys
p = json.loads(sys.argv[1])
for s in sys.argv[2:]:
    if not s:
        continue
    s = json.loads(s)
    print(f"ratio skymoe {s['precision']}/pytorch = {s['tokens_per_s'] / p['tokens_per_s']:.2f}x "
          f"({s['tokens_per_s']:.0f} vs {p['tokens_per_s']:.0f} tokens/s)")
PY
