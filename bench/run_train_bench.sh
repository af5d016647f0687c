#!/usr/bin/env bash
# skymoe vs PyTorch training throughput on the same model, same thread count, in one run.
# usage: bench/run_train_bench.sh [preset] [threads]   (needs: apt-get install python3-torch libopenblas0-openmp)
set -euo pipefail
preset=${1:-train-moe}
threads=${2:-2}
bin=${SKYMOE:-build/skymoe}
export OMP_NUM_THREADS=$threads
sky=$($bin bench train --preset "$preset" --threads "$threads" --steps 3 --warmup-steps 1 --json)
# Debian's torch must use the OpenMP OpenBLAS, not the reference BLAS.
blasdir=/usr/lib/x86_64-linux-gnu/openblas-openmp
pt=$(LD_LIBRARY_PATH=${blasdir} /usr/bin/python3 bench/train_pytorch.py --preset "$preset" --threads "$threads" --steps 3 --warmup-steps 1)
echo "skymoe : $sky"
echo "pytorch: $pt"
python3 - "$sky" "$pt" <<'PY'
import json, sys
s, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio skymoe/pytorch = {s['tokens_per_s'] / p['tokens_per_s']:.2f}x "
      f"({s['tokens_per_s']:.0f} vs {p['tokens_per_s']:.0f} tokens/s)")
PY
